// The torch-free kernel arguments of the step ops from their tensors (csrc/step_args.h), shared by
// csrc/api/step.cpp (the op bindings). No checks here: the callers' check_*_args ran first.
#pragma once

#include "api/common.h"

namespace fastsde {
namespace api {

// ids: sample_ids made contiguous (kept alive by the caller).
inline AffineStepArgs make_affine_args(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score,
                                       const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c,
                                       const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& ids,
                                       int64_t draw, const c10::optional<at::Tensor>& x_mean,
                                       const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                                       const c10::optional<at::Tensor>& data_a,
                                       const c10::optional<at::Tensor>& data_c, int64_t data_draw) {
  AffineStepArgs args;
  args.dtype = to_dtype(x.scalar_type());
  args.score_dtype = to_dtype(score.scalar_type());
  args.batch = x.size(0);
  args.numel = x.size(0) ? x.numel() / x.size(0) : 0;
  args.out = out.data_ptr();
  args.x = x.data_ptr();
  args.score = score.data_ptr();
  args.noise = c ? opt_data(noise) : nullptr;
  args.x_mean = x_mean ? x_mean->data_ptr() : nullptr;
  args.mask = opt_data(mask);
  args.data = opt_data(data);
  args.a = a.data_ptr<double>();
  args.b = b.data_ptr<double>();
  args.c = opt_ptr(c);
  args.data_a = mask ? opt_ptr(data_a) : nullptr;
  args.data_c = mask ? opt_ptr(data_c) : nullptr;
  args.a_len = a.size(0);
  args.b_len = b.size(0);
  args.c_len = opt_len(c);
  args.data_a_len = mask ? opt_len(data_a) : 0;
  args.data_c_len = mask ? opt_len(data_c) : 0;
  args.seed = as_u64(seed);
  args.draw = as_u64(draw);
  args.data_draw = as_u64(data_draw);
  args.sample_ids = ids.data_ptr<int64_t>();
  return args;
}

// ids: sample_ids made contiguous (kept alive by the caller).
inline SqNormsArgs make_sq_norms_args(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
                                      const at::Tensor& ids, int64_t draw) {
  SqNormsArgs args;
  args.dtype = to_dtype((noise ? *noise : score).scalar_type());  // the state's dtype: the explicit noise's
  args.score_dtype = to_dtype(score.scalar_type());
  args.batch = score.size(0);
  args.numel = score.size(0) ? score.numel() / score.size(0) : 0;
  args.score = score.data_ptr();
  args.noise = opt_data(noise);
  args.seed = as_u64(seed);
  args.draw = as_u64(draw);
  args.sample_ids = ids.data_ptr<int64_t>();
  return args;
}

}  // namespace api
}  // namespace fastsde
