// GroupNorm family on CUDA, torch-free (raw pointers + a stream). Math: csrc/groupnorm.h; arguments:
// csrc/groupnorm_args.h (device pointers; the vectors in the compute type).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "groupnorm_args.h"

namespace fastsde {

// group_norm on `stream`; returns the launch error (cudaSuccess when nothing was launched). One thread block per
// (sample, group), block reductions in a fixed tree order: the result does not depend on the launch.
cudaError_t group_norm_cuda(const GroupNormArgs& args, cudaStream_t stream);
// The backward (csrc/groupnorm.h, "Backward"; csrc/cuda/groupnorm_backward.cu): the same blocks, dx and args.sums.
cudaError_t group_norm_backward_cuda(const GroupNormBwdArgs& args, cudaStream_t stream);

}  // namespace fastsde
