// Fused sampler step: the per-element math, written once for the CPU (scalar, AVX2, AVX-512 lane types) and CUDA.
//
//   affine_step_:  xm = a x + b s [+ b2 s2 + b3 s3];  xo = xm + c z    (c absent: xo = xm, no noise drawn)
//                  [projection: p = data_a data;  xo = xo (1 - m) + (p + data_c z2) m;  xm = xo (1 - m) + p m]
//                  out = xo, x_mean = xm (optional)
//   step_sq_norms: per sample, sum of s^2 and of z^2 (float64)
//
// z is explicit noise or FSN1(seed, sample id, draw, j) (csrc/fsn1.h), z2 is FSN1 at data_draw. The coefficients
// are per sample, float64 on the host, rounded once to the compute type (float32 for float32/float16/bfloat16
// storage, float64 for float64). Every product that meets an addition is an explicit fma, so the lane types give
// identical results.
//
// Bytes per element (float32): affine_step_ reads x, s and writes out: 12 B (+4 B x_mean, +4 B explicit noise,
// +8 B mask and data); step_sq_norms reads s (+ noise when explicit): 4 B. The noise never touches memory.
#pragma once

#include "fsn1.h"

namespace fastsde {
namespace step {

using fsn1::f_fma;
using fsn1::f_mul;
using fsn1::f_sub;

// Where z comes from: no noise (c absent), an explicit tensor, or FSN1.
enum class NoiseMode { kNone, kExplicit, kFsn1 };

// The index of row's entry in a per-sample coefficient array of length len (1: broadcast to every row).
FASTSDE_HD FASTSDE_INLINE int64_t coef_index(int64_t len, int64_t row) { return len == 1 ? 0 : row; }

// float64 twins of the float32 lane operations (the float64 compute type).
FASTSDE_HD FASTSDE_INLINE double f_mul(double a, double b) { return a * b; }
FASTSDE_HD FASTSDE_INLINE double f_sub(double a, double b) { return a - b; }
FASTSDE_HD FASTSDE_INLINE double f_fma(double a, double b, double c) { return fma(a, b, c); }

// xm = a x + b s.
template <typename F>
FASTSDE_HD FASTSDE_INLINE F step_mean(F a, F b, F x, F s) {
  return f_fma(a, x, f_mul(b, s));
}

// xm + b s: a further model output of a combine (solvers: x' = a x + sum_k b_k D_k + c z).
template <typename F>
FASTSDE_HD FASTSDE_INLINE F step_add(F xm, F b, F s) {
  return f_fma(b, s, xm);
}

// xo = xm + c z.
template <typename F>
FASTSDE_HD FASTSDE_INLINE F step_noisy(F xm, F c, F z) {
  return f_fma(c, z, xm);
}

// Inpainting projection (score_sde's controllable sampler): known part p = data_a data, with its own noise z2.
template <typename F>
FASTSDE_HD FASTSDE_INLINE void step_project(F& xo, F& xm, F m, F data, F data_a, F data_c, F z2) {
  const F p = f_mul(data_a, data);
  const F keep = f_sub(F(1.0f), m);
  xo = f_fma(xo, keep, f_mul(f_fma(data_c, z2, p), m));
  xm = f_fma(xo, keep, f_mul(p, m));
}

// Langevin corrector coefficients (Song et al. algorithm 5 with score_sde's batch-mean norms) from the per-sample
// squared norms sq (batch, 2) = [||s||^2, ||z||^2]: g = mean ||s|| |scale|, n = mean ||z||,
// eps = 2 alpha (snr n / g)^2, coefs = [1, eps scale, sqrt(2 eps)] (scale = 1 for a score model, -1/std folded in
// for a noise-predicting one). Sums run in row order (the same on every device). A zero score keeps score_sde's
// division by zero: eps = inf (nan when the noise norm is 0 too).
FASTSDE_HD inline void langevin_coefs(const double* sq, int64_t batch, double alpha, double scale, double snr,
                                      double* coefs) {
  double g = 0.0, n = 0.0;
  for (int64_t r = 0; r < batch; ++r) {
    g += sqrt(sq[2 * r]);
    n += sqrt(sq[2 * r + 1]);
  }
  g = g / double(batch) * fabs(scale);
  n = n / double(batch);
  double eps;
  if (g == 0.0) {
    eps = n != 0.0 ? INFINITY : NAN;
  } else {
    const double r = snr * n / g;
    eps = r * r * 2.0 * alpha;
  }
  coefs[0] = 1.0;
  coefs[1] = eps * scale;
  coefs[2] = eps >= 0.0 ? sqrt(2.0 * eps) : NAN;
}

}  // namespace step
}  // namespace fastsde
