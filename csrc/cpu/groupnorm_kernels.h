// The CPU GroupNorm kernels of csrc/cpu/groupnorm_cpu.h, written once over the lane types of one ISA. Included (no
// include guard) by csrc/cpu/groupnorm_{scalar,avx2,avx512}.cpp inside namespace fastsde::simd_<isa>, after that
// ISA's simd_<isa>.h and its gn_div / gn_min / gn_max, so F, U, kLanes and the lane operations resolve to it.
// Names carry a gn_ / Gn prefix: step_kernels.h defines its own helpers in the same namespaces (both take Io<D>
// from csrc/cpu/dtype_io.h).
//
// Sums run in kLanes float32 lanes (x4 for independent chains), each lane's values added in element order, then
// the lanes in lane order into float64: a fixed order for a given ISA. Partial vectors (row tails, channel tails)
// go through zero-padded buffers and the same vector code.

using groupnorm::ChannelCoef;
using groupnorm::f_add;
using groupnorm::f_fma;

#include "cpu/dtype_io.h"  // Io<D>: storage <-> float32 lanes

// count < kLanes values, zero-padded.
template <Dtype D>
FASTSDE_SIMD_INLINE F gn_ld_part(const typename Io<D>::T* p, int64_t count) {
  typename Io<D>::T buf[kLanes] = {};
  for (int64_t i = 0; i < count; ++i) buf[i] = p[i];
  return Io<D>::ld(buf);
}
template <Dtype D>
FASTSDE_SIMD_INLINE void gn_st_part(typename Io<D>::T* p, F v, int64_t count) {
  typename Io<D>::T buf[kLanes];
  Io<D>::st(buf, v);
  for (int64_t i = 0; i < count; ++i) p[i] = buf[i];
}
// Lanes >= count set to 0.
FASTSDE_SIMD_INLINE F gn_keep(F v, int64_t count) {
  float buf[kLanes];
  store(buf, v);
  for (int64_t i = count; i < kLanes; ++i) buf[i] = 0.0f;
  return load(buf);
}
FASTSDE_SIMD_INLINE double gn_hsum(F v) {
  float buf[kLanes];
  store(buf, v);
  double s = 0.0;
  for (int i = 0; i < kLanes; ++i) s += buf[i];
  return s;
}

// a + v, or a + (v + d)^2 (kSq); kScaled: v (+ d) times groupnorm::kGnTiny first (the overflow path, see
// csrc/groupnorm.h). (A helper, not a lambda: GCC does not apply the target pragma to lambdas.)
template <bool kSq, bool kScaled = false>
FASTSDE_SIMD_INLINE F gn_acc(F a, F v, F d) {
  if (!kSq) return kScaled ? f_fma(v, F(groupnorm::kGnTiny), a) : f_add(a, v);
  F t = f_add(v, d);
  if (kScaled) t = f_fma(t, F(groupnorm::kGnTiny), F(0.0f));
  return f_fma(t, t, a);
}

// sum_j x[j] over one contiguous row (kSq: sum_j (x[j] + d)^2; kScaled: of the values times kGnTiny, unscaled in
// float64 on return).
template <Dtype D, bool kSq, bool kScaled = false>
double gn_row_sum(const typename Io<D>::T* x, int64_t len, float d) {
  using IO = Io<D>;
  const F dv(d);
  F acc[4] = {F(0.0f), F(0.0f), F(0.0f), F(0.0f)};
  int64_t j = 0;
  for (; j + 4 * kLanes <= len; j += 4 * kLanes)
    for (int r = 0; r < 4; ++r) acc[r] = gn_acc<kSq, kScaled>(acc[r], IO::ld(x + j + r * kLanes), dv);
  for (; j + kLanes <= len; j += kLanes) acc[0] = gn_acc<kSq, kScaled>(acc[0], IO::ld(x + j), dv);
  if (j < len) {  // zero padding adds nothing to a sum; for squares the padded lanes are cleared
    F v = gn_ld_part<D>(x + j, len - j);
    if (kSq) {
      const F t = gn_keep(f_add(v, dv), len - j);
      acc[1] = gn_acc<true, kScaled>(acc[1], t, F(0.0f));
    } else {
      acc[1] = gn_acc<false, kScaled>(acc[1], v, dv);
    }
  }
  const double s = gn_hsum(f_add(f_add(acc[0], acc[1]), f_add(acc[2], acc[3])));
  if (!kScaled) return s;
  return kSq ? s * groupnorm::kGnTinyInv * groupnorm::kGnTinyInv : s * groupnorm::kGnTinyInv;
}

// gn_row_sum, redone on scaled values when the float32 partial sums overflowed.
template <Dtype D, bool kSq>
double gn_row_sum_safe(const typename Io<D>::T* x, int64_t len, float d) {
  const double s = gn_row_sum<D, kSq>(x, len, d);
  return std::isfinite(s) ? s : gn_row_sum<D, kSq, true>(x, len, d);
}

template <bool kSilu>
FASTSDE_SIMD_INLINE F gn_apply(F x, F d, F a, F b) {
  const F y = groupnorm::gn_affine(x, d, a, b);
  return kSilu ? groupnorm::gn_silu<F, U>(y) : y;
}

// y = act((x + d) a + b) over one contiguous row.
template <Dtype D, bool kSilu>
void gn_row_apply(const typename Io<D>::T* x, typename Io<D>::T* y, int64_t len, const ChannelCoef<float>& k) {
  using IO = Io<D>;
  const F d(k.d), a(k.a), b(k.b);
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) IO::st(y + j, gn_apply<kSilu>(IO::ld(x + j), d, a, b));
  if (j < len) gn_st_part<D>(y + j, gn_apply<kSilu>(gn_ld_part<D>(x + j, len - j), d, a, b), len - j);
}

// NCHW statistics of one (sample n, group g), whose C/G channels are the contiguous rows of HW elements at x:
// the mean and rstd of x + emb_add (shared by the forward and the backward, which recomputes them bit for bit).
template <Dtype D>
void gn_nchw_stats(const GroupNormArgs& A, int64_t n, int64_t g, const typename Io<D>::T* x, float& mean_out,
                   float& rstd_out) {
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg, count = cpg * hw;
  // Without emb_add every channel has the same shift: the group is one contiguous row for the statistics.
  const bool one_row = A.emb_add == nullptr;
  double sum = 0.0;
  if (one_row)
    sum = gn_row_sum_safe<D, false>(x, count, 0.0f);
  else
    for (int64_t k = 0; k < cpg; ++k)
      sum += gn_row_sum_safe<D, false>(x + k * hw, hw, 0.0f) + double(hw) * groupnorm::gn_emb<float>(A, n, c0 + k);
  const float mean = float(sum / double(count));
  double sq = 0.0;
  if (one_row)
    sq = gn_row_sum_safe<D, true>(x, count, 0.0f - mean);
  else
    for (int64_t k = 0; k < cpg; ++k)
      sq += gn_row_sum_safe<D, true>(x + k * hw, hw, groupnorm::gn_emb<float>(A, n, c0 + k) - mean);
  mean_out = mean;
  rstd_out = groupnorm::gn_rstd<float>(sq, count, A.eps);
}

// NCHW, one (sample n, group g).
template <Dtype D, bool kSilu>
void gn_nchw_dtype(const GroupNormArgs& A, int64_t n, int64_t g) {
  using T = typename Io<D>::T;
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg;
  const T* x = static_cast<const T*>(A.x) + (n * A.C + c0) * hw;
  T* y = static_cast<T*>(A.y) + (n * A.C + c0) * hw;
  float mean, rstd;
  gn_nchw_stats<D>(A, n, g, x, mean, rstd);
  for (int64_t k = 0; k < cpg; ++k)
    gn_row_apply<D, kSilu>(x + k * hw, y + k * hw, hw, groupnorm::gn_channel<float>(A, n, c0 + k, mean, rstd));
}

// Channels-last, one sample: rows of C channels, one per position. Per-channel partial sums in float32 lanes
// (flushed to float64 every kGnFlush positions), then summed per group in channel order.
constexpr int64_t kGnFlush = 64;

template <Dtype D, bool kSq, bool kScaled = false>
void gn_channel_sums(const typename Io<D>::T* x, int64_t C, int64_t hw, const float* d, float* acc, double* out) {
  using IO = Io<D>;
  const int64_t body = C / kLanes * kLanes;
  for (int64_t c = 0; c < C; ++c) out[c] = 0.0;
  for (int64_t p0 = 0; p0 < hw; p0 += kGnFlush) {
    const int64_t p1 = p0 + kGnFlush < hw ? p0 + kGnFlush : hw;
    for (int64_t c = 0; c < C + kLanes; ++c) acc[c] = 0.0f;
    for (int64_t p = p0; p < p1; ++p) {
      const typename Io<D>::T* row = x + p * C;
      // d is zero past C and so is the padding of a partial vector: t = 0 there
      for (int64_t c = 0; c < body; c += kLanes)
        store(acc + c, gn_acc<kSq, kScaled>(load(acc + c), IO::ld(row + c), load(d + c)));
      if (body < C)
        store(acc + body,
              gn_acc<kSq, kScaled>(load(acc + body), gn_ld_part<D>(row + body, C - body), load(d + body)));
    }
    const double unscale = !kScaled ? 1.0 : kSq ? groupnorm::kGnTinyInv * groupnorm::kGnTinyInv
                                                : groupnorm::kGnTinyInv;
    for (int64_t c = 0; c < C; ++c) out[c] += kScaled ? double(acc[c]) * unscale : double(acc[c]);
  }
}

// gn_channel_sums, redone on scaled values when a channel's float32 partial sums overflowed.
template <Dtype D, bool kSq>
void gn_channel_sums_safe(const typename Io<D>::T* x, int64_t C, int64_t hw, const float* d, float* acc,
                          double* out) {
  gn_channel_sums<D, kSq>(x, C, hw, d, acc, out);
  for (int64_t c = 0; c < C; ++c)
    if (!std::isfinite(out[c])) return gn_channel_sums<D, kSq, true>(x, C, hw, d, acc, out);
}

// Channels-last statistics of sample n (rows of C channels at x): mean[g], rstd[g] of x + emb_add per group.
// Scratch: acc, dv (C + kLanes floats each, dv zero on entry; on return dv[c] = emb_add[n, c] - mean of c's
// group), csum (C doubles). Shared by the forward and the backward.
template <Dtype D>
void gn_nhwc_stats(const GroupNormArgs& A, int64_t n, const typename Io<D>::T* x, float* acc, float* dv,
                   double* csum, float* mean, float* rstd) {
  const int64_t C = A.C, hw = A.HW, G = A.groups, cpg = C / G;
  const double count = double(cpg * hw);
  gn_channel_sums_safe<D, false>(x, C, hw, dv, acc, csum);
  for (int64_t g = 0; g < G; ++g) {
    double s = 0.0;
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) s += csum[c] + double(hw) * groupnorm::gn_emb<float>(A, n, c);
    mean[g] = float(s / count);
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) dv[c] = groupnorm::gn_emb<float>(A, n, c) - mean[g];
  }
  gn_channel_sums_safe<D, true>(x, C, hw, dv, acc, csum);
  for (int64_t g = 0; g < G; ++g) {
    double s = 0.0;
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) s += csum[c];
    rstd[g] = groupnorm::gn_rstd<float>(s, cpg * hw, A.eps);
  }
}

// The per-channel coefficients d_c, a_c, b_c of sample n from its groups' statistics.
inline void gn_nhwc_coefs(const GroupNormArgs& A, int64_t n, const float* mean, const float* rstd, float* dv,
                          float* av, float* bv) {
  const int64_t cpg = A.C / A.groups;
  for (int64_t c = 0; c < A.C; ++c) {
    const ChannelCoef<float> k = groupnorm::gn_channel<float>(A, n, c, mean[c / cpg], rstd[c / cpg]);
    dv[c] = k.d;
    av[c] = k.a;
    bv[c] = k.b;
  }
}

template <Dtype D, bool kSilu>
void gn_nhwc_dtype(const GroupNormArgs& A, int64_t n) {
  using IO = Io<D>;
  using T = typename IO::T;
  const int64_t C = A.C, hw = A.HW, G = A.groups, padded = C + kLanes;
  const T* x = static_cast<const T*>(A.x) + n * hw * C;
  T* y = static_cast<T*>(A.y) + n * hw * C;
  // float scratch: acc, d, a, b (each C + kLanes, zero-padded); double scratch: per-channel sums
  std::vector<float> fbuf(size_t(4 * padded), 0.0f);
  std::vector<double> csum(static_cast<size_t>(C));
  float *acc = fbuf.data(), *dv = acc + padded, *av = dv + padded, *bv = av + padded;
  std::vector<float> mean(static_cast<size_t>(G)), rstd(static_cast<size_t>(G));
  gn_nhwc_stats<D>(A, n, x, acc, dv, csum.data(), mean.data(), rstd.data());
  gn_nhwc_coefs(A, n, mean.data(), rstd.data(), dv, av, bv);
  const int64_t body = C / kLanes * kLanes;
  for (int64_t p = 0; p < hw; ++p) {
    const T* row = x + p * C;
    T* out = y + p * C;
    for (int64_t c = 0; c < body; c += kLanes)
      IO::st(out + c, gn_apply<kSilu>(IO::ld(row + c), load(dv + c), load(av + c), load(bv + c)));
    if (body < C)
      gn_st_part<D>(out + body,
                    gn_apply<kSilu>(gn_ld_part<D>(row + body, C - body), load(dv + body), load(av + body),
                                    load(bv + body)),
                    C - body);
  }
}

template <Dtype D>
void gn_nchw_act(const GroupNormArgs& A, int64_t n, int64_t g) {
  if (A.act == 1)
    gn_nchw_dtype<D, true>(A, n, g);
  else
    gn_nchw_dtype<D, false>(A, n, g);
}
template <Dtype D>
void gn_nhwc_act(const GroupNormArgs& A, int64_t n) {
  if (A.act == 1)
    gn_nhwc_dtype<D, true>(A, n);
  else
    gn_nhwc_dtype<D, false>(A, n);
}

void gn_nchw(const GroupNormArgs& A, int64_t n, int64_t g) {
  switch (A.dtype) {
    case Dtype::kFloat16: gn_nchw_act<Dtype::kFloat16>(A, n, g); break;
    case Dtype::kBFloat16: gn_nchw_act<Dtype::kBFloat16>(A, n, g); break;
    default: gn_nchw_act<Dtype::kFloat32>(A, n, g); break;
  }
}
void gn_nhwc(const GroupNormArgs& A, int64_t n) {
  switch (A.dtype) {
    case Dtype::kFloat16: gn_nhwc_act<Dtype::kFloat16>(A, n); break;
    case Dtype::kBFloat16: gn_nhwc_act<Dtype::kBFloat16>(A, n); break;
    default: gn_nhwc_act<Dtype::kFloat32>(A, n); break;
  }
}

const GroupNormKernels kGroupNormKernels = {gn_nchw, gn_nhwc};
