// The CPU step / FSN1 kernels for AVX2 + FMA + F16C: 8 lanes, 32 elements per group. Selected at run time (csrc/cpu/step.cpp) on CPUs that have it.
//
// Everything after the target pragma -- including csrc/fsn1.h and csrc/step.h, whose functions are always_inline
// -- is compiled for this ISA, and all of it lives in namespace fastsde::simd_avx2, so no out-of-line function
// compiled with these instructions can be picked by the linker for the scalar path.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "cpu/step_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "fsn1.h"
#include "step.h"
#include "cpu/simd_avx2.h"

namespace fastsde {
namespace simd_avx2 {
#include "cpu/step_kernels.h"
}  // namespace simd_avx2

const SimdKernels& simd_kernels_avx2() { return simd_avx2::kKernels; }

}  // namespace fastsde

#pragma GCC pop_options
