// Fused sampler-step kernels on the CPU (OpenMP + runtime-dispatched SIMD), torch-free. Math: csrc/step.h and
// csrc/fsn1.h; specification: fastsde/reference/step.py.
//
// Arguments: csrc/step_args.h. The result does not depend on the thread count or the SIMD level (every level runs
// the same operation sequence; reductions have a fixed order).
#pragma once

#include <stdint.h>

#include <type_traits>  // std::conditional in the kernels (csrc/cpu/step_kernels.h)

#include "step_args.h"

namespace fastsde {

// Instruction-set level of the CPU kernels: chosen once from the CPU (AVX-512 F/DQ/BW/VL, else AVX2+FMA+F16C,
// else scalar), or forced with the environment variable FASTSDE_SIMD=scalar|avx2|avx512 (read at first use).
enum class SimdLevel : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);
// Whether this CPU can run a level.
bool simd_level_supported(SimdLevel level);

// out may alias x.
void affine_step_cpu(const AffineStepArgs& args);

// out: (batch, 2) float64.
void step_sq_norms_cpu(const SqNormsArgs& args, double* out);

// FSN1 Philox words from the SIMD path: out (batch, blocks, 4) uint32, block k of row b = the words of counter
// block k of sample sample_ids[b]. For tests (exact comparison with fastsde/random.py).
void fsn1_bits_cpu(uint32_t* out, int64_t batch, int64_t blocks, uint64_t seed, const int64_t* sample_ids,
                   uint64_t draw);

// FSN1 float32 normals of short rows (numel <= kStepFlatMaxNumel) through the *_flat kernel: csrc/cpu/fsn1.cpp.
void fsn1_normal_flat_cpu(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                          uint64_t draw);

// ---- internal: the per-ISA kernels (csrc/cpu/step_{scalar,avx2,avx512}.cpp), each over one row's [j0, j1),
// j0 a multiple of 64 (a chunk start), j1 = a chunk end or the row end; the *_flat ones over whole short rows.
struct SimdKernels {
  void (*affine)(const AffineStepArgs& args, int64_t row, int64_t j0, int64_t j1);
  void (*sq_norms)(const SqNormsArgs& args, int64_t row, int64_t j0, int64_t j1, double partial[2]);
  void (*fsn1_fill_f32)(float* row_out, uint64_t seed, uint32_t n, uint64_t draw, int64_t j0, int64_t j1);
  void (*fsn1_bits)(uint32_t* row_out, uint64_t seed, uint32_t n, uint64_t draw, int64_t blk0, int64_t blk1);
  // Short rows (numel <= kStepFlatMaxNumel), whole rows [r0, r1) at a time, the SIMD lanes running across samples.
  void (*affine_flat)(const AffineStepArgs& args, int64_t r0, int64_t r1);
  void (*sq_norms_flat)(const SqNormsArgs& args, int64_t r0, int64_t r1, double* out);
  void (*fsn1_flat_f32)(float* out, int64_t numel, uint64_t seed, const int64_t* sample_ids, uint64_t draw,
                        int64_t r0, int64_t r1);
};
// Rows of at most this many elements take the *_flat kernels (must not exceed the kernels' tile of 1024).
constexpr int64_t kStepFlatMaxNumel = 128;
const SimdKernels& simd_kernels_scalar();
const SimdKernels& simd_kernels_avx2();
const SimdKernels& simd_kernels_avx512();
const SimdKernels& simd_kernels();  // the selected level's

}  // namespace fastsde
