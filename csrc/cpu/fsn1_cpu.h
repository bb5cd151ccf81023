// FSN1 normals on the CPU (OpenMP), torch-free. The math is csrc/fsn1.h; the specification fastsde/random.py.
#pragma once

#include <stdint.h>

#include "fsn1_args.h"

namespace fastsde {

// out: (batch, numel) row-major, contiguous. Row b receives FSN1(seed, sample_ids[b], draw, j) for
// j = 0..numel-1. sample_ids: (batch,) values in [0, 2^32) (checked by the caller); numel <= 2^34.
// Writes 4 B (float) or 8 B (double) per element, reads nothing per element: compute-bound (one Philox call
// per four outputs). A pure function of its arguments: the result does not depend on the thread count.
void fsn1_normal_cpu(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw);
void fsn1_normal_cpu(double* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw);
// The same, the dtype taken from args.
void fsn1_normal_cpu(const Fsn1NormalArgs& args);

}  // namespace fastsde
