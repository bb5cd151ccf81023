// torch.library registration of the GroupNorm backward (math: csrc/groupnorm.h, "Backward"; kernels:
// csrc/cpu/groupnorm_backward*.{h,cpp}, csrc/cuda/groupnorm_backward.cu). fastsde/ops/groupnorm.py registers it as
// the autograd formula of fastsde::group_norm with torch.library.register_autograd.
//
//   group_norm_backward(dy, x, num_groups, weight?, bias?, eps, scale?, shift?, emb_add?, act) -> (dx, sums)
//
// dx is laid out like x (NCHW or channels-last) in x's dtype; sums is (3, N, C) float64: per (n, c) sum_p du,
// sum_p du xhat and sum_p dx, which the Python side turns into the vectors' gradients (a few (N, C) ops).
#include <torch/extension.h>

#include <vector>

#include "api/groupnorm_checks.h"
#include "cpu/groupnorm_cpu.h"

#ifdef FASTSDE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/groupnorm_cuda.h"
#endif

namespace fastsde {
namespace {

using OptTensor = c10::optional<at::Tensor>;

bool channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Meta-safe checks (no data access): group_norm's own, then dy against x.
void check_args(const at::Tensor& dy, const at::Tensor& x, int64_t num_groups, const OptTensor& weight,
                const OptTensor& bias, const OptTensor& scale, const OptTensor& shift, const OptTensor& emb_add,
                int64_t act) {
  api::check_group_norm_args("group_norm_backward", x, num_groups, weight, bias, scale, shift, emb_add, act);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() && dy.device() == x.device(),
              "group_norm_backward: dy must match x (", x.sizes(), " ", x.scalar_type(), " on ", x.device(), "), got ",
              dy.sizes(), " ", dy.scalar_type(), " on ", dy.device());
}

at::MemoryFormat layout(const at::Tensor& x) {
  return channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

std::tuple<at::Tensor, at::Tensor> group_norm_backward_meta(const at::Tensor& dy, const at::Tensor& x,
                                                            int64_t num_groups, const OptTensor& weight,
                                                            const OptTensor& bias, double eps, const OptTensor& scale,
                                                            const OptTensor& shift, const OptTensor& emb_add,
                                                            int64_t act) {
  (void)eps;
  check_args(dy, x, num_groups, weight, bias, scale, shift, emb_add, act);
  return {at::empty(x.sizes(), x.options().memory_format(layout(x))),
          at::empty({3, x.size(0), x.size(1)}, x.options().dtype(at::kDouble))};
}

// Checks, lays out x and dy (x's layout: NCHW- or channels-last-contiguous), converts the vectors to the compute
// type (kept alive in `keep`) and fills the kernel arguments. Returns (dx, sums).
std::tuple<at::Tensor, at::Tensor> prepare(const at::Tensor& dy_in, const at::Tensor& x_in, int64_t num_groups,
                                           const OptTensor& weight, const OptTensor& bias, double eps,
                                           const OptTensor& scale, const OptTensor& shift, const OptTensor& emb_add,
                                           int64_t act, std::vector<at::Tensor>& keep, GroupNormBwdArgs& B) {
  check_args(dy_in, x_in, num_groups, weight, bias, scale, shift, emb_add, act);
  const at::MemoryFormat fmt = layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt), dy = dy_in.contiguous(fmt);
  keep.push_back(x);
  keep.push_back(dy);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor sums = at::zeros({3, x.size(0), x.size(1)}, x.options().dtype(at::kDouble));
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto vec = [&](const OptTensor& v) -> const void* {
    if (!v.has_value()) return nullptr;
    keep.push_back(v->to(compute).contiguous());
    return keep.back().data_ptr();
  };
  GroupNormArgs& A = B.fwd;
  switch (x.scalar_type()) {
    case at::kDouble: A.dtype = Dtype::kFloat64; break;
    case at::kHalf: A.dtype = Dtype::kFloat16; break;
    case at::kBFloat16: A.dtype = Dtype::kBFloat16; break;
    default: A.dtype = Dtype::kFloat32; break;
  }
  A.N = x.size(0);
  A.C = x.size(1);
  A.HW = A.C && A.N ? x.numel() / (A.N * A.C) : 0;
  A.groups = num_groups;
  A.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  A.x = x.data_ptr();
  A.y = nullptr;
  A.weight = vec(weight);
  A.bias = vec(bias);
  A.scale = vec(scale);
  A.shift = vec(shift);
  A.emb_add = vec(emb_add);
  A.eps = eps;
  A.act = int(act);
  B.dy = dy.data_ptr();
  B.dx = dx.data_ptr();
  B.sums = sums.data_ptr<double>();
  return {dx, sums};
}

std::tuple<at::Tensor, at::Tensor> group_norm_backward_cpu_op(const at::Tensor& dy, const at::Tensor& x,
                                                              int64_t num_groups, const OptTensor& weight,
                                                              const OptTensor& bias, double eps,
                                                              const OptTensor& scale, const OptTensor& shift,
                                                              const OptTensor& emb_add, int64_t act) {
  TORCH_CHECK(x.device().is_cpu(), "group_norm_backward: x must be a CPU tensor here, got ", x.device());
  std::vector<at::Tensor> keep;
  GroupNormBwdArgs B;
  auto out = prepare(dy, x, num_groups, weight, bias, eps, scale, shift, emb_add, act, keep, B);
  if (x.numel() > 0) group_norm_backward_cpu(B);
  return out;
}

#ifdef FASTSDE_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> group_norm_backward_cuda_op(const at::Tensor& dy, const at::Tensor& x,
                                                               int64_t num_groups, const OptTensor& weight,
                                                               const OptTensor& bias, double eps,
                                                               const OptTensor& scale, const OptTensor& shift,
                                                               const OptTensor& emb_add, int64_t act) {
  TORCH_CHECK(x.is_cuda(), "group_norm_backward: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<at::Tensor> keep;
  GroupNormBwdArgs B;
  auto out = prepare(dy, x, num_groups, weight, bias, eps, scale, shift, emb_add, act, keep, B);
  if (x.numel() > 0) C10_CUDA_CHECK(group_norm_backward_cuda(B, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}
#endif

}  // namespace
}  // namespace fastsde

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  m.def(
      "group_norm_backward(Tensor dy, Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, "
      "Tensor? scale, Tensor? shift, Tensor? emb_add, int act) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastsde, CPU, m) { m.impl("group_norm_backward", &fastsde::group_norm_backward_cpu_op); }

TORCH_LIBRARY_IMPL(fastsde, Meta, m) { m.impl("group_norm_backward", &fastsde::group_norm_backward_meta); }

#ifdef FASTSDE_WITH_CUDA
TORCH_LIBRARY_IMPL(fastsde, CUDA, m) { m.impl("group_norm_backward", &fastsde::group_norm_backward_cuda_op); }
#endif
