// The CPU kernels of csrc/cpu/step_cpu.h, written once over the lane types of one ISA. Included (no include
// guard) by csrc/cpu/step_{scalar,avx2,avx512}.cpp inside namespace fastsde::simd_<isa>, after that ISA's
// simd_<isa>.h, so F, U, kLanes and the lane operations / loads / stores / transpose4 / Acc16 resolve to it.
//
// A group is one Philox call per lane: kLanes blocks = G = 4 kLanes consecutive elements (64 for AVX-512). The
// row's last partial group is staged through zero-padded stack buffers and runs the same group code, so tails are
// bit-identical to the body. float64 storage runs scalar code (libm normals), identical on every level.
//
// The score may be narrower than the state (csrc/step_args.h, step_dtypes_supported): the kernels are templated on
// the state dtype D and the score dtype DS, and the score is converted to float32 lanes by its own Io<DS> load --
// the same conversion a float32 copy would make, with no extra pass and no buffer.

constexpr int G = 4 * kLanes;

#include "cpu/dtype_io.h"  // Io<D>: storage <-> float32 lanes

// FSN1 float32 normals of the G elements starting at block blk0 (elements 4 blk0 ..), in element order:
// out[r] holds elements 4 blk0 + r kLanes + (0 .. kLanes-1).
// The same with per-lane counters: lane l takes block c0[l] of sample c1[l]; out[r] holds the four normals of
// lanes r kLanes / 4 .. in (lane, normal) order (element 4 l + t of the group = normal t of lane l).
// kAll = false: only normals 0 and 1 of each block (2 and 3 come out as 0), for rows of at most 2 elements.
template <bool kAll = true>
FASTSDE_SIMD_INLINE void fsn1_group_lanes(F out[4], U c0, U c1, uint64_t draw, uint32_t k0, uint32_t k1) {
  U c2 = U(uint32_t(draw)), c3 = U(uint32_t(draw >> 32));
  fsn1::philox4x32_10_lanes<U>(c0, c1, c2, c3, k0, k1);
  F z[4];
  fsn1::box_muller_f32<F, U>(c0, c1, z[0], z[1]);
  if (kAll)
    fsn1::box_muller_f32<F, U>(c2, c3, z[2], z[3]);
  else
    z[2] = z[3] = F(0.0f);
  transpose4(z, out);
}

FASTSDE_SIMD_INLINE void fsn1_group(F out[4], uint32_t blk0, uint32_t n, uint64_t draw, uint32_t k0, uint32_t k1) {
  fsn1_group_lanes(out, u_add(U(blk0), lane_index()), U(n), draw, k0, k1);
}

using step::coef_index;
using step::NoiseMode;

// Row pointers of one affine_step_ group (already offset to the group's first element): state-dtype T, score TS.
// s2/s3: the further model outputs of a combine (null when absent).
template <typename T, typename TS>
struct AffinePtrs {
  const T* x;
  const TS* s;
  const T *noise, *mask, *data;
  T *out, *xm;
  const TS *s2, *s3;
};

// The coefficients of one row as lanes: [a, b, c, data_a, data_c, b2, b3] (absent ones 0).
constexpr int kCoefs = 7;

// xm = a x + b s (+ b2 s2 + b3 s3): the mean of every affine update, in lanes (csrc/step.h).
template <Dtype DS>
FASTSDE_SIMD_INLINE F combine_mean(const F c[kCoefs], F x, const typename Io<DS>::T* s,
                                   const typename Io<DS>::T* s2, const typename Io<DS>::T* s3) {
  F xm = step::step_mean(c[0], c[1], x, Io<DS>::ld(s));
  if (s2) xm = step::step_add(xm, c[5], Io<DS>::ld(s2));
  if (s3) xm = step::step_add(xm, c[6], Io<DS>::ld(s3));
  return xm;
}

template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
FASTSDE_SIMD_INLINE void affine_group(const AffinePtrs<typename Io<D>::T, typename Io<DS>::T>& p, uint32_t blk0,
                                      const F coef[kCoefs], uint32_t n, uint64_t draw, uint64_t data_draw,
                                      uint32_t k0, uint32_t k1) {
  using IO = Io<D>;
  F z[4], z2[4];
  if (NM == NoiseMode::kFsn1) fsn1_group(z, blk0, n, draw, k0, k1);
  if (kProject) fsn1_group(z2, blk0, n, data_draw, k0, k1);
  for (int r = 0; r < 4; ++r) {
    const int off = r * kLanes;
    F xm = combine_mean<DS>(coef, IO::ld(p.x + off), p.s + off, p.s2 ? p.s2 + off : nullptr,
                            p.s3 ? p.s3 + off : nullptr);
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

template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
void affine_range_f32(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  using T = typename Io<D>::T;
  using TS = typename Io<DS>::T;
  const int64_t base = row * A.numel;
  auto at = [&](const void* ptr) -> const T* { return ptr ? static_cast<const T*>(ptr) + base : nullptr; };
  const T *x = at(A.x), *noise = at(A.noise), *mask = at(A.mask), *data = at(A.data);
  auto at_s = [&](const void* ptr) -> const TS* { return ptr ? static_cast<const TS*>(ptr) + base : nullptr; };
  const TS *s = at_s(A.score), *s2 = at_s(A.score2), *s3 = at_s(A.score3);
  T* out = static_cast<T*>(A.out) + base;
  T* xm = A.x_mean ? static_cast<T*>(A.x_mean) + base : nullptr;
  const F coef[kCoefs] = {
      F(float(A.a[coef_index(A.a_len, row)])),
      F(float(A.b[coef_index(A.b_len, row)])),
      F(A.c ? float(A.c[coef_index(A.c_len, row)]) : 0.0f),
      F(kProject ? float(A.data_a[coef_index(A.data_a_len, row)]) : 0.0f),
      F(kProject ? float(A.data_c[coef_index(A.data_c_len, row)]) : 0.0f),
      F(A.b2 ? float(A.b2[coef_index(A.b2_len, row)]) : 0.0f),
      F(A.b3 ? float(A.b3[coef_index(A.b3_len, row)]) : 0.0f),
  };
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const uint32_t k0 = uint32_t(A.seed), k1 = uint32_t(A.seed >> 32);
  int64_t j = j0;
  for (; j + G <= j1; j += G) {
    const AffinePtrs<T, TS> p{x + j, s + j, noise ? noise + j : nullptr, mask ? mask + j : nullptr,
                              data ? data + j : nullptr, out + j, xm ? xm + j : nullptr,
                              s2 ? s2 + j : nullptr, s3 ? s3 + j : nullptr};
    affine_group<D, DS, NM, kProject>(p, uint32_t(j >> 2), coef, n, A.draw, A.data_draw, k0, k1);
  }
  if (j < j1) {  // the row's last partial group, through zero-padded buffers
    const int64_t count = j1 - j;
    T bx[G] = {}, bn[G] = {}, bm[G] = {}, bd[G] = {}, bo[G] = {}, bxm[G] = {};
    TS bs[G] = {}, bs2[G] = {}, bs3[G] = {};
    copy_in(bx, x + j, count);
    copy_in(bs, s + j, count);
    copy_in(bs2, s2 ? s2 + j : nullptr, count);
    copy_in(bs3, s3 ? s3 + j : nullptr, count);
    copy_in(bn, noise ? noise + j : nullptr, count);
    copy_in(bm, mask ? mask + j : nullptr, count);
    copy_in(bd, data ? data + j : nullptr, count);
    const AffinePtrs<T, TS> p{bx, bs, bn, bm, bd, bo, xm ? bxm : nullptr, s2 ? bs2 : nullptr, s3 ? bs3 : nullptr};
    affine_group<D, DS, NM, kProject>(p, uint32_t(j >> 2), coef, n, A.draw, A.data_draw, k0, k1);
    for (int64_t i = 0; i < count; ++i) out[j + i] = bo[i];
    if (xm)
      for (int64_t i = 0; i < count; ++i) xm[j + i] = bxm[i];
  }
}

// float64 storage: scalar float64 math (libm normals), the same on every level. S: the score's storage (double, or
// float beside a float64 state).
template <typename S>
inline void affine_range_f64(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  const int64_t base = row * A.numel;
  const double* x = static_cast<const double*>(A.x) + base;
  const S* s = static_cast<const S*>(A.score) + base;
  const S* s2 = A.score2 ? static_cast<const S*>(A.score2) + base : nullptr;
  const S* s3 = A.score3 ? static_cast<const S*>(A.score3) + base : nullptr;
  const double* noise = A.noise ? static_cast<const double*>(A.noise) + base : nullptr;
  const double* mask = A.mask ? static_cast<const double*>(A.mask) + base : nullptr;
  const double* data = A.data ? static_cast<const double*>(A.data) + base : nullptr;
  double* out = static_cast<double*>(A.out) + base;
  double* xmo = A.x_mean ? static_cast<double*>(A.x_mean) + base : nullptr;
  const double a = A.a[coef_index(A.a_len, row)], b = A.b[coef_index(A.b_len, row)];
  const double c = A.c ? A.c[coef_index(A.c_len, row)] : 0.0;
  const double da = mask ? A.data_a[coef_index(A.data_a_len, row)] : 0.0;
  const double dc = mask ? A.data_c[coef_index(A.data_c_len, row)] : 0.0;
  const double b2 = s2 ? A.b2[coef_index(A.b2_len, row)] : 0.0, b3 = s3 ? A.b3[coef_index(A.b3_len, row)] : 0.0;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const bool gen = A.c && !A.noise;
  fsn1::Double4 z{}, z2{};
  for (int64_t j = j0; j < j1; ++j) {
    if ((j & 3) == 0 || j == j0) {
      if (gen) z = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.draw, uint32_t(j >> 2)));
      if (mask) z2 = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.data_draw, uint32_t(j >> 2)));
    }
    double xm = step::step_mean(a, b, x[j], double(s[j]));
    if (s2) xm = step::step_add(xm, b2, double(s2[j]));
    if (s3) xm = step::step_add(xm, b3, double(s3[j]));
    double xo = xm;
    if (A.c) xo = step::step_noisy(xm, c, gen ? z.z[j & 3] : noise[j]);
    if (mask) step::step_project(xo, xm, mask[j], data[j], da, dc, z2.z[j & 3]);
    out[j] = xo;
    if (xmo) xmo[j] = xm;
  }
}

template <Dtype D, Dtype DS, NoiseMode NM>
void affine_range_proj(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  if (A.mask)
    affine_range_f32<D, DS, NM, true>(A, row, j0, j1);
  else
    affine_range_f32<D, DS, NM, false>(A, row, j0, j1);
}

template <Dtype D, Dtype DS>
void affine_range_dtype(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  if (!A.c)
    affine_range_proj<D, DS, NoiseMode::kNone>(A, row, j0, j1);
  else if (A.noise)
    affine_range_proj<D, DS, NoiseMode::kExplicit>(A, row, j0, j1);
  else
    affine_range_proj<D, DS, NoiseMode::kFsn1>(A, row, j0, j1);
}

// The score's storage type beside a float64 state.
template <Dtype DS>
using F64Score = typename std::conditional<DS == Dtype::kFloat64, double, float>::type;

void affine_range(const AffineStepArgs& A, int64_t row, int64_t j0, int64_t j1) {
  with_step_dtypes(A.dtype, A.score_dtype, [&](auto d, auto ds) {
    constexpr Dtype D = decltype(d)::value, DS = decltype(ds)::value;
    if constexpr (D == Dtype::kFloat64)
      affine_range_f64<F64Score<DS>>(A, row, j0, j1);
    else
      affine_range_dtype<D, DS>(A, row, j0, j1);
  });
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
template <Dtype D, Dtype DS>
void sq_norms_range_f32(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  using T = typename Io<D>::T;
  using TS = typename Io<DS>::T;
  using IO = Io<D>;
  const int64_t base = row * A.numel;
  const TS* s = static_cast<const TS*>(A.score) + base;
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
      acc_sq(as, Io<DS>::ld(s + j + off), slot);
      acc_sq(az, noise ? IO::ld(noise + j + off) : z[r], slot);
    }
  }
  if (j < j1) {  // partial group: zero padding adds +0 to the (non-negative) sums
    const int64_t count = j1 - j;
    TS bs[G] = {};
    T bn[G] = {};
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
      acc_sq(as, Io<DS>::ld(bs + off), slot);
      acc_sq(az, noise ? IO::ld(bn + off) : load(bz + off), slot);
    }
  }
  double buf[16];
  acc_store(as, buf);
  partial[0] = acc_total(buf);
  acc_store(az, buf);
  partial[1] = acc_total(buf);
}

template <typename S>
inline void sq_norms_range_f64(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  const int64_t base = row * A.numel;
  const S* s = static_cast<const S*>(A.score) + base;
  const double* noise = A.noise ? static_cast<const double*>(A.noise) + base : nullptr;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  double as[16] = {}, az[16] = {};
  fsn1::Double4 z{};
  for (int64_t j = j0; j < j1; ++j) {
    if (!noise && ((j & 3) == 0 || j == j0)) z = fsn1::fsn1_normals4_f64(fsn1::fsn1_block(A.seed, n, A.draw, uint32_t(j >> 2)));
    const double zj = noise ? noise[j] : z.z[j & 3];
    const double sj = double(s[j]);
    as[(j - j0) & 15] = __builtin_fma(sj, sj, as[(j - j0) & 15]);
    az[(j - j0) & 15] = __builtin_fma(zj, zj, az[(j - j0) & 15]);
  }
  partial[0] = acc_total(as);
  partial[1] = acc_total(az);
}

void sq_norms_range(const SqNormsArgs& A, int64_t row, int64_t j0, int64_t j1, double partial[2]) {
  with_step_dtypes(A.dtype, A.score_dtype, [&](auto d, auto ds) {
    constexpr Dtype D = decltype(d)::value, DS = decltype(ds)::value;
    if constexpr (D == Dtype::kFloat64)
      sq_norms_range_f64<F64Score<DS>>(A, row, j0, j1, partial);
    else
      sq_norms_range_f32<D, DS>(A, row, j0, j1, partial);
  });
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

// ---- Short rows: the lanes of a group run across samples -----------------------------------------------------
// A row shorter than a group would leave most lanes of its (zero-padded) group idle. Short rows therefore run in
// tiles of whole rows [r0, r0 + nrows): the Philox blocks of a tile are numbered flat (block k of tile row i is
// i bpr + k, bpr = ceil(numel / 4) blocks per row), lane l of a group takes flat block base + l, so every Philox
// call feeds real elements (up to the row's last partial block). The normals land in a stack buffer in block
// order; the element math then runs over the tile's elements, which are contiguous in storage. Every element sees
// the same operations as in the per-row path, so the results are bit-identical to it (and across levels).
constexpr int64_t kFlatTile = 1024;  // block slots (4 bpr per row) per tile, at most; rows must be <= this

inline int64_t flat_tile_rows(int64_t numel) {
  const int64_t r = kFlatTile / (4 * ((numel + 3) / 4));
  return r > 0 ? r : 1;
}

// zb[4 (i bpr + k) + t] = FSN1 normal t of block k of row r0 + i, for i < nrows. zb holds kFlatTile + G floats:
// the last group may run past the tile (its extra lanes repeat the last row; their normals are never read).
inline void flat_normals(float* zb, const int64_t* ids, int64_t r0, int64_t nrows, int64_t numel, uint64_t seed,
                         uint64_t draw) {
  const int64_t bpr = (numel + 3) / 4;
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  const int64_t nblk = nrows * bpr;
  alignas(64) uint32_t cb[kLanes], cn[kLanes];
  if (bpr == 1) {  // rows of at most 4 elements: lane l = row base + l, block 0
    for (int l = 0; l < kLanes; ++l) cb[l] = 0;
    for (int64_t g = 0; g < nblk; g += kLanes) {
      if (g + kLanes <= nrows)
        for (int l = 0; l < kLanes; ++l) cn[l] = uint32_t(ids[r0 + g + l]);
      else
        for (int l = 0; l < kLanes; ++l) cn[l] = uint32_t(ids[r0 + (g + l < nrows ? g + l : nrows - 1)]);
      F z[4];
      if (numel <= 2)  // normals 2 and 3 of the block are never used
        fsn1_group_lanes<false>(z, load_u32(cb), load_u32(cn), draw, k0, k1);
      else
        fsn1_group_lanes(z, load_u32(cb), load_u32(cn), draw, k0, k1);
      for (int r = 0; r < 4; ++r) store(zb + 4 * g + r * kLanes, z[r]);
    }
    return;
  }
  int64_t i = 0, k = 0;  // tile row and block of the next lane
  for (int64_t g = 0; g < nblk; g += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      cb[l] = uint32_t(k);
      cn[l] = uint32_t(ids[r0 + (i < nrows ? i : nrows - 1)]);
      if (++k == bpr) {
        k = 0;
        ++i;
      }
    }
    F z[4];
    fsn1_group_lanes(z, load_u32(cb), load_u32(cn), draw, k0, k1);
    for (int r = 0; r < 4; ++r) store(zb + 4 * g + r * kLanes, z[r]);
  }
}

// Block order (zb, row stride 4 bpr) -> element order (zc, row stride numel), a vector at a time: the spill of
// row i past its numel values is overwritten by row i + 1 (rows go in order), the last row's lands in zc's slack.
// zb must be readable kLanes floats past 4 bpr (nrows - 1) + numel (flat_normals' slack, zeroed here).
inline void flat_compact(float* zc, float* zb, int64_t nrows, int64_t numel, int64_t bpr) {
  for (int l = 0; l < kLanes; ++l) zb[4 * nrows * bpr + l] = 0.0f;
  for (int64_t i = 0; i < nrows; ++i)
    for (int64_t j = 0; j < numel; j += kLanes) store(zc + i * numel + j, load(zb + i * 4 * bpr + j));
}

// One vector of kLanes elements of a tile: exactly the operations of affine_group.
template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
FASTSDE_SIMD_INLINE void affine_flat_vec(const AffinePtrs<typename Io<D>::T, typename Io<DS>::T>& p, const F c[kCoefs],
                                         F z, F z2) {
  using IO = Io<D>;
  F xm = combine_mean<DS>(c, IO::ld(p.x), p.s, p.s2, p.s3);
  F xo = xm;
  if (NM == NoiseMode::kFsn1) xo = step::step_noisy(xm, c[2], z);
  if (NM == NoiseMode::kExplicit) xo = step::step_noisy(xm, c[2], IO::ld(p.noise));
  if (kProject) step::step_project(xo, xm, IO::ld(p.mask), IO::ld(p.data), c[3], c[4], z2);
  IO::st(p.out, xo);
  if (p.xm) IO::st(p.xm, xm);
}

template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
void affine_flat_f32(const AffineStepArgs& A, int64_t r0, int64_t r1) {
  using T = typename Io<D>::T;
  using TS = typename Io<DS>::T;
  const int64_t M = A.numel, bpr = (M + 3) / 4, tile_rows = flat_tile_rows(M);
  // Normals in block order (zb) and element order (zc): zc aliases zb when rows are whole blocks.
  alignas(64) float zb[NM == NoiseMode::kFsn1 ? kFlatTile + G : 1], zcb[NM == NoiseMode::kFsn1 ? kFlatTile + G : 1];
  alignas(64) float z2b[kProject ? kFlatTile + G : 1], z2cb[kProject ? kFlatTile + G : 1];
  const bool whole_blocks = M == 4 * bpr;
  float* zc = whole_blocks ? zb : zcb;
  float* z2c = whole_blocks ? z2b : z2cb;
  alignas(64) float cf[kCoefs][kFlatTile + kLanes];  // per-element coefficients (per-sample ones only)
  const double* cp[kCoefs] = {A.a, A.b, NM != NoiseMode::kNone ? A.c : nullptr, kProject ? A.data_a : nullptr,
                              kProject ? A.data_c : nullptr, A.score2 ? A.b2 : nullptr, A.score3 ? A.b3 : nullptr};
  const int64_t cl[kCoefs] = {A.a_len, A.b_len, A.c_len, A.data_a_len, A.data_c_len, A.b2_len, A.b3_len};
  bool per[kCoefs];
  F cb[kCoefs];
  for (int q = 0; q < kCoefs; ++q) {
    per[q] = cp[q] && cl[q] != 1;
    cb[q] = F(cp[q] && !per[q] ? float(cp[q][0]) : 0.0f);
  }
  for (int64_t r = r0; r < r1; r += tile_rows) {
    const int64_t nrows = r1 - r < tile_rows ? r1 - r : tile_rows, E = nrows * M, base = r * M;
    if (NM == NoiseMode::kFsn1) {
      flat_normals(zb, A.sample_ids, r, nrows, M, A.seed, A.draw);
      if (whole_blocks)
        for (int l = 0; l < kLanes; ++l) zb[E + l] = 0.0f;
      else
        flat_compact(zc, zb, nrows, M, bpr);
    }
    if (kProject) {
      flat_normals(z2b, A.sample_ids, r, nrows, M, A.seed, A.data_draw);
      if (whole_blocks)
        for (int l = 0; l < kLanes; ++l) z2b[E + l] = 0.0f;
      else
        flat_compact(z2c, z2b, nrows, M, bpr);
    }
    for (int q = 0; q < kCoefs; ++q) {  // whole-vector broadcasts; each row's spill is overwritten by the next row
      if (!per[q]) continue;
      float* dst = cf[q];
      for (int64_t i = 0; i < nrows; ++i) {
        const F v = F(float(cp[q][r + i]));
        for (int64_t j = 0; j < M; j += kLanes) store(dst + i * M + j, v);
      }
      store(dst + E, F(0.0f));
    }
    auto at = [&](const void* ptr) -> const T* { return ptr ? static_cast<const T*>(ptr) + base : nullptr; };
    auto at_s = [&](const void* ptr) -> const TS* { return ptr ? static_cast<const TS*>(ptr) + base : nullptr; };
    const AffinePtrs<T, TS> p{at(A.x),
                              at_s(A.score),
                              NM == NoiseMode::kExplicit ? at(A.noise) : nullptr,
                              kProject ? at(A.mask) : nullptr,
                              kProject ? at(A.data) : nullptr,
                              static_cast<T*>(A.out) + base,
                              A.x_mean ? static_cast<T*>(A.x_mean) + base : nullptr,
                              at_s(A.score2),
                              at_s(A.score3)};
    F c[kCoefs];
    int64_t i = 0;
    for (; i + kLanes <= E; i += kLanes) {
      for (int q = 0; q < kCoefs; ++q) c[q] = per[q] ? load(cf[q] + i) : cb[q];
      const AffinePtrs<T, TS> pi{p.x + i, p.s + i, p.noise ? p.noise + i : nullptr, p.mask ? p.mask + i : nullptr,
                                 p.data ? p.data + i : nullptr, p.out + i, p.xm ? p.xm + i : nullptr,
                                 p.s2 ? p.s2 + i : nullptr, p.s3 ? p.s3 + i : nullptr};
      affine_flat_vec<D, DS, NM, kProject>(pi, c, NM == NoiseMode::kFsn1 ? load(zc + i) : F(0.0f),
                                       kProject ? load(z2c + i) : F(0.0f));
    }
    if (i < E) {  // the tile's last partial vector, through zero-padded buffers
      const int64_t count = E - i;
      T bx[kLanes] = {}, bn[kLanes] = {}, bm[kLanes] = {}, bd[kLanes] = {}, bo[kLanes] = {}, bxm[kLanes] = {};
      TS bs[kLanes] = {}, bs2[kLanes] = {}, bs3[kLanes] = {};
      copy_in(bx, p.x + i, count);
      copy_in(bs, p.s + i, count);
      if (p.s2) copy_in(bs2, p.s2 + i, count);
      if (p.s3) copy_in(bs3, p.s3 + i, count);
      if (p.noise) copy_in(bn, p.noise + i, count);
      if (p.mask) copy_in(bm, p.mask + i, count);
      if (p.data) copy_in(bd, p.data + i, count);
      for (int q = 0; q < kCoefs; ++q) c[q] = per[q] ? load(cf[q] + i) : cb[q];
      const AffinePtrs<T, TS> pi{bx, bs, bn, bm, bd, bo, p.xm ? bxm : nullptr, p.s2 ? bs2 : nullptr,
                                 p.s3 ? bs3 : nullptr};
      affine_flat_vec<D, DS, NM, kProject>(pi, c, NM == NoiseMode::kFsn1 ? load(zc + i) : F(0.0f),
                                       kProject ? load(z2c + i) : F(0.0f));
      for (int64_t t = 0; t < count; ++t) p.out[i + t] = bo[t];
      if (p.xm)
        for (int64_t t = 0; t < count; ++t) p.xm[i + t] = bxm[t];
    }
  }
}

template <Dtype D, Dtype DS, NoiseMode NM>
void affine_flat_proj(const AffineStepArgs& A, int64_t r0, int64_t r1) {
  if (A.mask)
    affine_flat_f32<D, DS, NM, true>(A, r0, r1);
  else
    affine_flat_f32<D, DS, NM, false>(A, r0, r1);
}

template <Dtype D, Dtype DS>
void affine_flat_dtype(const AffineStepArgs& A, int64_t r0, int64_t r1) {
  if (!A.c)
    affine_flat_proj<D, DS, NoiseMode::kNone>(A, r0, r1);
  else if (A.noise)
    affine_flat_proj<D, DS, NoiseMode::kExplicit>(A, r0, r1);
  else
    affine_flat_proj<D, DS, NoiseMode::kFsn1>(A, r0, r1);
}

// Rows [r0, r1), each shorter than kFlatTile elements (short rows: csrc/cpu/step.cpp decides).
void affine_flat(const AffineStepArgs& A, int64_t r0, int64_t r1) {
  with_step_dtypes(A.dtype, A.score_dtype, [&](auto d, auto ds) {
    constexpr Dtype D = decltype(d)::value, DS = decltype(ds)::value;
    if constexpr (D == Dtype::kFloat64) {  // scalar per element already: no idle lanes
      for (int64_t r = r0; r < r1; ++r) affine_range_f64<F64Score<DS>>(A, r, 0, A.numel);
    } else {
      affine_flat_dtype<D, DS>(A, r0, r1);
    }
  });
}

// Storage -> float32 (exact), kLanes at a time; dst has room for count rounded up to kLanes.
template <Dtype D>
inline void to_f32(float* dst, const typename Io<D>::T* src, int64_t count) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) store(dst + i, Io<D>::ld(src + i));
  if (i < count) {
    typename Io<D>::T b[kLanes] = {};
    copy_in(b, src + i, count - i);
    store(dst + i, Io<D>::ld(b));
  }
}

// Sum of squares of one short row in the canonical order of sq_norms_range_f32 (element j to accumulator j mod 16,
// then acc_total's tree), in float64: each square of a float32 is exact, so acc + v v rounds once like the fma of
// the SIMD accumulators. Accumulators that got no element hold +0 and leave the tree's sums unchanged: skipped.
template <int kM>  // rows of kM <= 16 elements: one square per accumulator, the tree unrolled
inline double row_sq_sum_n(const float* v) {
  double t[kM];
  for (int q = 0; q < kM; ++q) t[q] = double(v[q]) * double(v[q]);
  int m = kM;
  for (int w = 8; w >= 1; w /= 2) {
    for (int q = 0; q < w && q + w < m; ++q) t[q] += t[q + w];
    if (m > w) m = w;
  }
  return t[0];
}

inline double row_sq_sum_long(const float* v, int64_t numel) {  // numel > 16
  double t[16];
  for (int q = 0; q < 16; ++q) t[q] = 0.0;
  int64_t j = 0;
  for (; j + 16 <= numel; j += 16)
    for (int q = 0; q < 16; ++q) t[q] += double(v[j + q]) * double(v[j + q]);
  for (int q = 0; j + q < numel; ++q) t[q] += double(v[j + q]) * double(v[j + q]);
  for (int w = 8; w >= 1; w /= 2)
    for (int q = 0; q < w; ++q) t[q] += t[q + w];
  return t[0];
}

using RowSqSum = double (*)(const float*);
inline RowSqSum row_sq_sum_fn(int64_t numel) {
  static constexpr RowSqSum kFns[17] = {
      nullptr,             &row_sq_sum_n<1>,  &row_sq_sum_n<2>,  &row_sq_sum_n<3>,  &row_sq_sum_n<4>,
      &row_sq_sum_n<5>,    &row_sq_sum_n<6>,  &row_sq_sum_n<7>,  &row_sq_sum_n<8>,  &row_sq_sum_n<9>,
      &row_sq_sum_n<10>,   &row_sq_sum_n<11>, &row_sq_sum_n<12>, &row_sq_sum_n<13>, &row_sq_sum_n<14>,
      &row_sq_sum_n<15>,   &row_sq_sum_n<16>};
  return numel <= 16 ? kFns[numel] : nullptr;
}

// Both sums of rows i < nrows: s rows at stride numel, z rows at stride zstride.
template <int kM>
inline void rows_sq_sums_n(const float* sb, const float* zb, int64_t zstride, int64_t nrows, double* out) {
  for (int64_t i = 0; i < nrows; ++i) {
    out[2 * i] = row_sq_sum_n<kM>(sb + i * kM);
    out[2 * i + 1] = row_sq_sum_n<kM>(zb + i * zstride);
  }
}

inline void rows_sq_sums(const float* sb, const float* zb, int64_t numel, int64_t zstride, int64_t nrows,
                         double* out) {
  switch (numel) {  // the common tiny widths get their own loop (everything inlined); the rest through a table
    case 1: rows_sq_sums_n<1>(sb, zb, zstride, nrows, out); return;
    case 2: rows_sq_sums_n<2>(sb, zb, zstride, nrows, out); return;
    case 3: rows_sq_sums_n<3>(sb, zb, zstride, nrows, out); return;
    case 4: rows_sq_sums_n<4>(sb, zb, zstride, nrows, out); return;
    default: break;
  }
  const RowSqSum fn = row_sq_sum_fn(numel);
  for (int64_t i = 0; i < nrows; ++i) {
    out[2 * i] = fn ? fn(sb + i * numel) : row_sq_sum_long(sb + i * numel, numel);
    out[2 * i + 1] = fn ? fn(zb + i * zstride) : row_sq_sum_long(zb + i * zstride, numel);
  }
}

template <Dtype D, Dtype DS>
void sq_norms_flat_f32(const SqNormsArgs& A, int64_t r0, int64_t r1, double* out) {
  using T = typename Io<D>::T;
  using TS = typename Io<DS>::T;
  const int64_t M = A.numel, bpr = (M + 3) / 4, tile_rows = flat_tile_rows(M);
  alignas(64) float sb[kFlatTile + kLanes], zb[kFlatTile + G];
  const TS* s = static_cast<const TS*>(A.score);
  const T* noise = static_cast<const T*>(A.noise);
  for (int64_t r = r0; r < r1; r += tile_rows) {
    const int64_t nrows = r1 - r < tile_rows ? r1 - r : tile_rows, E = nrows * M;
    to_f32<DS>(sb, s + r * M, E);
    int64_t zstride = M;
    if (noise) {
      to_f32<D>(zb, noise + r * M, E);
    } else {
      flat_normals(zb, A.sample_ids, r, nrows, M, A.seed, A.draw);
      zstride = 4 * bpr;
    }
    rows_sq_sums(sb, zb, M, zstride, nrows, out + 2 * r);
  }
}

// out: (batch, 2) float64, rows [r0, r1) written.
void sq_norms_flat(const SqNormsArgs& A, int64_t r0, int64_t r1, double* out) {
  with_step_dtypes(A.dtype, A.score_dtype, [&](auto d, auto ds) {
    constexpr Dtype D = decltype(d)::value, DS = decltype(ds)::value;
    if constexpr (D == Dtype::kFloat64) {
      for (int64_t r = r0; r < r1; ++r) sq_norms_range_f64<F64Score<DS>>(A, r, 0, A.numel, out + 2 * r);
    } else {
      sq_norms_flat_f32<D, DS>(A, r0, r1, out);
    }
  });
}

// FSN1 float32 normals of rows [r0, r1) of a (batch, numel) output, numel short.
void fsn1_flat_f32(float* out, int64_t numel, uint64_t seed, const int64_t* ids, uint64_t draw, int64_t r0,
                   int64_t r1) {
  const int64_t bpr = (numel + 3) / 4, tile_rows = flat_tile_rows(numel);
  alignas(64) float zb[kFlatTile + G];
  for (int64_t r = r0; r < r1; r += tile_rows) {
    const int64_t nrows = r1 - r < tile_rows ? r1 - r : tile_rows;
    flat_normals(zb, ids, r, nrows, numel, seed, draw);
    float* o = out + r * numel;
    if (numel == 4 * bpr) {
      __builtin_memcpy(o, zb, size_t(nrows * numel) * sizeof(float));
    } else {
      // Whole vectors while they end inside the tile (each row's spill is overwritten by the rows after it), then
      // exact copies: nothing past the tile's rows is touched (other threads may own them).
      const int64_t span = (numel + kLanes - 1) / kLanes * kLanes, E = nrows * numel;
      int64_t i = 0;
      for (; i < nrows && i * numel + span <= E; ++i)
        for (int64_t j = 0; j < numel; j += kLanes) store(o + i * numel + j, load(zb + i * 4 * bpr + j));
      for (; i < nrows; ++i)
        for (int64_t j = 0; j < numel; ++j) o[i * numel + j] = zb[i * 4 * bpr + j];
    }
  }
}

const SimdKernels kKernels{&affine_range, &sq_norms_range, &fsn1_fill_f32, &fsn1_bits_range,
                           &affine_flat,  &sq_norms_flat,  &fsn1_flat_f32};
