// Argument checks of the GroupNorm op family (csrc/api/groupnorm.cpp, groupnorm_backward.cpp).
#pragma once

#include <vector>

#include "api/common.h"

namespace fastsde {
namespace api {

// The checks group_norm and group_norm_backward share (no data access: Meta-safe); messages start with `op`.
inline void check_group_norm_args(const char* op, const at::Tensor& x, int64_t num_groups,
                                  const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                  const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                                  const c10::optional<at::Tensor>& emb_add, int64_t act) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must be (N, C, *spatial), got shape ", x.sizes());
  TORCH_CHECK(is_float_dtype(x.scalar_type()), op, ": x must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups >= 1 && C % num_groups == 0, op, ": num_groups must divide the channels (", C,
              "), got ", num_groups);
  TORCH_CHECK(act == 0 || act == 1, op, ": act must be 0 (none) or 1 (silu), got ", act);
  auto check_vec = [&](const char* name, const c10::optional<at::Tensor>& v, std::vector<int64_t> shape) {
    if (!v.has_value()) return;
    TORCH_CHECK(v->sizes() == at::IntArrayRef(shape) && at::isFloatingType(v->scalar_type()) &&
                    v->device() == x.device(),
                op, ": ", name, " must be a float tensor of shape ", at::IntArrayRef(shape), " on ",
                x.device(), ", got ", v->scalar_type(), " ", v->sizes(), " on ", v->device());
  };
  check_vec("weight", weight, {C});
  check_vec("bias", bias, {C});
  check_vec("scale", scale, {N, C});
  check_vec("shift", shift, {N, C});
  check_vec("emb_add", emb_add, {N, C});
}

}  // namespace api
}  // namespace fastsde
