// The CPU step / FSN1 kernels for AVX-512 (F/DQ/BW/VL): 16 lanes, 64 elements per group. Selected at run time (csrc/cpu/step.cpp) on CPUs that have it.
//
// Everything after the target pragma -- including csrc/fsn1.h and csrc/step.h, whose functions are always_inline
// -- is compiled for this ISA, and all of it lives in namespace fastsde::simd_avx512, so no out-of-line function
// compiled with these instructions can be picked by the linker for the scalar path.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "cpu/step_cpu.h"

#pragma GCC push_options
// GCC 12 reports the deliberately undefined source operands inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")

#include "fsn1.h"
#include "step.h"
#include "cpu/simd_avx512.h"

namespace fastsde {
namespace simd_avx512 {
#include "cpu/step_kernels.h"
}  // namespace simd_avx512

const SimdKernels& simd_kernels_avx512() { return simd_avx512::kKernels; }

}  // namespace fastsde

#pragma GCC diagnostic pop
#pragma GCC pop_options
