// The CPU kernels of csrc/cpu/step_cpu.h, written once over the lane types of one ISA. Included (no include
// guard) by csrc/cpu/step_{scalar,avx2,avx512}.cpp inside namespace fastsde::simd_<isa>, after that ISA's
// simd_<isa>.h, so F, U, kLanes and the lane operations / loads / stores / transpose4 / Acc16 resolve to it.
//
// A group is one Philox call per lane: kLanes blocks = G = 4 kLanes consecutive elements (64 for AVX-512). The
// row's last partial group is staged through zero-padded stack buffers and runs the same group code, so tails are
// bit-identical to the body. float64 storage runs scalar code (libm normals), identical on every level.

constexpr int G = 4 * kLanes;

// Storage of one dtype and its loads/stores to and from float32 lanes.
template <Dtype D>
struct Io;
template <>
struct Io<Dtype::kFloat32> {
  using T = float;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store(p, v); }
};
template <>
struct Io<Dtype::kFloat16> {
  using T = uint16_t;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load_half(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store_half(p, v); }
};
template <>
struct Io<Dtype::kBFloat16> {
  using T = uint16_t;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load_bf16(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store_bf16(p, v); }
};

// FSN1 float32 normals of the G elements starting at block blk0 (elements 4 blk0 ..), in element order:
// out[r] holds elements 4 blk0 + r kLanes + (0 .. kLanes-1).
FASTSDE_SIMD_INLINE void fsn1_group(F out[4], uint32_t blk0, uint32_t n, uint64_t draw, uint32_t k0, uint32_t k1) {
  U c0 = u_add(U(blk0), lane_index()), c1 = U(n), c2 = U(uint32_t(draw)), c3 = U(uint32_t(draw >> 32));
  fsn1::philox4x32_10_lanes<U>(c0, c1, c2, c3, k0, k1);
  F z[4];
  fsn1::box_muller_f32<F, U>(c0, c1, z[0], z[1]);
  fsn1::box_muller_f32<F, U>(c2, c3, z[2], z[3]);
  transpose4(z, out);
}

inline int64_t coef_index(int64_t len, int64_t row) { return len == 1 ? 0 : row; }

enum class NoiseMode { kNone, kExplicit, kFsn1 };

// Row pointers of one affine_step_ group (already offset to the group's first element).
template <typename T>
struct AffinePtrs {
  const T *x, *s, *noise, *mask, *data;
  T *out, *xm;
};

template <Dtype D, NoiseMode NM, bool kProject>
FASTSDE_SIMD_INLINE void affine_group(const AffinePtrs<typename Io<D>::T>& p, uint32_t blk0, const F coef[5],
                                      uint32_t n, uint64_t draw, uint64_t data_draw, uint32_t k0, uint32_t k1) {
  using IO = Io<D>;
  F z[4], z2[4];
  if (NM == NoiseMode::kFsn1) fsn1_group(z, blk0, n, draw, k0, k1);
  if (kProject) fsn1_group(z2, blk0, n, data_draw, k0, k1);
  for (int r = 0; r < 4; ++r) {
    const int off = r * kLanes;
    F xm = step::step_mean(coef[0], coef[1], IO::ld(p.x + off), IO::ld(p.s + off));
    F xo = xm;
    if (NM == NoiseMode::kFsn1) xo = step::step_noisy(xm, coef[2], z[r]);
    if (NM == NoiseMode::kExplicit) xo = step::step_noisy(xm, coef[2], IO::ld(p.noise + off));
    if (kProject) step::step_project(xo, xm, IO::ld(p.mask + off), IO::ld(p.data + off), coef[3], coef[4], z2[r]);
    IO::st(p.out + off, xo);
    if (p.xm) IO::st(p.xm + off, xm);
  }
}

template <typename T>
inline void copy_in(T* dst, const T* src, int64_t count) {
  if (!src) return;
  for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
}

template <Dtype D, NoiseMode NM, bool kProject>
void affine_range_f32(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  using T = typename Io<D>::T;
  const int64_t base = row * A.numel;
  auto at = [&](const void* ptr) -> const T* { return ptr ? static_cast<const T*>(ptr) + base : nullptr; };
  const T *x = at(A.x), *s = at(A.score), *noise = at(A.noise), *mask = at(A.mask), *data = at(A.data);
  T* out = static_cast<T*>(A.out) + base;
  T* xm = A.x_mean ? static_cast<T*>(A.x_mean) + base : nullptr;
  const F coef[5] = {
      F(float(A.a[coef_index(A.a_len, row)])),
      F(float(A.b[coef_index(A.b_len, row)])),
      F(A.c ? float(A.c[coef_index(A.c_len, row)]) : 0.0f),
      F(kProject ? float(A.data_a[coef_index(A.data_a_len, row)]) : 0.0f),
      F(kProject ? float(A.data_c[coef_index(A.data_c_len, row)]) : 0.0f),
  };
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const uint32_t k0 = uint32_t(A.seed), k1 = uint32_t(A.seed >> 32);
  int64_t j = j0;
  for (; j + G <= j1; j += G) {
    const AffinePtrs<T> p{x + j, s + j, noise ? noise + j : nullptr, mask ? mask + j : nullptr,
                          data ? data + j : nullptr, out + j, xm ? xm + j : nullptr};
    affine_group<D, NM, kProject>(p, uint32_t(j >> 2), coef, n, A.draw, A.data_draw, k0, k1);
  }
  if (j < j1) {  // the row's last partial group, through zero-padded buffers
    const int64_t count = j1 - j;
    T bx[G] = {}, bs[G] = {}, bn[G] = {}, bm[G] = {}, bd[G] = {}, bo[G] = {}, bxm[G] = {};
    copy_in(bx, x + j, count);
    copy_in(bs, s + j, count);
    copy_in(bn, noise ? noise + j : nullptr, count);
    copy_in(bm, mask ? mask + j : nullptr, count);
    copy_in(bd, data ? data + j : nullptr, count);
    const AffinePtrs<T> p{bx, bs, bn, bm, bd, bo, xm ? bxm : nullptr};
    affine_group<D, NM, kProject>(p, uint32_t(j >> 2), coef, n, A.draw, A.data_draw, k0, k1);
    for (int64_t i = 0; i < count; ++i) out[j + i] = bo[i];
    if (xm)
      for (int64_t i = 0; i < count; ++i) xm[j + i] = bxm[i];
  }
}

// float64 storage: scalar float64 math (libm normals), the same on every level.
inline void affine_range_f64(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  const int64_t base = row * A.numel;
  const double* x = static_cast<const double*>(A.x) + base;
  const double* s = static_cast<const double*>(A.score) + base;
  const double* noise = A.noise ? static_cast<const double*>(A.noise) + base : nullptr;
  const double* mask = A.mask ? static_cast<const double*>(A.mask) + base : nullptr;
  const double* data = A.data ? static_cast<const double*>(A.data) + base : nullptr;
  double* out = static_cast<double*>(A.out) + base;
  double* xmo = A.x_mean ? static_cast<double*>(A.x_mean) + base : nullptr;
  const double a = A.a[coef_index(A.a_len, row)], b = A.b[coef_index(A.b_len, row)];
  const double c = A.c ? A.c[coef_index(A.c_len, row)] : 0.0;
  const double da = mask ? A.data_a[coef_index(A.data_a_len, row)] : 0.0;
  const double dc = mask ? A.data_c[coef_index(A.data_c_len, row)] : 0.0;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const bool gen = A.c && !A.noise;
  fsn1::Double4 z{}, z2{};
  for (int64_t j = j0; j < j1; ++j) {
    if ((j & 3) == 0 || j == j0) {
      if (gen) z = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.draw, uint32_t(j >> 2)));
      if (mask) z2 = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.data_draw, uint32_t(j >> 2)));
    }
    double xm = step::step_mean(a, b, x[j], s[j]);
    double xo = xm;
    if (A.c) xo = step::step_noisy(xm, c, gen ? z.z[j & 3] : noise[j]);
    if (mask) step::step_project(xo, xm, mask[j], data[j], da, dc, z2.z[j & 3]);
    out[j] = xo;
    if (xmo) xmo[j] = xm;
  }
}

template <Dtype D, NoiseMode NM>
void affine_range_proj(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  if (A.mask)
    affine_range_f32<D, NM, true>(A, row, j0, j1);
  else
    affine_range_f32<D, NM, false>(A, row, j0, j1);
}

template <Dtype D>
void affine_range_dtype(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  if (!A.c)
    affine_range_proj<D, NoiseMode::kNone>(A, row, j0, j1);
  else if (A.noise)
    affine_range_proj<D, NoiseMode::kExplicit>(A, row, j0, j1);
  else
    affine_range_proj<D, NoiseMode::kFsn1>(A, row, j0, j1);
}

void affine_range(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  switch (A.dtype) {
    case Dtype::kFloat32: affine_range_dtype<Dtype::kFloat32>(A, row, j0, j1); break;
    case Dtype::kFloat16: affine_range_dtype<Dtype::kFloat16>(A, row, j0, j1); break;
    case Dtype::kBFloat16: affine_range_dtype<Dtype::kBFloat16>(A, row, j0, j1); break;
    case Dtype::kFloat64: affine_range_f64(A, row, j0, j1); break;
  }
}

// Sum the 16 canonical accumulators in a fixed tree order.
inline double acc_total(const double acc[16]) {
  double t[16];
  for (int i = 0; i < 16; ++i) t[i] = acc[i];
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

// Squared norms of one row's [j0, j1): element j goes to accumulator (j - j0) mod 16 (j0 is a multiple of 64).
template <Dtype D>
void sq_norms_range_f32(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  using T = typename Io<D>::T;
  using IO = Io<D>;
  const int64_t base = row * A.numel;
  const T* s = static_cast<const T*>(A.score) + base;
  const T* noise = A.noise ? static_cast<const T*>(A.noise) + base : nullptr;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const uint32_t k0 = uint32_t(A.seed), k1 = uint32_t(A.seed >> 32);
  Acc16 as, az;
  acc_zero(as);
  acc_zero(az);
  int64_t j = j0;
  for (; j + G <= j1; j += G) {
    F z[4];
    if (!noise) fsn1_group(z, uint32_t(j >> 2), n, A.draw, k0, k1);
    for (int r = 0; r < 4; ++r) {
      const int off = r * kLanes;
      const int slot = int(((j - j0 + off) & 15) / kLanes);
      acc_sq(as, IO::ld(s + j + off), slot);
      acc_sq(az, noise ? IO::ld(noise + j + off) : z[r], slot);
    }
  }
  if (j < j1) {  // partial group: zero padding adds +0 to the (non-negative) sums
    const int64_t count = j1 - j;
    T bs[G] = {}, bn[G] = {};
    copy_in(bs, s + j, count);
    float bz[G] = {};
    if (noise) {
      copy_in(bn, noise + j, count);
    } else {
      F z[4];
      fsn1_group(z, uint32_t(j >> 2), n, A.draw, k0, k1);
      for (int r = 0; r < 4; ++r) store(bz + r * kLanes, z[r]);
      for (int64_t i = count; i < G; ++i) bz[i] = 0.0f;
    }
    for (int r = 0; r < 4; ++r) {
      const int off = r * kLanes;
      const int slot = int(((j - j0 + off) & 15) / kLanes);
      acc_sq(as, IO::ld(bs + off), slot);
      acc_sq(az, noise ? IO::ld(bn + off) : load(bz + off), slot);
    }
  }
  double buf[16];
  acc_store(as, buf);
  partial[0] = acc_total(buf);
  acc_store(az, buf);
  partial[1] = acc_total(buf);
}

inline void sq_norms_range_f64(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  const int64_t base = row * A.numel;
  const double* s = static_cast<const double*>(A.score) + base;
  const double* noise = A.noise ? static_cast<const double*>(A.noise) + base : nullptr;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  double as[16] = {}, az[16] = {};
  fsn1::Double4 z{};
  for (int64_t j = j0; j < j1; ++j) {
    if (!noise && ((j & 3) == 0 || j == j0)) z = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.draw, uint32_t(j >> 2)));
    const double zj = noise ? noise[j] : z.z[j & 3];
    as[(j - j0) & 15] = __builtin_fma(s[j], s[j], as[(j - j0) & 15]);
    az[(j - j0) & 15] = __builtin_fma(zj, zj, az[(j - j0) & 15]);
  }
  partial[0] = acc_total(as);
  partial[1] = acc_total(az);
}

void sq_norms_range(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  switch (A.dtype) {
    case Dtype::kFloat32: sq_norms_range_f32<Dtype::kFloat32>(A, row, j0, j1, partial); break;
    case Dtype::kFloat16: sq_norms_range_f32<Dtype::kFloat16>(A, row, j0, j1, partial); break;
    case Dtype::kBFloat16: sq_norms_range_f32<Dtype::kBFloat16>(A, row, j0, j1, partial); break;
    case Dtype::kFloat64: sq_norms_range_f64(A, row, j0, j1, partial); break;
  }
}

// FSN1 float32 normals of one row's [j0, j1).
void fsn1_fill_f32(float* row_out, uint64_t seed, uint32_t n, uint64_t draw, int64_t j0, int64_t j1) {
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  int64_t j = j0;
  for (; j + G <= j1; j += G) {
    F z[4];
    fsn1_group(z, uint32_t(j >> 2), n, draw, k0, k1);
    for (int r = 0; r < 4; ++r) store(row_out + j + r * kLanes, z[r]);
  }
  if (j < j1) {
    F z[4];
    float buf[G];
    fsn1_group(z, uint32_t(j >> 2), n, draw, k0, k1);
    for (int r = 0; r < 4; ++r) store(buf + r * kLanes, z[r]);
    for (int64_t i = 0; i < j1 - j; ++i) row_out[j + i] = buf[i];
  }
}

// Philox words of blocks [blk0, blk1) of one row: row_out[4 k + i] = word i of block k.
void fsn1_bits_range(uint32_t* row_out, uint64_t seed, uint32_t n, uint64_t draw, int64_t blk0, int64_t blk1) {
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int64_t blk = blk0; blk < blk1; blk += kLanes) {
    U c0 = u_add(U(uint32_t(blk)), lane_index()), c1 = U(n), c2 = U(uint32_t(draw)), c3 = U(uint32_t(draw >> 32));
    fsn1::philox4x32_10_lanes<U>(c0, c1, c2, c3, k0, k1);
    const F w[4] = {f_from_bits(c0), f_from_bits(c1), f_from_bits(c2), f_from_bits(c3)};
    F t[4];
    transpose4(w, t);
    uint32_t buf[G];
    for (int r = 0; r < 4; ++r) store_u32(buf + r * kLanes, f_bits(t[r]));
    const int64_t count = (blk1 - blk < kLanes ? blk1 - blk : kLanes) * 4;
    for (int64_t i = 0; i < count; ++i) row_out[4 * blk + i] = buf[i];
  }
}

const SimdKernels kKernels{&affine_range, &sq_norms_range, &fsn1_fill_f32, &fsn1_bits_range};
