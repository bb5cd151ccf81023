// The CPU GroupNorm backward kernels (math: csrc/groupnorm.h, "Backward"), written once over the lane types of one
// ISA. Included (no include guard) by csrc/cpu/groupnorm_{scalar,avx2,avx512}.cpp right after
// groupnorm_kernels.h, whose statistics (gn_nchw_stats / gn_nhwc_stats) and helpers it reuses.
//
// Per work item: the statistics (two reads of x, from cache after the first), pass 1 reads x and dy for the
// per-channel sums S1, S2, pass 2 reads x and dy again and writes dx: the items' data are re-read from cache when
// a group (NCHW) or a sample (channels-last) fits it. Sums run in float32 lanes summed into float64 per row
// (NCHW) or every kGnFlush positions (channels-last): a fixed order for a given ISA, independent of threads.
// (Functors, not lambdas: GCC does not apply the target pragma to lambdas.)

template <bool kSilu>
FASTSDE_SIMD_INLINE F gn_du(F t, F dy, F a, F b) {
  return kSilu ? groupnorm::gn_dsilu<F, U>(f_fma(t, a, b), dy) : dy;
}

// One lane block of pass 1 (count valid lanes): acc0 += du, acc1 += du t (p, q unused).
template <Dtype D, bool kSilu>
struct GnBwdSums {
  using T = typename Io<D>::T;
  FASTSDE_SIMD_INLINE void operator()(const T* x, const T* dy, int64_t count, F d, F a, F b, F, F, F& acc0,
                                      F& acc1, T*) const {
    const bool full = count == kLanes;
    const F t = f_add(full ? Io<D>::ld(x) : gn_ld_part<D>(x, count), d);
    F du = gn_du<kSilu>(t, full ? Io<D>::ld(dy) : gn_ld_part<D>(dy, count), a, b);
    if (!full) du = gn_keep(du, count);
    acc0 = f_add(acc0, du);
    acc1 = f_fma(du, t, acc1);
  }
};

// One lane block of pass 2: dx = a du + (p t + q) stored, acc0 += dx.
template <Dtype D, bool kSilu>
struct GnBwdDx {
  using T = typename Io<D>::T;
  FASTSDE_SIMD_INLINE void operator()(const T* x, const T* dy, int64_t count, F d, F a, F b, F p, F q, F& acc0, F&,
                                      T* dx) const {
    const bool full = count == kLanes;
    const F t = f_add(full ? Io<D>::ld(x) : gn_ld_part<D>(x, count), d);
    const F du = gn_du<kSilu>(t, full ? Io<D>::ld(dy) : gn_ld_part<D>(dy, count), a, b);
    const F v = f_fma(a, du, f_fma(p, t, q));
    if (full)
      Io<D>::st(dx, v);
    else
      gn_st_part<D>(dx, v, count);
    acc0 = f_add(acc0, full ? v : gn_keep(v, count));
  }
};

// NCHW: one contiguous row of `len` elements of one channel; returns the two lane sums in float64.
template <Dtype D, typename Op>
void gn_bwd_row(const Op& op, const typename Io<D>::T* x, const typename Io<D>::T* dy, typename Io<D>::T* dx,
                int64_t len, const ChannelCoef<float>& k, float p, float q, double& s0, double& s1) {
  const F d(k.d), a(k.a), b(k.b), pv(p), qv(q);
  F acc0(0.0f), acc1(0.0f);
  for (int64_t j = 0; j < len; j += kLanes)
    op(x + j, dy + j, len - j < kLanes ? len - j : kLanes, d, a, b, pv, qv, acc0, acc1, dx ? dx + j : nullptr);
  s0 = gn_hsum(acc0);
  s1 = gn_hsum(acc1);
}

template <Dtype D, bool kSilu>
void gn_bwd_nchw_dtype(const GroupNormBwdArgs& B, int64_t n, int64_t g) {
  using T = typename Io<D>::T;
  const GroupNormArgs& A = B.fwd;
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg, nc = A.N * A.C, off = (n * A.C + c0) * hw;
  const T *x = static_cast<const T*>(A.x) + off, *dy = static_cast<const T*>(B.dy) + off;
  T* dx = static_cast<T*>(B.dx) + off;
  double *s1 = B.sums + n * A.C + c0, *s2 = s1 + nc, *s3 = s2 + nc;
  float mean, rstd;
  gn_nchw_stats<D>(A, n, g, x, mean, rstd);
  double m1 = 0.0, m2 = 0.0;
  for (int64_t k = 0; k < cpg; ++k) {
    gn_bwd_row<D>(GnBwdSums<D, kSilu>{}, x + k * hw, dy + k * hw, nullptr, hw,
                  groupnorm::gn_channel<float>(A, n, c0 + k, mean, rstd), 0.0f, 0.0f, s1[k], s2[k]);
    s2[k] *= rstd;
    const double kc = groupnorm::gn_kc<float>(A, n, c0 + k);
    m1 += kc * s1[k];
    m2 += kc * s2[k];
  }
  const double count = double(cpg * hw);
  const float p = float(-double(rstd) * rstd * (m2 / count)), q = float(-double(rstd) * (m1 / count));
  double unused;
  for (int64_t k = 0; k < cpg; ++k)
    gn_bwd_row<D>(GnBwdDx<D, kSilu>{}, x + k * hw, dy + k * hw, dx + k * hw, hw,
                  groupnorm::gn_channel<float>(A, n, c0 + k, mean, rstd), p, q, s3[k], unused);
}

// Channels-last: every row (position) of C channels, per-channel float32 lane sums (acc: 2 x padded floats)
// flushed into out0 / out1 (C doubles each, zeroed here) every kGnFlush positions. k: the per-channel vectors
// d, a, b, p, q (padded floats each, in that order).
template <Dtype D, typename Op>
void gn_bwd_rows(const Op& op, const typename Io<D>::T* x, const typename Io<D>::T* dy, typename Io<D>::T* dx,
                 int64_t C, int64_t hw, const float* k, float* acc, double* out0, double* out1) {
  const int64_t padded = C + kLanes;
  for (int64_t c = 0; c < C; ++c) out0[c] = out1[c] = 0.0;
  for (int64_t p0 = 0; p0 < hw; p0 += kGnFlush) {
    const int64_t p1 = p0 + kGnFlush < hw ? p0 + kGnFlush : hw;
    for (int64_t c = 0; c < 2 * padded; ++c) acc[c] = 0.0f;
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c = 0; c < C; c += kLanes) {
        F a0 = load(acc + c), a1 = load(acc + padded + c);
        op(x + p * C + c, dy + p * C + c, C - c < kLanes ? C - c : kLanes, load(k + c), load(k + padded + c),
           load(k + 2 * padded + c), load(k + 3 * padded + c), load(k + 4 * padded + c), a0, a1,
           dx ? dx + p * C + c : nullptr);
        store(acc + c, a0);
        store(acc + padded + c, a1);
      }
    for (int64_t c = 0; c < C; ++c) {
      out0[c] += double(acc[c]);
      out1[c] += double(acc[padded + c]);
    }
  }
}

template <Dtype D, bool kSilu>
void gn_bwd_nhwc_dtype(const GroupNormBwdArgs& B, int64_t n) {
  using T = typename Io<D>::T;
  const GroupNormArgs& A = B.fwd;
  const int64_t C = A.C, hw = A.HW, G = A.groups, cpg = C / G, padded = C + kLanes, nc = A.N * C;
  const T *x = static_cast<const T*>(A.x) + n * hw * C, *dy = static_cast<const T*>(B.dy) + n * hw * C;
  T* dx = static_cast<T*>(B.dx) + n * hw * C;
  double *s1 = B.sums + n * C, *s2 = s1 + nc, *s3 = s2 + nc;
  // float scratch (each padded, zero-padded): acc (x2), then d, a, b, p, q (adjacent: gn_bwd_rows' k); double:
  // per-channel sums
  std::vector<float> fbuf(size_t(7 * padded), 0.0f);
  float *acc = fbuf.data(), *dv = acc + 2 * padded, *av = dv + padded, *bv = av + padded, *pv = bv + padded,
        *qv = pv + padded;
  std::vector<double> csum(static_cast<size_t>(C));
  std::vector<float> mean(static_cast<size_t>(G)), rstd(static_cast<size_t>(G));
  gn_nhwc_stats<D>(A, n, x, acc, dv, csum.data(), mean.data(), rstd.data());
  gn_nhwc_coefs(A, n, mean.data(), rstd.data(), dv, av, bv);
  gn_bwd_rows<D>(GnBwdSums<D, kSilu>{}, x, dy, nullptr, C, hw, dv, acc, s1, s2);
  const double count = double(cpg * hw);
  for (int64_t g = 0; g < G; ++g) {
    double m1 = 0.0, m2 = 0.0;
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
      s2[c] *= rstd[g];
      const double kc = groupnorm::gn_kc<float>(A, n, c);
      m1 += kc * s1[c];
      m2 += kc * s2[c];
    }
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
      pv[c] = float(-double(rstd[g]) * rstd[g] * (m2 / count));
      qv[c] = float(-double(rstd[g]) * (m1 / count));
    }
  }
  gn_bwd_rows<D>(GnBwdDx<D, kSilu>{}, x, dy, dx, C, hw, dv, acc, s3, csum.data());
}

template <Dtype D>
void gn_bwd_nchw_act(const GroupNormBwdArgs& B, int64_t n, int64_t g) {
  if (B.fwd.act == 1)
    gn_bwd_nchw_dtype<D, true>(B, n, g);
  else
    gn_bwd_nchw_dtype<D, false>(B, n, g);
}
template <Dtype D>
void gn_bwd_nhwc_act(const GroupNormBwdArgs& B, int64_t n) {
  if (B.fwd.act == 1)
    gn_bwd_nhwc_dtype<D, true>(B, n);
  else
    gn_bwd_nhwc_dtype<D, false>(B, n);
}

void gn_bwd_nchw(const GroupNormBwdArgs& B, int64_t n, int64_t g) {
  switch (B.fwd.dtype) {
    case Dtype::kFloat16: gn_bwd_nchw_act<Dtype::kFloat16>(B, n, g); break;
    case Dtype::kBFloat16: gn_bwd_nchw_act<Dtype::kBFloat16>(B, n, g); break;
    default: gn_bwd_nchw_act<Dtype::kFloat32>(B, n, g); break;
  }
}
void gn_bwd_nhwc(const GroupNormBwdArgs& B, int64_t n) {
  switch (B.fwd.dtype) {
    case Dtype::kFloat16: gn_bwd_nhwc_act<Dtype::kFloat16>(B, n); break;
    case Dtype::kBFloat16: gn_bwd_nhwc_act<Dtype::kBFloat16>(B, n); break;
    default: gn_bwd_nhwc_act<Dtype::kFloat32>(B, n); break;
  }
}

const GroupNormBwdKernels kGroupNormBwdKernels = {gn_bwd_nchw, gn_bwd_nhwc};
