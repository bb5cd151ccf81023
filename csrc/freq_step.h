// Per-frequency fused step of the heat family (fastsde.heat): the element math, written once for the CPU
// (csrc/cpu/freq_step.cpp) and CUDA (csrc/cuda/freq_step.cu).
//
//   out = a[k] x + b[k] s + c[k] z,   k = j mod period
//
// x, s, out (batch, numel) contiguous; j is the element index within a sample, so a coefficient vector of period
// H W broadcasts over the batch and the channels of (B, C, H, W) DCT coefficients. z = FSN1(seed, sample id, draw, j)
// (csrc/fsn1.h): white noise is white in every orthonormal basis, so it is drawn directly in the frequency domain.
// a, b, c are float64 on the host, rounded once to the compute type T (float32 for float32 state, float64 for
// float64); s (the model output) is T or bfloat16 beside float32. Products meeting a sum are explicit fmas.
//
// Bytes per element (float32, bf16 score): 4 + 2 read, 4 written (the coefficients stay in cache, the noise never
// touches memory); float32 score: 12 B.
#pragma once

#include "fsn1.h"
#include "step_args.h"  // Dtype

namespace fastsde {

struct FreqStepArgs {
  Dtype dtype = Dtype::kFloat32;        // x and out: kFloat32 or kFloat64
  Dtype score_dtype = Dtype::kFloat32;  // dtype, or kBFloat16 beside kFloat32
  int64_t batch = 0, numel = 0, period = 1;
  const void* x = nullptr;
  const void* score = nullptr;
  void* out = nullptr;
  const void* a = nullptr;  // (period,) in the compute type
  const void* b = nullptr;
  const void* c = nullptr;  // nullptr: no noise
  uint64_t seed = 0, draw = 0;
  const int64_t* sample_ids = nullptr;
  const int64_t* seed_bits = nullptr;  // null, or the seed's bits in memory read when the kernel runs (csrc/device_seed.h)
};

namespace freq_step {

FASTSDE_HD FASTSDE_INLINE float fused(float a, float b, float c) { return fmaf(a, b, c); }
FASTSDE_HD FASTSDE_INLINE double fused(double a, double b, double c) { return fma(a, b, c); }

// The score element in the compute type: as is, or bfloat16 bits widened exactly to float32.
template <typename T, typename S>
struct Score {
  static FASTSDE_HD FASTSDE_INLINE T ld(const S* p) { return T(*p); }
};
template <>
struct Score<float, uint16_t> {
  static FASTSDE_HD FASTSDE_INLINE float ld(const uint16_t* p) { return fsn1::f_from_bits(uint32_t(*p) << 16); }
};

// Elements [j0, j1) of one sample (j0 a multiple of 4: one Philox block serves four elements), k = j0 mod period.
template <typename T, typename S>
FASTSDE_HD FASTSDE_INLINE void rows_span(const FreqStepArgs& p, int64_t row, int64_t j0, int64_t j1) {
  const int64_t base = row * p.numel;
  const T* x = static_cast<const T*>(p.x) + base;
  const S* s = static_cast<const S*>(p.score) + base;
  T* out = static_cast<T*>(p.out) + base;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const T* c = static_cast<const T*>(p.c);
  const uint32_t sample = uint32_t(p.sample_ids[row]);
  int64_t k = j0 % p.period;
  for (int64_t j = j0; j < j1; j += 4) {
    fsn1::Normals4<T> z{};
    if (c) z = fsn1::fsn1_normals4_t<T>(fsn1::fsn1_block(p.seed, sample, p.draw, uint32_t(j >> 2)));
    const int64_t end = j + 4 < j1 ? j + 4 : j1;
    for (int64_t e = j; e < end; ++e) {
      T v = fused(a[k], x[e], b[k] * Score<T, S>::ld(s + e));
      if (c) v = fused(c[k], z.z[e - j], v);
      out[e] = v;
      if (++k == p.period) k = 0;
    }
  }
}

}  // namespace freq_step
}  // namespace fastsde
