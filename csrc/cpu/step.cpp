// Fused sampler-step ops on the CPU: OpenMP over (sample, chunk) work items, each chunk run by the kernels of the
// selected SIMD level (csrc/cpu/step_{scalar,avx2,avx512}.cpp, all generated from csrc/cpu/step_kernels.h).
//
// affine_step_ reads x, score and writes out: 12 B/elem in float32 (+4 B x_mean, +4 B explicit noise, +8 B
// mask/data), the noise made in registers. Chunks are kChunk elements (a multiple of 64, so a Philox block never
// straddles two chunks and every level's groups start on the same elements).
#include "cpu/step_cpu.h"

#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cpu/parallel.h"
#include "device_seed.h"

namespace fastsde {
namespace {

// Elements per work item: 32 KiB of float32 per stream, enough to amortize the scheduling.
constexpr int64_t kChunk = 8192;

SimdLevel detect_level() {
  SimdLevel best = SimdLevel::kScalar;
  if (simd_level_supported(SimdLevel::kAvx512))
    best = SimdLevel::kAvx512;
  else if (simd_level_supported(SimdLevel::kAvx2))
    best = SimdLevel::kAvx2;
  const char* env = getenv("FASTSDE_SIMD");
  if (env && *env) {
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512})
      if (strcmp(env, simd_level_name(level)) == 0 && simd_level_supported(level)) return level;
  }
  return best;
}

// Problems that generate FSN1 noise are compute-bound (~1 ns per normal on one core: Philox + Box-Muller), so they
// go parallel from this many elements instead of kMinParallel (a parallel region costs a few microseconds).
constexpr int64_t kMinParallelFsn1 = 4096;

// fn(row, c, j0, j1) over every (row, chunk of kChunk elements): csrc/cpu/parallel.h.
template <typename Fn>
void for_each_chunk(int64_t batch, int64_t numel, const Fn& fn, int64_t min_parallel = kMinParallel) {
  parallel_for_chunks(batch, numel, kChunk, fn, min_parallel);
}

// Short rows: fn(r0, r1) over blocks of whole rows, about kChunk elements each (the whole batch at once when the
// problem is too small to go parallel).
template <typename Fn>
void for_each_row_block(int64_t batch, int64_t numel, const Fn& fn, int64_t min_parallel = kMinParallel) {
  if (batch <= 0 || numel <= 0) return;
  const int64_t total = batch * numel;
  int64_t rows = kChunk / numel > 0 ? kChunk / numel : 1;
  if (total < min_parallel) rows = batch;
  else if (min_parallel < kMinParallel && total < 2 * kChunk) rows = (batch + 1) / 2;  // a small problem: 2 blocks
  parallel_for((batch + rows - 1) / rows, total, [&](int64_t item) {
    const int64_t r0 = item * rows;
    fn(r0, r0 + rows < batch ? r0 + rows : batch);
  }, min_parallel);
}

}  // namespace

bool simd_level_supported(SimdLevel level) {
#if defined(__x86_64__) || defined(__i386__)
  switch (level) {
    case SimdLevel::kScalar: return true;
    case SimdLevel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::kAvx512:
      return simd_level_supported(SimdLevel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return level == SimdLevel::kScalar;
#endif
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvx512: return "avx512";
    default: return "scalar";
  }
}

SimdLevel simd_level() {
  static const SimdLevel level = detect_level();
  return level;
}

const SimdKernels& simd_kernels() {
  switch (simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::kAvx512: return simd_kernels_avx512();
    case SimdLevel::kAvx2: return simd_kernels_avx2();
#endif
    default: return simd_kernels_scalar();
  }
}

void affine_step_cpu(const AffineStepArgs& indexed) {
  const AffineStepArgs args = with_device_seed(indexed);
  const SimdKernels& k = simd_kernels();
  const int64_t min_parallel = (args.c && !args.noise) || args.mask ? kMinParallelFsn1 : kMinParallel;
  if (args.numel <= kStepFlatMaxNumel) {
    for_each_row_block(
        args.batch, args.numel, [&](int64_t r0, int64_t r1) { k.affine_flat(args, r0, r1); }, min_parallel);
    return;
  }
  for_each_chunk(
      args.batch, args.numel, [&](int64_t row, int64_t, int64_t j0, int64_t j1) { k.affine(args, row, j0, j1); },
      min_parallel);
}

void step_sq_norms_cpu(const SqNormsArgs& indexed, double* out) {
  const SqNormsArgs args = with_device_seed(indexed);
  if (args.batch <= 0) return;
  if (args.numel <= 0) {
    for (int64_t b = 0; b < 2 * args.batch; ++b) out[b] = 0.0;
    return;
  }
  const SimdKernels& k = simd_kernels();
  const int64_t min_parallel = args.noise ? kMinParallel : kMinParallelFsn1;
  if (args.numel <= kStepFlatMaxNumel) {
    for_each_row_block(
        args.batch, args.numel, [&](int64_t r0, int64_t r1) { k.sq_norms_flat(args, r0, r1, out); }, min_parallel);
    return;
  }
  const int64_t chunks = (args.numel + kChunk - 1) / kChunk;
  if (chunks == 1) {  // one partial per row: it is the row's sum (0 + p = p, p >= +0 or NaN)
    for_each_chunk(
        args.batch, args.numel,
        [&](int64_t row, int64_t, int64_t j0, int64_t j1) { k.sq_norms(args, row, j0, j1, out + 2 * row); },
        min_parallel);
    return;
  }
  std::vector<double> partial(size_t(args.batch * chunks * 2));
  for_each_chunk(
      args.batch, args.numel,
      [&](int64_t row, int64_t c, int64_t j0, int64_t j1) {
        k.sq_norms(args, row, j0, j1, &partial[size_t((row * chunks + c) * 2)]);
      },
      min_parallel);
  // Chunk partials in chunk order: the same sums whatever the thread count.
  for (int64_t row = 0; row < args.batch; ++row) {
    double s = 0.0, z = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s += partial[size_t((row * chunks + c) * 2)];
      z += partial[size_t((row * chunks + c) * 2 + 1)];
    }
    out[2 * row] = s;
    out[2 * row + 1] = z;
  }
}

void fsn1_normal_flat_cpu(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                          uint64_t draw) {
  const SimdKernels& k = simd_kernels();
  for_each_row_block(batch, numel,
                     [&](int64_t r0, int64_t r1) { k.fsn1_flat_f32(out, numel, seed, sample_ids, draw, r0, r1); });
}

void fsn1_bits_cpu(uint32_t* out, int64_t batch, int64_t blocks, uint64_t seed, const int64_t* sample_ids,
                   uint64_t draw) {
  const SimdKernels& k = simd_kernels();
  // Chunks of kChunk elements = kChunk / 4 blocks, each a multiple of every level's lane count.
  for_each_chunk(batch, blocks * 4, [&](int64_t row, int64_t, int64_t j0, int64_t j1) {
    k.fsn1_bits(out + row * blocks * 4, seed, uint32_t(sample_ids[row]), draw, j0 / 4, j1 / 4);
  });
}

}  // namespace fastsde
