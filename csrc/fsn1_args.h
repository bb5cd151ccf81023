// Arguments of fsn1_normal_ (csrc/fsn1.h), shared by the CPU (csrc/cpu/fsn1_cpu.h) and CUDA (csrc/cuda/fsn1_cuda.h)
// launchers. Torch-free, math-free.
#pragma once

#include <stdint.h>

#include "step_args.h"  // Dtype

namespace fastsde {

// out: (batch, numel) row-major, contiguous, float32 or float64 (dtype). Row b receives
// FSN1(seed, sample_ids[b], draw, j) for j = 0..numel-1; sample_ids: (batch,) values in [0, 2^32).
struct Fsn1NormalArgs {
  Dtype dtype;  // kFloat32 or kFloat64
  int64_t batch, numel;
  void* out;
  uint64_t seed, draw;
  const int64_t* sample_ids;
};

}  // namespace fastsde
