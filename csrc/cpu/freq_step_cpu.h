// The per-frequency fused step on the CPU (csrc/freq_step.h): OpenMP over (sample, chunk) work items.
#pragma once

#include "freq_step.h"

namespace fastsde {

void freq_step_cpu(const FreqStepArgs& args);

}  // namespace fastsde
