// The per-frequency fused step on CUDA (csrc/freq_step.h): torch-free launcher, registered by csrc/api/freq_step.cpp.
#pragma once

#include <cuda_runtime.h>

#include "freq_step.h"

namespace fastsde {

cudaError_t freq_step_cuda(const FreqStepArgs& args, cudaStream_t stream);

}  // namespace fastsde
