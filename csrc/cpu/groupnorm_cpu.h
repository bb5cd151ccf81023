// GroupNorm family on the CPU (OpenMP + runtime-dispatched SIMD), torch-free. Math: csrc/groupnorm.h;
// specification: fastsde/reference/groupnorm.py.
//
// NCHW: one work item per (sample, group), a contiguous span of C/G x HW elements. Channels-last: one work item
// per sample, vectorized across channels. Within an item the order of every operation is fixed, so the result does
// not depend on the thread count.
#pragma once

#include <stdint.h>

#include "groupnorm_args.h"

namespace fastsde {

void group_norm_cpu(const GroupNormArgs& args);
// The backward (csrc/groupnorm.h, "Backward"): dx and the per-(n, c) sums of args.sums, same parallel split.
void group_norm_backward_cpu(const GroupNormBwdArgs& args);

// ---- internal: the per-ISA kernels (csrc/cpu/groupnorm_{scalar,avx2,avx512}.cpp, from groupnorm_kernels.h) for
// float32 / float16 / bfloat16 storage; float64 runs scalar code in csrc/cpu/groupnorm.cpp.
struct GroupNormKernels {
  void (*nchw)(const GroupNormArgs& args, int64_t n, int64_t g);  // one (sample, group)
  void (*nhwc)(const GroupNormArgs& args, int64_t n);             // one sample, every group
};
const GroupNormKernels& group_norm_kernels_scalar();
const GroupNormKernels& group_norm_kernels_avx2();
const GroupNormKernels& group_norm_kernels_avx512();
struct GroupNormBwdKernels {  // the same work items, from csrc/cpu/groupnorm_backward_kernels.h
  void (*nchw)(const GroupNormBwdArgs& args, int64_t n, int64_t g);
  void (*nhwc)(const GroupNormBwdArgs& args, int64_t n);
};
const GroupNormBwdKernels& group_norm_bwd_kernels_scalar();
const GroupNormBwdKernels& group_norm_bwd_kernels_avx2();
const GroupNormBwdKernels& group_norm_bwd_kernels_avx512();
// float64 statistics of one (sample, group), shared by the float64 forward and backward (csrc/cpu/groupnorm.cpp).
void group_norm_stats_f64(const GroupNormArgs& args, int64_t n, int64_t g, double& mean, double& rstd);

}  // namespace fastsde
