// AVX-512 lane types for the FSN1 / step templates: 16 float32 lanes (F) and 16 uint32 lanes (U), with the lane
// operations of csrc/fsn1.h (found by argument-dependent lookup) plus loads, stores and the 4 x 16 transpose.
// Include only in a translation unit compiled for AVX-512 (csrc/cpu/step_avx512.cpp), inside its own namespace
// scope so nothing here is shared with other ISAs.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#define FASTSDE_SIMD_INLINE inline __attribute__((always_inline))

namespace fastsde {
namespace simd_avx512 {

struct F {
  __m512 v;
  F() = default;
  FASTSDE_SIMD_INLINE F(__m512 x) : v(x) {}
  FASTSDE_SIMD_INLINE F(float c) : v(_mm512_set1_ps(c)) {}
};

struct U {
  __m512i v;
  U() = default;
  FASTSDE_SIMD_INLINE U(__m512i x) : v(x) {}
  FASTSDE_SIMD_INLINE U(uint32_t c) : v(_mm512_set1_epi32(int(c))) {}
};

constexpr int kLanes = 16;

FASTSDE_SIMD_INLINE F f_mul(F a, F b) { return _mm512_mul_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_add(F a, F b) { return _mm512_add_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_sub(F a, F b) { return _mm512_sub_ps(a.v, b.v); }
FASTSDE_SIMD_INLINE F f_fma(F a, F b, F c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
FASTSDE_SIMD_INLINE F f_sqrt(F a) { return _mm512_sqrt_ps(a.v); }
FASTSDE_SIMD_INLINE F i_to_f(U a) { return _mm512_cvtepi32_ps(a.v); }
FASTSDE_SIMD_INLINE U f_bits(F a) { return _mm512_castps_si512(a.v); }
FASTSDE_SIMD_INLINE F f_from_bits(U a) { return _mm512_castsi512_ps(a.v); }
FASTSDE_SIMD_INLINE F f_select(U cond, F a, F b) {
  return _mm512_mask_blend_ps(_mm512_test_epi32_mask(cond.v, cond.v), b.v, a.v);
}
FASTSDE_SIMD_INLINE U u_add(U a, U b) { return _mm512_add_epi32(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_sub(U a, U b) { return _mm512_sub_epi32(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_xor(U a, U b) { return _mm512_xor_si512(a.v, b.v); }
FASTSDE_SIMD_INLINE U u_and(U a, U b) { return _mm512_and_si512(a.v, b.v); }
template <int N>
FASTSDE_SIMD_INLINE U u_shr(U a) { return _mm512_srli_epi32(a.v, N); }
template <int N>
FASTSDE_SIMD_INLINE U u_shl(U a) { return _mm512_slli_epi32(a.v, N); }
template <int N>
FASTSDE_SIMD_INLINE U u_sra(U a) { return _mm512_srai_epi32(a.v, N); }
// (hi, lo) of a * m per 32-bit lane: _mm512_mul_epu32 multiplies the even lanes (low halves of 64-bit lanes);
// the odd lanes are shifted down first. hi of the even products and lo of the odd ones are then interleaved.
FASTSDE_SIMD_INLINE void u_mulhilo(U a, uint32_t m, U& hi, U& lo) {
  const __m512i mv = _mm512_set1_epi64(int64_t(m));
  const __m512i even = _mm512_mul_epu32(a.v, mv);                          // 64-bit products of lanes 0, 2, ..
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a.v, 32), mv);    // lanes 1, 3, ..
  // lo: even lo in the low half, odd lo in the high half; hi: even hi in the low half, odd hi in the high half.
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// 4 x 16 -> 64 transpose: z[k] lane i (element 4i + k of a 64-element group) -> out[r] lane t = element 16r + t.
FASTSDE_SIMD_INLINE void transpose4(const F z[4], F out[4]) {
  const __m512 t0 = _mm512_unpacklo_ps(z[0].v, z[1].v);  // per 128-bit lane L: z0[4L] z1[4L] z0[4L+1] z1[4L+1]
  const __m512 t1 = _mm512_unpackhi_ps(z[0].v, z[1].v);  //                     z0[4L+2] z1[4L+2] z0[4L+3] z1[4L+3]
  const __m512 t2 = _mm512_unpacklo_ps(z[2].v, z[3].v);
  const __m512 t3 = _mm512_unpackhi_ps(z[2].v, z[3].v);
  // u_k, 128-bit lane L: the four normals of block 4L + k.
  const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  // out_r, 128-bit lane k = u_k lane r: a 4 x 4 transpose of 128-bit lanes.
  const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));  // u0.L0 u0.L1 u1.L0 u1.L1
  const __m512 v1 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));  // u2.L0 u2.L1 u3.L0 u3.L1
  const __m512 v2 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512 v3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
  out[0] = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));
  out[1] = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
  out[2] = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0));
  out[3] = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1));
}

// Lane i = i (block offsets within a group).
FASTSDE_SIMD_INLINE U lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }

// Loads / stores of 16 consecutive values, converting to / from float32. Half and bfloat16 are raw uint16 bits;
// stores round to nearest even (bfloat16: NaN -> 0x7fc0, as c10::BFloat16).
FASTSDE_SIMD_INLINE F load(const float* p) { return _mm512_loadu_ps(p); }
FASTSDE_SIMD_INLINE F load_half(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
FASTSDE_SIMD_INLINE F load_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
FASTSDE_SIMD_INLINE void store(float* p, F a) { _mm512_storeu_ps(p, a.v); }
FASTSDE_SIMD_INLINE void store_half(uint16_t* p, F a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
FASTSDE_SIMD_INLINE void store_bf16(uint16_t* p, F a) {
  const __m512i b = _mm512_castps_si512(a.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
FASTSDE_SIMD_INLINE void store_u32(uint32_t* p, U a) { _mm512_storeu_si512(p, a.v); }
FASTSDE_SIMD_INLINE U load_u32(const uint32_t* p) { return _mm512_loadu_si512(p); }

// Sum of squares into 16 float64 accumulators: element t of the 16 -> acc[t] (the canonical order shared by
// every ISA, so norms are bit-identical across them). Squares of float32 values are exact in float64.
struct Acc16 {
  __m512d a0, a1;
};
FASTSDE_SIMD_INLINE void acc_zero(Acc16& acc) { acc.a0 = acc.a1 = _mm512_setzero_pd(); }
// slot: which 16-lane part of the 16 accumulators x covers (always 0 here: 16 lanes cover them all).
FASTSDE_SIMD_INLINE void acc_sq(Acc16& acc, F x, int slot) {
  (void)slot;
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x.v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1)));
  acc.a0 = _mm512_fmadd_pd(lo, lo, acc.a0);
  acc.a1 = _mm512_fmadd_pd(hi, hi, acc.a1);
}
FASTSDE_SIMD_INLINE void acc_store(const Acc16& acc, double out[16]) {
  _mm512_storeu_pd(out, acc.a0);
  _mm512_storeu_pd(out + 8, acc.a1);
}

}  // namespace simd_avx512
}  // namespace fastsde
