// Scalar "lane types" for the FSN1 / step templates: one lane, F = float, U = uint32_t, using the scalar lane
// operations of csrc/fsn1.h. A group is one Philox block (4 elements). Runs on any x86-64 / other CPU. Software
// float16 / bfloat16 conversions, round to nearest even like the F16C / AVX-512 instructions and c10.
#pragma once

#include <stdint.h>

#include "fsn1.h"

#define FASTSDE_SIMD_INLINE inline __attribute__((always_inline))

namespace fastsde {
namespace simd_scalar {

using F = float;
using U = uint32_t;
using fsn1::f_bits;
using fsn1::f_fma;
using fsn1::f_from_bits;
using fsn1::f_mul;
using fsn1::f_sub;
using fsn1::u_add;

constexpr int kLanes = 1;

inline void transpose4(const F z[4], F out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = z[k];
}
inline U lane_index() { return 0u; }

inline F load(const float* p) { return *p; }
inline F load_half(const uint16_t* p) {
  const uint32_t h = *p;
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1fu) return f_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) return f_from_bits(sign | f_bits(float(mant) * 5.9604644775390625e-08f));  // zero / subnormal: m 2^-24
  return f_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}
inline F load_bf16(const uint16_t* p) { return f_from_bits(uint32_t(*p) << 16); }
inline void store(float* p, F a) { *p = a; }
inline void store_half(uint16_t* p, F a) {
  uint32_t f = f_bits(a);
  const uint32_t sign = (f >> 16) & 0x8000u;
  f &= 0x7fffffffu;
  uint32_t h;
  if (f >= 0x7f800000u) {
    h = f > 0x7f800000u ? 0x7e00u : 0x7c00u;  // nan (quiet) / inf
  } else if (f >= 0x477ff000u) {
    h = 0x7c00u;  // >= 65520 rounds to inf
  } else if (f < 0x38800000u) {
    // |a| < 2^-14: a subnormal half (or 0). Adding 0.5 rounds |a| to a multiple of 2^-24 (the float32 ulp at 0.5),
    // to nearest even; the low bits of the sum are then the half's bits.
    h = f_bits(f_from_bits(f) + 0.5f) - 0x3f000000u;
  } else {
    // Rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
    h = (f + 0xc8000fffu + ((f >> 13) & 1u)) >> 13;
  }
  *p = uint16_t(sign | h);
}
inline void store_bf16(uint16_t* p, F a) {
  const uint32_t b = f_bits(a);
  *p = a != a ? uint16_t(0x7fc0u) : uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
inline void store_u32(uint32_t* p, U a) { *p = a; }
inline U load_u32(const uint32_t* p) { return *p; }

// The 16 canonical float64 accumulators (see simd_avx512.h); slot = accumulator index. float32 squares are exact
// in float64, so a + x*x rounds once, exactly like the fma of the SIMD levels.
struct Acc16 {
  double a[16];
};
inline void acc_zero(Acc16& acc) {
  for (int i = 0; i < 16; ++i) acc.a[i] = 0.0;
}
inline void acc_sq(Acc16& acc, F x, int slot) { acc.a[slot] += double(x) * double(x); }
inline void acc_store(const Acc16& acc, double out[16]) {
  for (int i = 0; i < 16; ++i) out[i] = acc.a[i];
}

}  // namespace simd_scalar
}  // namespace fastsde
