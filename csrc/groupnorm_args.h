// Arguments of the GroupNorm kernels (csrc/groupnorm.h), shared by the CPU (csrc/cpu/groupnorm_cpu.h) and CUDA
// (csrc/cuda/groupnorm_cuda.h) launchers. Torch-free, math-free (so the launchers' headers can include it before a
// translation unit's target pragma).
#pragma once

#include <stdint.h>

#include "step_args.h"  // Dtype

namespace fastsde {

// x and y: (N, C, HW) contiguous in NCHW order, or (N, HW, C) when channels_last. The vectors are contiguous in the
// compute type (float32; float64 for float64 storage) or null: weight, bias (C,); scale, shift, emb_add (N, C).
struct GroupNormArgs {
  Dtype dtype;
  int64_t N, C, HW, groups;
  bool channels_last;
  const void* x;
  void* y;
  const void *weight, *bias, *scale, *shift, *emb_add;
  double eps;
  int act;  // 0: none, 1: SiLU
};

}  // namespace fastsde

namespace fastsde {

// Arguments of the GroupNorm backward (csrc/groupnorm.h, "Backward"): the forward's arguments (fwd.y unused), the
// output gradient dy and the input gradient dx, both laid out like x, and `sums`, (3, N, C) float64: per (n, c)
// sum_p du, sum_p du xhat and sum_p dx, from which the caller forms the vectors' gradients.
struct GroupNormBwdArgs {
  GroupNormArgs fwd;
  const void* dy;
  void* dx;
  double* sums;
};

}  // namespace fastsde
