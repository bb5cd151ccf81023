// StepIndex applied: the arguments of one step of a loop op (csrc/step_args.h), on the host (CPU launchers) or in
// every CUDA thread. Separate from step_args.h so the per-ISA CPU files, which include that before choosing their
// instruction set, never see fsn1.h early.
#pragma once

#include "fsn1.h"  // FASTSDE_HD, FASTSDE_INLINE
#include "step_args.h"

namespace fastsde {

// The args of one step with `index` applied (read once per kernel call on the CPU, per thread on CUDA).
FASTSDE_HD FASTSDE_INLINE AffineStepArgs at_step(AffineStepArgs A) {
  if (A.index.seed) A.seed = uint64_t(*A.index.seed);
  if (A.index.step) {
    const int64_t i = *A.index.step;
    A.draw += uint64_t(i) * uint64_t(A.index.draw_stride);
    A.data_draw += uint64_t(i) * uint64_t(A.index.draw_stride);
    const uint32_t by = A.index.coef_by_step;
    if (by & StepIndex::kA) A.a += i;
    if (by & StepIndex::kB) A.b += i;
    if (A.c && (by & StepIndex::kC)) A.c += i;
    if (A.data_a && (by & StepIndex::kDataA)) A.data_a += i;
    if (A.data_c && (by & StepIndex::kDataC)) A.data_c += i;
    if (A.b2 && (by & StepIndex::kB2)) A.b2 += i;
    if (A.b3 && (by & StepIndex::kB3)) A.b3 += i;
  }
  A.index = StepIndex{};
  return A;
}

FASTSDE_HD FASTSDE_INLINE SqNormsArgs at_step(SqNormsArgs A) {
  if (A.index.seed) A.seed = uint64_t(*A.index.seed);
  if (A.index.step) A.draw += uint64_t(*A.index.step) * uint64_t(A.index.draw_stride);
  A.index = StepIndex{};
  return A;
}
}  // namespace fastsde
