// The CPU step / FSN1 kernels, scalar: one lane, a group is one Philox block. Runs on any CPU (baseline flags);
// the AVX2 / AVX-512 levels compute bit-identical results.
#include <math.h>
#include <stdint.h>

#include "cpu/step_cpu.h"
#include "fsn1.h"
#include "step.h"
#include "cpu/simd_scalar.h"

namespace fastsde {
namespace simd_scalar {
#include "cpu/step_kernels.h"
}  // namespace simd_scalar

const SimdKernels& simd_kernels_scalar() { return simd_scalar::kKernels; }

}  // namespace fastsde
