// The CPU GroupNorm kernels for any CPU: one float32 lane (csrc/cpu/simd_scalar.h), the scalar math of
// csrc/groupnorm.h.
#include <math.h>

#include <cmath>
#include <stdint.h>

#include <vector>

#include "cpu/groupnorm_cpu.h"
#include "groupnorm.h"
#include "cpu/simd_scalar.h"

namespace fastsde {
namespace simd_scalar {
using groupnorm::gn_div;
using groupnorm::gn_max;
using groupnorm::gn_min;
#include "cpu/groupnorm_kernels.h"
#include "cpu/groupnorm_backward_kernels.h"
}  // namespace simd_scalar

const GroupNormKernels& group_norm_kernels_scalar() { return simd_scalar::kGroupNormKernels; }
const GroupNormBwdKernels& group_norm_bwd_kernels_scalar() { return simd_scalar::kGroupNormBwdKernels; }

}  // namespace fastsde
