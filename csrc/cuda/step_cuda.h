// Fused sampler-step kernels on CUDA, torch-free (raw pointers + a stream). Math: csrc/step.h, csrc/fsn1.h;
// arguments: csrc/step_args.h (device pointers; the coefficient and sample-id arrays too).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "step_args.h"

namespace fastsde {

// affine_step_ on `stream`; returns the launch error (cudaSuccess when nothing was launched). out may alias x.
cudaError_t affine_step_cuda(const AffineStepArgs& args, cudaStream_t stream);

// Number of float64 pairs of scratch step_sq_norms_cuda needs (one per (sample, chunk)).
int64_t step_sq_norms_cuda_partials(const SqNormsArgs& args);
// step_sq_norms on `stream`: partial (step_sq_norms_cuda_partials(args), 2) scratch, out (batch, 2) float64.
// Fixed-size chunks reduced in a fixed order: the result does not depend on the launch configuration.
cudaError_t step_sq_norms_cuda(const SqNormsArgs& args, double* partial, double* out, cudaStream_t stream);

// The Langevin step's coefficients [1, b, c] into coefs (3,) from sq (batch, 2) (step_sq_norms' output) and the
// device scalars *alpha and *scale: csrc/step.h, langevin_coefs.
cudaError_t langevin_coefs_cuda(const double* sq, int64_t batch, const double* alpha, const double* scale,
                                double snr, double* coefs, cudaStream_t stream);

}  // namespace fastsde
