// FSN1 normals on CUDA, torch-free (raw pointers + a stream). The math is csrc/fsn1.h.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "fsn1_args.h"

namespace fastsde {

// out: (batch, numel) row-major, contiguous, device memory. Row b receives FSN1(seed, sample_ids[b], draw, j)
// for j = 0..numel-1. sample_ids: (batch,) device int64, values in [0, 2^32) (the caller checks; only the low
// 32 bits are used). Writes 4 B (float) or 8 B (double) per element, reads 8 B per row. Enqueues on `stream`
// and returns the launch error (cudaSuccess when nothing was launched).
cudaError_t fsn1_normal_cuda(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                             uint64_t draw, cudaStream_t stream);
cudaError_t fsn1_normal_cuda(double* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                             uint64_t draw, cudaStream_t stream);
// The same, the dtype taken from args (device pointers).
cudaError_t fsn1_normal_cuda(const Fsn1NormalArgs& args, cudaStream_t stream);

}  // namespace fastsde
