// The seed of a step read from memory when the kernel runs (AffineStepArgs::seed_bits, csrc/step_args.h): on the host
// in the CPU launchers, in every CUDA thread (one cached load). Separate from step_args.h so the per-ISA CPU files,
// which include that before choosing their instruction set, never see fsn1.h early.
#pragma once

#include "fsn1.h"  // FASTSDE_HD, FASTSDE_INLINE
#include "step_args.h"

namespace fastsde {

template <typename Args>
FASTSDE_HD FASTSDE_INLINE Args with_device_seed(Args A) {
  if (A.seed_bits) A.seed = uint64_t(*A.seed_bits);
  A.seed_bits = nullptr;
  return A;
}

}  // namespace fastsde
