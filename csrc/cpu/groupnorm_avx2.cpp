// The CPU GroupNorm kernels for AVX2 + FMA + F16C: 8 float32 lanes. Selected at run time (csrc/cpu/groupnorm.cpp);
// compiled for this ISA inside namespace fastsde::simd_avx2 (see groupnorm_avx512.cpp).
#include <immintrin.h>
#include <math.h>

#include <cmath>
#include <stdint.h>

#include <vector>

#include "cpu/groupnorm_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "groupnorm.h"
#include "cpu/simd_avx2.h"

namespace fastsde {
namespace simd_avx2 {
// a / b from the reciprocal estimate and one Newton step (~1 ulp, within the tolerance of every test; the
// division's latency made the SiLU the bottleneck). Body and tails run this same code, so rows stay consistent.
FASTSDE_SIMD_INLINE F gn_div(F a, F b) {
  const __m256 r = _mm256_rcp_ps(b.v);
  return _mm256_mul_ps(a.v, _mm256_mul_ps(r, _mm256_fnmadd_ps(b.v, r, _mm256_set1_ps(2.0f))));
}
FASTSDE_SIMD_INLINE F gn_min(F a, F b) { return _mm256_min_ps(b.v, a.v); }  // b < a ? b : a, as the scalar one
FASTSDE_SIMD_INLINE F gn_max(F a, F b) { return _mm256_max_ps(b.v, a.v); }
#include "cpu/groupnorm_kernels.h"
#include "cpu/groupnorm_backward_kernels.h"
}  // namespace simd_avx2

const GroupNormKernels& group_norm_kernels_avx2() { return simd_avx2::kGroupNormKernels; }
const GroupNormBwdKernels& group_norm_bwd_kernels_avx2() { return simd_avx2::kGroupNormBwdKernels; }

}  // namespace fastsde

#pragma GCC pop_options
