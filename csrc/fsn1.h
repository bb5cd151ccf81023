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
// one sin/cos pair per two normals -- compute-bound on the CPU, so the CPU path will want a SIMD twin of
// fsn1_normals4 (a lanes-wide struct beside this scalar one, same names with a _simd suffix).
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
#define FASTSDE_INLINE inline
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

// Overloads that pick the float or double libm function on host and device alike.
FASTSDE_HD FASTSDE_INLINE float log_(float x) { return logf(x); }
FASTSDE_HD FASTSDE_INLINE double log_(double x) { return log(x); }
FASTSDE_HD FASTSDE_INLINE float sqrt_(float x) { return sqrtf(x); }
FASTSDE_HD FASTSDE_INLINE double sqrt_(double x) { return sqrt(x); }
FASTSDE_HD FASTSDE_INLINE float sin_(float x) { return sinf(x); }
FASTSDE_HD FASTSDE_INLINE double sin_(double x) { return sin(x); }
FASTSDE_HD FASTSDE_INLINE float cos_(float x) { return cosf(x); }
FASTSDE_HD FASTSDE_INLINE double cos_(double x) { return cos(x); }

}  // namespace detail

// Philox4x32 with 10 rounds: the Random123 block function.
FASTSDE_HD FASTSDE_INLINE Words4 philox4x32_10(Words4 ctr, Key2 key) {
  uint32_t c0 = ctr.w[0], c1 = ctr.w[1], c2 = ctr.w[2], c3 = ctr.w[3];
  uint32_t k0 = key.k[0], k1 = key.k[1];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    detail::mulhilo32(kPhiloxM0, c0, hi0, lo0);
    detail::mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
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

// Box-Muller on one (u word, v word) pair: z0 = r cos(2 pi v), z1 = r sin(2 pi v), r = sqrt(-2 ln u).
//
// 2 pi v is not formed directly: in float32 its rounding error (up to ~4e-7 rad) times r (up to 5.8) would
// cost ~2e-6 absolute. v = k 2^-24 exactly, so 4v = q + f with q = round(4v) the quadrant and
// f = (k - q 2^22) 2^-22 in [-1/2, 1/2] both exact; theta = (pi/2) f lies in [-pi/4, pi/4] with one
// rounding, and (cos, sin)(q pi/2 + theta) is a signed swap of (cos, sin)(theta).
template <typename T>
FASTSDE_HD FASTSDE_INLINE void fsn1_box_muller(uint32_t wu, uint32_t wv, T& z0, T& z1) {
  const T u = fsn1_uniform_u<T>(wu);
  const T r = detail::sqrt_(T(-2) * detail::log_(u));
  const uint32_t k = wv >> 8;                                       // v = k 2^-24, k < 2^24
  const uint32_t q = (k + (1u << 21)) >> 22;                        // round(4v) in 0..4
  const int32_t f = int32_t(k) - int32_t(q << 22);                  // in [-2^21, 2^21]
  const T theta = T(f) * T(3.7450702829239286e-07);                 // pi / 2^23: f 2^-22 pi/2
  const T s = detail::sin_(theta);
  const T c = detail::cos_(theta);
  T cv, sv;
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
  fsn1_box_muller<T>(words.w[0], words.w[1], out.z[0], out.z[1]);
  fsn1_box_muller<T>(words.w[2], words.w[3], out.z[2], out.z[3]);
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
