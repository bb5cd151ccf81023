// group_norm (csrc/groupnorm.h): y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift).
#include <vector>

#include "api/common.h"
#include "api/groupnorm_checks.h"
#include "cpu/groupnorm_cpu.h"

#ifdef FASTSDE_WITH_CUDA
#include "cuda/groupnorm_cuda.h"
#endif

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, Tensor? scale, Tensor? shift, "
      "Tensor? emb_add, int act) -> Tensor");
}

namespace fastsde {
namespace api {
namespace {

at::Tensor group_norm_op(const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                         const c10::optional<at::Tensor>& bias, double eps, const c10::optional<at::Tensor>& scale,
                         const c10::optional<at::Tensor>& shift, const c10::optional<at::Tensor>& emb_add,
                         int64_t act) {
  check_group_norm_args("group_norm", x_in, num_groups, weight, bias, scale, shift, emb_add, act);
  // The kernels take NCHW-contiguous x, or channels-last-contiguous 4-D x (y is laid out the same way).
  const bool cl = x_in.dim() == 4 && !x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto layout = x_in.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (checks_only(x_in)) return at::empty(x_in.sizes(), layout);
  const DeviceScope scope(x_in.device());
  const at::Tensor x = cl || x_in.is_contiguous() ? x_in : x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), layout);
  if (x.numel() == 0) return y;
  // the vectors in the compute type, kept alive until the kernel ran
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> keep;
  auto vec = [&](const c10::optional<at::Tensor>& v) -> const void* {
    if (!v.has_value()) return nullptr;
    keep.push_back(v->to(compute).contiguous());
    return keep.back().data_ptr();
  };
  GroupNormArgs args;
  args.dtype = to_dtype(x.scalar_type());
  args.N = x.size(0);
  args.C = x.size(1);
  args.HW = args.C && args.N ? x.numel() / (args.N * args.C) : 0;
  args.groups = num_groups;
  args.channels_last = cl;
  args.x = x.data_ptr();
  args.y = y.data_ptr();
  args.weight = vec(weight);
  args.bias = vec(bias);
  args.scale = vec(scale);
  args.shift = vec(shift);
  args.emb_add = vec(emb_add);
  args.eps = eps;
  args.act = int(act);
  FASTSDE_LAUNCH(x, group_norm_cpu(args), group_norm_cuda(args, current_stream()));
  return y;
}

}  // namespace
}  // namespace api
}  // namespace fastsde

FASTSDE_IMPL("group_norm", &fastsde::api::group_norm_op)
