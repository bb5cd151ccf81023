// FSN1: the counter-based Gaussian noise stream, per-element math written once for C++ and CUDA.
//
// A normal is a pure function of (seed, sample id n, draw id d, element index j within the sample):
//
//   words = Philox4x32-10(counter = (j >> 2, n, d & 0xffffffff, d >> 32),
//                         key     = (seed & 0xffffffff, seed >> 32))
//   u = ((w0 >> 8) + 1) * 2^-24 in (0, 1],  v = (w1 >> 8) * 2^-24 in [0, 1)
//   r = sqrt(-2 ln u);  z0 = r cos(2 pi v),  z1 = r sin(2 pi v);  (w2, w3) -> z2, z3 likewise
//   element j takes z_(j & 3)
//
// The specification (the oracle every backend is tested against) is fastsde/random.py; known answers are in
// tests/data/fsn1_vectors.json. Philox4x32-10 is from Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3" (SC'11). One Philox call yields four normals: about 20 integer multiplies + one log, one sqrt and
// one sin/cos pair per two normals -- compute-bound on the CPU. The float32 math is therefore written once as
// templates over lane types (philox4x32_10_lanes, box_muller_f32) with our own branch-free log/sin/cos
// polynomials, so the scalar, AVX2 (8 lanes), AVX-512 (16 lanes) and CUDA paths give bit-identical normals.
//
// This header is torch-free and libc++-light so nvcc compiles it as device code.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FASTSDE_HD __host__ __device__
#define FASTSDE_INLINE __forceinline__
#else
#define FASTSDE_HD
// always_inline: these functions are compiled into ISA-specific translation units (csrc/cpu/step_avx*.cpp), so an
// out-of-line copy must never be shared (and picked by the linker) across them.
#define FASTSDE_INLINE inline __attribute__((always_inline))
#endif

namespace fastsde {
namespace fsn1 {

// Four 32-bit words: a Philox counter or its output.
struct Words4 {
  uint32_t w[4];
};

// A Philox key: two 32-bit words.
struct Key2 {
  uint32_t k[2];
};

// Four normals z_0..z_3 of one Philox call, in the output precision T (float or double).
template <typename T>
struct Normals4 {
  T z[4];
};

using Float4 = Normals4<float>;
using Double4 = Normals4<double>;

// Philox4x32 constants (Random123): round multipliers and the Weyl key increments.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Elements per sample the stream addresses: counter word 0 holds j >> 2 in 32 bits.
constexpr int64_t kMaxElements = int64_t(1) << 34;

namespace detail {

// 32 x 32 -> 64-bit product split into (hi, lo).
FASTSDE_HD FASTSDE_INLINE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
#endif
}

// float64 path: libm (the reference's precision; not vectorized, used for float64 outputs only).
FASTSDE_HD FASTSDE_INLINE double log_(double x) { return log(x); }
FASTSDE_HD FASTSDE_INLINE double sqrt_(double x) { return sqrt(x); }
FASTSDE_HD FASTSDE_INLINE double sin_(double x) { return sin(x); }
FASTSDE_HD FASTSDE_INLINE double cos_(double x) { return cos(x); }

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------
// Lane operations. The float32 math below (Philox, Box-Muller with our own log/sin/cos polynomials) is written
// once as templates over a float lane type F and a uint32 lane type U. These overloads make F = float,
// U = uint32_t (the scalar path: C++ and CUDA); csrc/cpu/simd_avx2.h and simd_avx512.h define the same names
// for 8- and 16-lane wrapper types, found by argument-dependent lookup. Every float operation is one IEEE
// operation (mul, add, sub, fma, sqrt: correctly rounded everywhere), with each fma explicit, so every backend
// computes bit-identical float32 normals; the CPU code is compiled with -ffp-contract=off and nvcc cannot contract
// because no product feeds an addition outside an explicit fmaf.
FASTSDE_HD FASTSDE_INLINE float f_mul(float a, float b) { return a * b; }
FASTSDE_HD FASTSDE_INLINE float f_sub(float a, float b) { return a - b; }
FASTSDE_HD FASTSDE_INLINE float f_fma(float a, float b, float c) { return fmaf(a, b, c); }
FASTSDE_HD FASTSDE_INLINE float f_sqrt(float a) { return sqrtf(a); }
// Signed int32 lanes -> float (exact for the |values| <= 2^24 used here).
FASTSDE_HD FASTSDE_INLINE float i_to_f(uint32_t a) { return float(int32_t(a)); }
FASTSDE_HD FASTSDE_INLINE uint32_t f_bits(float a) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(a);
#else
  uint32_t u;
  __builtin_memcpy(&u, &a, 4);
  return u;
#endif
}
FASTSDE_HD FASTSDE_INLINE float f_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float a;
  __builtin_memcpy(&a, &u, 4);
  return a;
#endif
}
// cond != 0 ? a : b, lane-wise.
FASTSDE_HD FASTSDE_INLINE float f_select(uint32_t cond, float a, float b) { return cond ? a : b; }
FASTSDE_HD FASTSDE_INLINE uint32_t u_add(uint32_t a, uint32_t b) { return a + b; }
FASTSDE_HD FASTSDE_INLINE uint32_t u_sub(uint32_t a, uint32_t b) { return a - b; }
FASTSDE_HD FASTSDE_INLINE uint32_t u_xor(uint32_t a, uint32_t b) { return a ^ b; }
FASTSDE_HD FASTSDE_INLINE uint32_t u_and(uint32_t a, uint32_t b) { return a & b; }
template <int N>
FASTSDE_HD FASTSDE_INLINE uint32_t u_shr(uint32_t a) { return a >> N; }
template <int N>
FASTSDE_HD FASTSDE_INLINE uint32_t u_shl(uint32_t a) { return a << N; }
template <int N>  // arithmetic (sign-propagating) shift of the int32 in the lane
FASTSDE_HD FASTSDE_INLINE uint32_t u_sra(uint32_t a) { return uint32_t(int32_t(a) >> N); }
// (hi, lo) of the 64-bit product a * m, lane-wise.
FASTSDE_HD FASTSDE_INLINE void u_mulhilo(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) {
  detail::mulhilo32(m, a, hi, lo);
}

// Philox4x32 with 10 rounds on lanes of counters (c0..c3, in place), one key for all lanes.
template <typename U>
FASTSDE_HD FASTSDE_INLINE void philox4x32_10_lanes(U& c0, U& c1, U& c2, U& c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    U hi0, lo0, hi1, lo1;
    u_mulhilo(c0, kPhiloxM0, hi0, lo0);
    u_mulhilo(c2, kPhiloxM1, hi1, lo1);
    const U n0 = u_xor(u_xor(hi1, c1), U(k0));
    const U n2 = u_xor(u_xor(hi0, c3), U(k1));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// Philox4x32 with 10 rounds: the Random123 block function.
FASTSDE_HD FASTSDE_INLINE Words4 philox4x32_10(Words4 ctr, Key2 key) {
  uint32_t c0 = ctr.w[0], c1 = ctr.w[1], c2 = ctr.w[2], c3 = ctr.w[3];
  philox4x32_10_lanes<uint32_t>(c0, c1, c2, c3, key.k[0], key.k[1]);
  return Words4{{c0, c1, c2, c3}};
}

// The four Philox words of counter block `block` (= element >> 2) of sample `n`, draw `d`.
FASTSDE_HD FASTSDE_INLINE Words4 fsn1_block(uint64_t seed, uint32_t n, uint64_t d, uint32_t block) {
  const Key2 key{{uint32_t(seed), uint32_t(seed >> 32)}};
  const Words4 ctr{{block, n, uint32_t(d), uint32_t(d >> 32)}};
  return philox4x32_10(ctr, key);
}

// u = ((w >> 8) + 1) * 2^-24 in (0, 1]: exact in float and double (24 significant bits).
template <typename T = float>
FASTSDE_HD FASTSDE_INLINE T fsn1_uniform_u(uint32_t w) {
  return T((w >> 8) + 1u) * T(5.9604644775390625e-08);  // 2^-24
}

// v = (w >> 8) * 2^-24 in [0, 1): exact in float and double.
template <typename T = float>
FASTSDE_HD FASTSDE_INLINE T fsn1_uniform_v(uint32_t w) {
  return T(w >> 8) * T(5.9604644775390625e-08);  // 2^-24
}

// Polynomial coefficients, fitted (minimax in relative error, then rounded to float32) by tools/fit_polynomials.py;
// named scalars rather than arrays so that CUDA device code can use them.
// log1p(f) = f - f^2/2 + f^3 P(f) on f in [sqrt(1/2) - 1, sqrt(2) - 1]: relative error 3.1e-9 in exact arithmetic.
constexpr float kLogP0 = 3.333331347e-01f;
constexpr float kLogP1 = -2.500000894e-01f;
constexpr float kLogP2 = 2.000211775e-01f;
constexpr float kLogP3 = -1.666799337e-01f;
constexpr float kLogP4 = 1.421956867e-01f;
constexpr float kLogP5 = -1.240563393e-01f;
constexpr float kLogP6 = 1.188808158e-01f;
constexpr float kLogP7 = -1.167533845e-01f;
constexpr float kLogP8 = 6.746441126e-02f;
// sin(pi x / 4) = x S(x^2) on x in [-1, 1]: relative error 3.3e-8 (the float32 rounding of pi/4 dominates).
constexpr float kSinS0 = 7.853981853e-01f;
constexpr float kSinS1 = -8.074551076e-02f;
constexpr float kSinS2 = 2.490393119e-03f;
constexpr float kSinS3 = -3.657234993e-05f;
constexpr float kSinS4 = 3.089754728e-07f;
// cos(pi x / 4) = 1 + x^2 C(x^2) on x in [-1, 1]: relative error 1.1e-8.
constexpr float kCosC0 = -3.084251285e-01f;
constexpr float kCosC1 = 1.585432701e-02f;
constexpr float kCosC2 = -3.259400837e-04f;
constexpr float kCosC3 = 3.530347612e-06f;
// ln 2 = kLn2Hi + kLn2Lo (kLn2Hi = float32(ln 2)).
constexpr float kLn2Hi = 6.931471825e-01f;
constexpr float kLn2Lo = -1.904654212e-09f;

// Box-Muller on lanes of (u word, v word) pairs in float32: z0 = r cos(2 pi v), z1 = r sin(2 pi v),
// r = sqrt(-2 ln u). Branch-free; the same operation sequence for every lane type.
//
// ln u: u = m 2^e with m in [sqrt(1/2), sqrt(2)) (found from the bits: no libm), f = m - 1 exact (Sterbenz),
// ln u = e ln2 + log1p(f), log1p(f) = f + f^2 (f P(f) - 1/2). Near u -> 1, e = 0 and f = u - 1 exactly, so ln u
// keeps full relative accuracy when it is tiny.
//
// 2 pi v is never formed: v = k 2^-24 exactly, so 4v = q + x/2 with q = round(4v) the quadrant and
// x = (k - q 2^22) 2^-21 in [-1, 1] both exact; (cos, sin)(2 pi v) = (cos, sin)(q pi/2 + pi x/4), a signed swap
// of (cos, sin)(pi x/4), which the polynomials take in x directly (no rounded angle).
template <typename F, typename U>
FASTSDE_HD FASTSDE_INLINE void box_muller_f32(U wu, U wv, F& z0, F& z1) {
  const F u = f_mul(i_to_f(u_add(u_shr<8>(wu), U(1u))), F(5.9604644775390625e-08f));  // exact, (0, 1]
  const U ubits = f_bits(u);
  const U e = u_sra<23>(u_sub(ubits, U(0x3f3504f3u)));  // 0x3f3504f3 = float32(sqrt(1/2))
  const F f = f_sub(f_from_bits(u_sub(ubits, u_shl<23>(e))), F(1.0f));
  F p = F(kLogP8);
  p = f_fma(p, f, F(kLogP7));
  p = f_fma(p, f, F(kLogP6));
  p = f_fma(p, f, F(kLogP5));
  p = f_fma(p, f, F(kLogP4));
  p = f_fma(p, f, F(kLogP3));
  p = f_fma(p, f, F(kLogP2));
  p = f_fma(p, f, F(kLogP1));
  p = f_fma(p, f, F(kLogP0));
  const F log1p_f = f_fma(f_mul(f, f), f_fma(f, p, F(-0.5f)), f);
  const F fe = i_to_f(e);
  const F ln_u = f_fma(fe, F(kLn2Hi), f_fma(fe, F(kLn2Lo), log1p_f));
  const F r = f_sqrt(f_mul(F(-2.0f), ln_u));

  const U k = u_shr<8>(wv);
  const U q = u_shr<22>(u_add(k, U(1u << 21)));  // round(4v) in 0..4
  const F x = f_mul(i_to_f(u_sub(k, u_shl<22>(q))), F(4.76837158203125e-07f));  // 2^-21: exact, [-1, 1]
  const F x2 = f_mul(x, x);
  F s = F(kSinS4);
  s = f_fma(s, x2, F(kSinS3));
  s = f_fma(s, x2, F(kSinS2));
  s = f_fma(s, x2, F(kSinS1));
  s = f_fma(s, x2, F(kSinS0));
  s = f_mul(x, s);
  F c = F(kCosC3);
  c = f_fma(c, x2, F(kCosC2));
  c = f_fma(c, x2, F(kCosC1));
  c = f_fma(c, x2, F(kCosC0));
  c = f_fma(c, x2, F(1.0f));
  // Quadrant q: odd q swaps (cos, sin); cos flips sign for q in {1, 2}, sin for q in {2, 3} (q = 4 acts as 0).
  const U swap = u_and(q, U(1u));
  const F cv = f_select(swap, s, c);
  const F sv = f_select(swap, c, s);
  const U cos_sign = u_shl<30>(u_and(u_add(q, U(1u)), U(2u)));
  const U sin_sign = u_shl<30>(u_and(q, U(2u)));
  z0 = f_mul(r, f_from_bits(u_xor(f_bits(cv), cos_sign)));
  z1 = f_mul(r, f_from_bits(u_xor(f_bits(sv), sin_sign)));
}

// Box-Muller on one (u word, v word) pair: float32 through box_muller_f32, float64 through libm with the same
// exact quadrant reduction (theta = (pi/2) f 2^-22 with one rounding; float64 keeps ~1e-16 of it).
FASTSDE_HD FASTSDE_INLINE void fsn1_box_muller(uint32_t wu, uint32_t wv, float& z0, float& z1) {
  box_muller_f32<float, uint32_t>(wu, wv, z0, z1);
}

FASTSDE_HD FASTSDE_INLINE void fsn1_box_muller(uint32_t wu, uint32_t wv, double& z0, double& z1) {
  const double u = fsn1_uniform_u<double>(wu);
  const double r = detail::sqrt_(-2.0 * detail::log_(u));
  const uint32_t k = wv >> 8;                                       // v = k 2^-24, k < 2^24
  const uint32_t q = (k + (1u << 21)) >> 22;                        // round(4v) in 0..4
  const int32_t f = int32_t(k) - int32_t(q << 22);                  // in [-2^21, 2^21]
  const double theta = double(f) * 3.7450702829239286e-07;          // pi / 2^23: f 2^-22 pi/2
  const double s = detail::sin_(theta);
  const double c = detail::cos_(theta);
  double cv, sv;
  switch (q & 3u) {
    case 0: cv = c; sv = s; break;
    case 1: cv = -s; sv = c; break;
    case 2: cv = -c; sv = -s; break;
    default: cv = s; sv = -c; break;
  }
  z0 = r * cv;
  z1 = r * sv;
}

// The four normals of one Philox call, computed in T (float math for float, double math for double).
template <typename T>
FASTSDE_HD FASTSDE_INLINE Normals4<T> fsn1_normals4_t(Words4 words) {
  Normals4<T> out;
  fsn1_box_muller(words.w[0], words.w[1], out.z[0], out.z[1]);
  fsn1_box_muller(words.w[2], words.w[3], out.z[2], out.z[3]);
  return out;
}

// Four float32 normals of one Philox call (float32 math throughout).
FASTSDE_HD FASTSDE_INLINE Float4 fsn1_normals4(Words4 words) { return fsn1_normals4_t<float>(words); }

// Four float64 normals of one Philox call (the precision of the reference; used by tests and float64 outputs).
FASTSDE_HD FASTSDE_INLINE Double4 fsn1_normals4_f64(Words4 words) { return fsn1_normals4_t<double>(words); }

// The normal at one (seed, sample, draw, element) position, for tests and tails.
template <typename T = float>
FASTSDE_HD FASTSDE_INLINE T fsn1_normal_at(uint64_t seed, uint32_t n, uint64_t d, uint64_t element) {
  const Normals4<T> z = fsn1_normals4_t<T>(fsn1_block(seed, n, d, uint32_t(element >> 2)));
  return z.z[element & 3u];
}

}  // namespace fsn1
}  // namespace fastsde
