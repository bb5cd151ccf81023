// AVX2 + FMA + F16C lane types for the FSN1 / step templates: 8 float32 lanes (F) and 8 uint32 lanes (U), the
// twin of simd_avx512.h with the same names. Include only in csrc/cpu/step_avx2.cpp.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#define FASTSDE_SIMD_INLINE inline __attribute__((always_inline))

namespace fastsde {
namespace simd_avx2 {

struct F {
  __m256 v;
  F() = default;
  FASTSDE_SIMD_INLINE F(__m256 x) : v(x) {}
  FASTSDE_SIMD_INLINE F(float c) : v(_mm256_set1_ps(c)) {}
};

struct U {
  __m256i v;
  U() = default;
  FASTSDE_SIMD_INLINE U(__m256i x) : v(x) {}
  FASTSDE_SIMD_INLINE U(uint32_t c) : v(_mm256_set1_epi32(int(c))) {}
};

constexpr int kLanes = 8;

FASTSDE_SIMD_INLINE F f_mul(F a, F b) { return _mm256_mul_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_add(F a, F b) { return _mm256_add_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_sub(F a, F b) { return _mm256_sub_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_fma(F a, F b, F c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
FASTSDE_SIMD_INLINE F f_sqrt(F a) { return _mm256_sqrt_ps(a.v); }
FASTSDE_SIMD_INLINE F i_to_f(U a) { return _mm256_cvtepi32_ps(a.v); }
FASTSDE_SIMD_INLINE U f_bits(F a) { return _mm256_castps_si256(a.v); }
FASTSDE_SIMD_INLINE F f_from_bits(U a) { return _mm256_castsi256_ps(a.v); }
FASTSDE_SIMD_INLINE F f_select(U cond, F a, F b) {
  const __m256 zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(cond.v, _mm256_setzero_si256()));
  return _mm256_blendv_ps(a.v, b.v, zero);  // b where cond == 0
}
FASTSDE_SIMD_INLINE U u_add(U a, U b) { return _mm256_add_epi32(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_sub(U a, U b) { return _mm256_sub_epi32(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_xor(U a, U b) { return _mm256_xor_si256(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_and(U a, U b) { return _mm256_and_si256(a.v, b.v); }
template <int N>
FASTSDE_SIMD_INLINE U u_shr(U a) { return _mm256_srli_epi32(a.v, N); }
template <int N>
FASTSDE_SIMD_INLINE U u_shl(U a) { return _mm256_slli_epi32(a.v, N); }
template <int N>
FASTSDE_SIMD_INLINE U u_sra(U a) { return _mm256_srai_epi32(a.v, N); }
// (hi, lo) of a * m per 32-bit lane via _mm256_mul_epu32 on the even lanes and on the odd lanes shifted down.
FASTSDE_SIMD_INLINE void u_mulhilo(U a, uint32_t m, U& hi, U& lo) {
  const __m256i mv = _mm256_set1_epi64x(int64_t(m));
  const __m256i even = _mm256_mul_epu32(a.v, mv);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a.v, 32), mv);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// 4 x 8 -> 32 transpose: z[k] lane i (element 4i + k of a 32-element group) -> out[r] lane t = element 8r + t.
FASTSDE_SIMD_INLINE void transpose4(const F z[4], F out[4]) {
  const __m256 t0 = _mm256_unpacklo_ps(z[0].v, z[1].v);
  const __m256 t1 = _mm256_unpackhi_ps(z[0].v, z[1].v);
  const __m256 t2 = _mm256_unpacklo_ps(z[2].v, z[3].v);
  const __m256 t3 = _mm256_unpackhi_ps(z[2].v, z[3].v);
  // u_k, 128-bit lane L: the four normals of block 4L + k.
  const __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  const __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  out[0] = _mm256_permute2f128_ps(u0, u1, 0x20);  // blocks 0, 1
  out[1] = _mm256_permute2f128_ps(u2, u3, 0x20);  // blocks 2, 3
  out[2] = _mm256_permute2f128_ps(u0, u1, 0x31);  // blocks 4, 5
  out[3] = _mm256_permute2f128_ps(u2, u3, 0x31);  // blocks 6, 7
}

FASTSDE_SIMD_INLINE U lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

FASTSDE_SIMD_INLINE F load(const float* p) { return _mm256_loadu_ps(p); }
FASTSDE_SIMD_INLINE F load_half(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
FASTSDE_SIMD_INLINE F load_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
FASTSDE_SIMD_INLINE void store(float* p, F a) { _mm256_storeu_ps(p, a.v); }
FASTSDE_SIMD_INLINE void store_half(uint16_t* p, F a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
FASTSDE_SIMD_INLINE void store_bf16(uint16_t* p, F a) {
  const __m256i b = _mm256_castps_si256(a.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // Values fit in 16 bits: unsigned-saturating pack, then gather the two 64-bit halves holding v0..v7.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), _MM_SHUFFLE(3, 1, 2, 0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
FASTSDE_SIMD_INLINE void store_u32(uint32_t* p, U a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a.v); }
FASTSDE_SIMD_INLINE U load_u32(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Sum of squares into the 16 canonical float64 accumulators (see simd_avx512.h): slot 0 covers accumulators 0..7,
// slot 1 covers 8..15.
struct Acc16 {
  __m256d a[4];
};
FASTSDE_SIMD_INLINE void acc_zero(Acc16& acc) {
  for (int i = 0; i < 4; ++i) acc.a[i] = _mm256_setzero_pd();
}
FASTSDE_SIMD_INLINE void acc_sq(Acc16& acc, F x, int slot) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x.v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1));
  acc.a[2 * slot] = _mm256_fmadd_pd(lo, lo, acc.a[2 * slot]);
  acc.a[2 * slot + 1] = _mm256_fmadd_pd(hi, hi, acc.a[2 * slot + 1]);
}
FASTSDE_SIMD_INLINE void acc_store(const Acc16& acc, double out[16]) {
  for (int i = 0; i < 4; ++i) _mm256_storeu_pd(out + 4 * i, acc.a[i]);
}

}  // namespace simd_avx2
}  // namespace fastsde
