// GroupNorm family: the per-element math, written once for the CPU (scalar, AVX2, AVX-512 lane types) and CUDA.
// Specification: fastsde/reference/groupnorm.py.
//
//   y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift),   act: none or SiLU
//
// Per (sample n, group g): mean and biased variance of v = x + emb_add[n, c] over the group's C/G channels and HW
// positions, in float32 (float64 for float64 storage) by two passes -- the mean, then the sum of squared
// deviations from it -- never E[v^2] - E[v]^2. Per channel c the rest folds into
//   d_c = emb_add[n, c] - mean,  a_c = rstd weight[c] (1 + scale[n, c]),  b_c = bias[c] (1 + scale[n, c]) + shift[n, c]
//   y = act((x + d_c) a_c + b_c)         SiLU(y) = y / (1 + exp(-y)), exp from a polynomial (below)
// so an element costs one add and one fma (+ the SiLU). Absent vectors are passed as their neutral values
// (weight 1, bias/scale/shift/emb_add 0), which give the same bits as leaving the terms out.
//
// Bytes per element (float32): one read of x for the statistics, one read of x + one write of y for the result:
// 12 B/elem (the second statistics pass re-reads the group from cache). Half/bfloat16: 6 B/elem, float32 math.
#pragma once

#include <stdint.h>

#include "fsn1.h"
#include "groupnorm_args.h"

namespace fastsde {

namespace groupnorm {

using fsn1::f_bits;
using fsn1::f_fma;
using fsn1::f_from_bits;
using fsn1::f_mul;
using fsn1::f_sub;
using fsn1::u_add;
using fsn1::u_shl;
using fsn1::u_sub;

// Scalar lane operations missing from csrc/fsn1.h (the SIMD types define the same names in their namespaces).
FASTSDE_HD FASTSDE_INLINE float f_add(float a, float b) { return a + b; }
FASTSDE_HD FASTSDE_INLINE float gn_div(float a, float b) { return a / b; }
FASTSDE_HD FASTSDE_INLINE float gn_min(float a, float b) { return b < a ? b : a; }
FASTSDE_HD FASTSDE_INLINE float gn_max(float a, float b) { return b > a ? b : a; }
// float64 twins (the float64 compute type).
FASTSDE_HD FASTSDE_INLINE double f_add(double a, double b) { return a + b; }
FASTSDE_HD FASTSDE_INLINE double f_fma(double a, double b, double c) { return fma(a, b, c); }

// exp(x) in float32 (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-7 polynomial; ~1 ulp), x clamped to
// [-87, 88] so 2^n stays a normal float. Every product that meets an addition is an explicit fma, so all lane
// types (and CUDA) give the same bits.
template <typename F, typename U>
FASTSDE_HD FASTSDE_INLINE F gn_exp(F x) {
  x = gn_max(gn_min(x, F(88.0f)), F(-87.0f));
  const F magic(12582912.0f);  // 1.5 * 2^23: t + magic rounds t to an integer held in the low mantissa bits
  const F t = f_fma(x, F(1.44269504088896341f), magic);
  const F n = f_sub(t, magic);
  const U ni = u_sub(f_bits(t), f_bits(magic));
  F r = f_fma(n, F(-0.693359375f), x);
  r = f_fma(n, F(2.12194440e-4f), r);
  F p = F(1.9875691500e-4f);
  p = f_fma(p, r, F(1.3981999507e-3f));
  p = f_fma(p, r, F(8.3334519073e-3f));
  p = f_fma(p, r, F(4.1665795894e-2f));
  p = f_fma(p, r, F(1.6666665459e-1f));
  p = f_fma(p, r, F(5.0000001201e-1f));
  p = f_fma(f_mul(p, r), r, f_add(r, F(1.0f)));
  return f_mul(p, f_from_bits(u_shl<23>(u_add(ni, U(127u)))));
}

// SiLU(y) = y sigmoid(y) = y / (1 + exp(-y)).
template <typename F, typename U>
FASTSDE_HD FASTSDE_INLINE F gn_silu(F y) {
  return gn_div(y, f_add(F(1.0f), gn_exp<F, U>(f_sub(F(0.0f), y))));
}

// The per-element result before the activation: (x + d_c) a_c + b_c.
template <typename F>
FASTSDE_HD FASTSDE_INLINE F gn_affine(F x, F d, F a, F b) {
  return f_fma(f_add(x, d), a, b);
}

// float64 storage: the same in float64 (libm exp).
FASTSDE_HD FASTSDE_INLINE double gn_affine(double x, double d, double a, double b) { return f_fma(x + d, a, b); }
FASTSDE_HD FASTSDE_INLINE double gn_silu_f64(double y) { return y / (1.0 + exp(-y)); }

// rstd = 1 / sqrt(var + eps) from the centered sum of squares of `count` values, in float64: a float32 variance
// overflows for |x| >= ~2e19 although rstd itself is representable.
template <typename C>
FASTSDE_HD FASTSDE_INLINE C gn_rstd(double sq_dev, int64_t count, double eps) {
  return C(1.0 / sqrt(sq_dev / double(count) + eps));
}

// Inputs near the float32 range: the float32 partial sums of x (|x| count > 3.4e38) or of squared deviations
// (|x - mean| >= ~1e19) overflow. Kernels then redo that pass on values scaled by kGnTiny (a power of two, so the
// scaling is exact) and unscale the float64 total by kGnTinyInv (sums) or kGnTinyInv^2 (squares). Inputs without
// overflow never take this path, so their results are unchanged; inputs holding inf/NaN take it and stay inf/NaN.
constexpr float kGnTiny = 7.888609052210118e-31f;      // 2^-100
constexpr double kGnTinyInv = 1.2676506002282294e30;   // 2^100

// Per-channel coefficients d_c, a_c, b_c (see the top of this file) in the compute type C.
template <typename C>
struct ChannelCoef {
  C d, a, b;
};
template <typename C>
FASTSDE_HD FASTSDE_INLINE ChannelCoef<C> gn_channel(const GroupNormArgs& A, int64_t n, int64_t c, C mean, C rstd) {
  const C* w = static_cast<const C*>(A.weight);
  const C* bias = static_cast<const C*>(A.bias);
  const C* scale = static_cast<const C*>(A.scale);
  const C* shift = static_cast<const C*>(A.shift);
  const C* emb = static_cast<const C*>(A.emb_add);
  const int64_t nc = n * A.C + c;
  const C s1 = C(1) + (scale ? scale[nc] : C(0));
  ChannelCoef<C> k;
  k.d = (emb ? emb[nc] : C(0)) - mean;
  k.a = rstd * (w ? w[c] : C(1)) * s1;
  k.b = f_fma(bias ? bias[c] : C(0), s1, shift ? shift[nc] : C(0));
  return k;
}

// emb_add[n, c] (0 when absent), in the compute type.
template <typename C>
FASTSDE_HD FASTSDE_INLINE C gn_emb(const GroupNormArgs& A, int64_t n, int64_t c) {
  return A.emb_add ? static_cast<const C*>(A.emb_add)[n * A.C + c] : C(0);
}

// ---- Backward (csrc/cpu/groupnorm_backward_kernels.h, csrc/cuda/groupnorm_backward.cu, kernels/groupnorm.py).
// With t = x + d_c, the pre-activation u = t a_c + b_c (the forward's) and y = act(u):
//   du = dy act'(u),   SiLU'(u) = sig (1 + u (1 - sig)),   sig = 1 / (1 + exp(-u))
// Per (n, c): S1 = sum_p du and S2 = rstd sum_p du t (= sum_p du xhat). With k_c = weight_c (1 + scale_nc) and,
// per group of M = (C/G) HW elements, m1 = sum_c k_c S1_c / M and m2 = sum_c k_c S2_c / M:
//   dx = a_c du + (p t + q),   p = -rstd^2 m2,  q = -rstd m1      (= rstd (k_c du - m1 - xhat m2))
// and the vectors' gradients are per-(n, c) reductions the caller finishes: d emb_add = sum_p dx, d shift = S1,
// d scale = weight S2 + bias S1, d weight = sum_n (1 + scale) S2, d bias = sum_n (1 + scale) S1. The statistics
// are recomputed by the forward's own code (the same bits), not saved.
template <typename F, typename U>
FASTSDE_HD FASTSDE_INLINE F gn_dsilu(F u, F dy) {
  const F sig = gn_div(F(1.0f), f_add(F(1.0f), gn_exp<F, U>(f_sub(F(0.0f), u))));
  return f_mul(f_mul(dy, sig), f_fma(u, f_sub(F(1.0f), sig), F(1.0f)));
}
FASTSDE_HD FASTSDE_INLINE double gn_dsilu_f64(double u, double dy) {
  const double sig = 1.0 / (1.0 + exp(-u));
  return dy * sig * fma(u, 1.0 - sig, 1.0);
}

// k_c = weight[c] (1 + scale[n, c]) in float64 from the compute-type vectors.
template <typename C>
FASTSDE_HD FASTSDE_INLINE double gn_kc(const GroupNormArgs& A, int64_t n, int64_t c) {
  const C* w = static_cast<const C*>(A.weight);
  const C* scale = static_cast<const C*>(A.scale);
  return (w ? double(w[c]) : 1.0) * (1.0 + (scale ? double(scale[n * A.C + c]) : 0.0));
}

}  // namespace groupnorm
}  // namespace fastsde
