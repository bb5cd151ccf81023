// Fused sampler step: the per-element math, written once for the CPU (scalar, AVX2, AVX-512 lane types) and CUDA.
//
//   affine_step_:  xm = a x + b s;  xo = xm + c z                (c absent: xo = xm, no noise drawn)
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

}  // namespace step
}  // namespace fastsde
