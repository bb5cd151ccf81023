// The CPU GroupNorm kernels for AVX-512 (F/DQ/BW/VL): 16 float32 lanes. Selected at run time
// (csrc/cpu/groupnorm.cpp) on CPUs that have it; everything after the target pragma, the always_inline math of
// csrc/groupnorm.h included, is compiled for this ISA inside namespace fastsde::simd_avx512.
#include <immintrin.h>
#include <math.h>

#include <cmath>
#include <stdint.h>

#include <vector>

#include "cpu/groupnorm_cpu.h"

#pragma GCC push_options
// GCC 12 reports the deliberately undefined source operands inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")

#include "groupnorm.h"
#include "cpu/simd_avx512.h"

namespace fastsde {
namespace simd_avx512 {
// a / b from the reciprocal estimate and one Newton step (~1 ulp, within the tolerance of every test; the
// division's latency made the SiLU the bottleneck). Body and tails run this same code, so rows stay consistent.
FASTSDE_SIMD_INLINE F gn_div(F a, F b) {
  const __m512 r = _mm512_rcp14_ps(b.v);
  return _mm512_mul_ps(a.v, _mm512_mul_ps(r, _mm512_fnmadd_ps(b.v, r, _mm512_set1_ps(2.0f))));
}
FASTSDE_SIMD_INLINE F gn_min(F a, F b) { return _mm512_min_ps(b.v, a.v); }  // b < a ? b : a, as the scalar one
FASTSDE_SIMD_INLINE F gn_max(F a, F b) { return _mm512_max_ps(b.v, a.v); }
#include "cpu/groupnorm_kernels.h"
#include "cpu/groupnorm_backward_kernels.h"
}  // namespace simd_avx512

const GroupNormKernels& group_norm_kernels_avx512() { return simd_avx512::kGroupNormKernels; }
const GroupNormBwdKernels& group_norm_bwd_kernels_avx512() { return simd_avx512::kGroupNormBwdKernels; }

}  // namespace fastsde

#pragma GCC diagnostic pop
#pragma GCC pop_options
