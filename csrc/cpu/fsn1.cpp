// FSN1 normals on the CPU: OpenMP over (sample, chunk), float32 through the SIMD kernels of the selected level
// (csrc/cpu/step_kernels.h: one Philox call per lane, four outputs each), float64 through scalar libm math.
#include "cpu/fsn1_cpu.h"

#include "cpu/parallel.h"
#include "cpu/step_cpu.h"
#include "fsn1.h"

namespace fastsde {
namespace {

// Elements per unit of parallel work (a multiple of 64: every SIMD level's groups line up with chunk starts).
constexpr int64_t kChunk = 8192;
// Below this many elements in total, stay on one thread: generation costs more per element than a step's memory
// traffic, so the parallel region pays off sooner than the default csrc/cpu/parallel.h assumes.
constexpr int64_t kMinParallelFsn1 = 16384;

void fsn1_normal_f64_range(double* row, uint64_t seed, uint32_t n, uint64_t draw, int64_t j0, int64_t j1) {
  for (int64_t blk = j0 / 4; blk * 4 < j1; ++blk) {
    const fsn1::Double4 z = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(seed, n, draw, uint32_t(blk)));
    for (int t = 0; t < 4 && blk * 4 + t < j1; ++t) row[blk * 4 + t] = z.z[t];
  }
}

template <typename T, typename Fn>
void fsn1_normal_cpu_impl(T* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                          uint64_t draw, const Fn& range) {
  parallel_for_chunks(
      batch, numel, kChunk,
      [&](int64_t b, int64_t, int64_t j0, int64_t j1) {
        range(out + b * numel, seed, uint32_t(sample_ids[b]), draw, j0, j1);
      },
      kMinParallelFsn1);
}

}  // namespace

void fsn1_normal_cpu(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw) {
  if (numel <= kStepFlatMaxNumel) {  // short rows: SIMD lanes across samples
    fsn1_normal_flat_cpu(out, batch, numel, seed, sample_ids, draw);
    return;
  }
  fsn1_normal_cpu_impl(out, batch, numel, seed, sample_ids, draw, *simd_kernels().fsn1_fill_f32);
}

void fsn1_normal_cpu(double* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw) {
  fsn1_normal_cpu_impl(out, batch, numel, seed, sample_ids, draw, fsn1_normal_f64_range);
}

void fsn1_normal_cpu(const Fsn1NormalArgs& a) {
  if (a.dtype == Dtype::kFloat64)
    fsn1_normal_cpu(static_cast<double*>(a.out), a.batch, a.numel, a.seed, a.sample_ids, a.draw);
  else
    fsn1_normal_cpu(static_cast<float*>(a.out), a.batch, a.numel, a.seed, a.sample_ids, a.draw);
}

}  // namespace fastsde
