// Arguments of the fused sampler-step kernels (csrc/step.h), shared by the CPU (csrc/cpu/step_cpu.h) and CUDA
// (csrc/cuda/step_cuda.h) launchers. Torch-free, math-free.
//
// All tensors are (batch, numel) row-major and contiguous; row b uses per-sample coefficient index
// (len == 1 ? 0 : b).
#pragma once

#include <stdint.h>

namespace fastsde {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// affine_step_: see csrc/step.h. out may alias x. Optional pointers are null when absent: c (no noise at all),
// noise (then FSN1 at (seed, sample_ids[b], draw)), x_mean, mask/data/data_a/data_c (projection, all or none).
struct AffineStepArgs {
  Dtype dtype;
  int64_t batch, numel;
  void* out;
  const void* x;
  const void* score;
  const void* noise;
  void* x_mean;
  const void* mask;
  const void* data;
  const double *a, *b, *c, *data_a, *data_c;
  int64_t a_len, b_len, c_len, data_a_len, data_c_len;  // 1 (broadcast) or batch
  uint64_t seed, draw, data_draw;
  const int64_t* sample_ids;  // values in [0, 2^32)
};
// step_sq_norms: (batch, 2) float64: [b, 0] = sum_j score^2, [b, 1] = sum_j z^2 (noise or FSN1).
struct SqNormsArgs {
  Dtype dtype;
  int64_t batch, numel;
  const void* score;
  const void* noise;
  uint64_t seed, draw;
  const int64_t* sample_ids;
};
}  // namespace fastsde
