// The fused sampler steps: affine_step_ (PC updates and the inpainting projection), step_sq_norms (the Langevin
// corrector's norms) and affine_combine_ (the few-step solvers' update over up to three model outputs). The math:
// csrc/step.h; the argument struct: csrc/step_args.h.
#include <string>

#include "step.h"

#include "api/common.h"
#include "api/step_fill.h"
#include "cpu/step_cpu.h"

#ifdef FASTSDE_WITH_CUDA
#include "cuda/step_cuda.h"
#endif

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  // out = a x + b score [+ c z] [projection]; x_mean = a x + b score [projection]. See csrc/step.h.
  m.def(
      "affine_step_(Tensor(a!) out, Tensor x, Tensor score, Tensor a, Tensor b, Tensor? c, Tensor? noise, int seed, "
      "Tensor sample_ids, int draw, Tensor(b!)? x_mean, Tensor? mask, Tensor? data, Tensor? data_a, Tensor? data_c, "
      "int data_draw) -> ()");
  // (B, 2) float64: per-sample sums of score^2 and z^2.
  m.def("step_sq_norms(Tensor score, Tensor? noise, int seed, Tensor sample_ids, int draw) -> Tensor");
  // out = a x + sum_k b[k] outputs[k] [+ c z] [projection], x_mean = the mean [projection]: every sampler update
  // of the executor (fastsde/executor.py), one pass over up to 3 outputs. seed_bits (0-d int64 on x's device), when
  // given, holds the seed, read when the kernel runs.
  m.def(
      "affine_combine_(Tensor(a!) out, Tensor x, Tensor[] outputs, Tensor a, Tensor[] b, Tensor? c, Tensor? noise, "
      "int seed, Tensor sample_ids, int draw, Tensor? seed_bits=None, Tensor(b!)? x_mean=None, Tensor? mask=None, "
      "Tensor? data=None, Tensor? data_a=None, Tensor? data_c=None, int data_draw=0) -> ()");
  // One Langevin corrector iteration in place (score_sde's batch-mean norms), its step size computed on the device:
  // pass 1 reduces ||score||, ||z|| per sample into scratch, eps = 2 alpha (snr ||z|| / ||score||)^2 -> scratch[0:3]
  // = [1, eps scale, sqrt(2 eps)], pass 2 = the affine update (+ projection) reading them. coefs (4,) float64 on x's
  // device: [alpha, scale, data_a, data_c]. Nothing is read on the host: a CUDA graph records it.
  m.def(
      "langevin_update_(Tensor(a!) x, Tensor(b!) x_mean, Tensor(c!) scratch, Tensor score, Tensor coefs, float snr, "
      "Tensor seed_bits, Tensor sample_ids, int draw, Tensor? noise=None, Tensor? mask=None, Tensor? data=None, "
      "int data_draw=0) -> ()");
}

namespace fastsde {
namespace api {
namespace {

void check_affine_step_args(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                            const at::Tensor& b, const c10::optional<at::Tensor>& c,
                            const c10::optional<at::Tensor>& noise, const at::Tensor& sample_ids,
                            const c10::optional<at::Tensor>& x_mean, const c10::optional<at::Tensor>& mask,
                            const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& data_a,
                            const c10::optional<at::Tensor>& data_c) {
  const char* op = "affine_step_";
  check_state(op, "x", x);
  check_like_x(op, "out", out, x);
  check_score(op, "score", score, x);
  check_coef(op, "a", a, x);
  check_coef(op, "b", b, x);
  if (c) check_coef(op, "c", *c, x);
  if (noise) check_like_x(op, "noise", *noise, x);
  if (x_mean) check_like_x(op, "x_mean", *x_mean, x);
  check_ids(op, sample_ids, x);
  TORCH_CHECK(mask.has_value() == data.has_value(), op, ": mask and data must be given together (got mask ",
              mask.has_value() ? "given" : "None", ", data ", data.has_value() ? "given" : "None", ")");
  if (mask) {
    check_like_x(op, "mask", *mask, x);
    check_like_x(op, "data", *data, x);
    TORCH_CHECK(data_a.has_value() && data_c.has_value(), op, ": the projection (mask, data) needs data_a and data_c");
    check_coef(op, "data_a", *data_a, x);
    check_coef(op, "data_c", *data_c, x);
  }
}

void affine_step_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                    const at::Tensor& b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                    int64_t seed, const at::Tensor& sample_ids, int64_t draw, const c10::optional<at::Tensor>& x_mean,
                    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                    const c10::optional<at::Tensor>& data_a, const c10::optional<at::Tensor>& data_c,
                    int64_t data_draw) {
  check_affine_step_args(out, x, score, a, b, c, noise, sample_ids, x_mean, mask, data, data_a, data_c);
  if (checks_only(x) || x.numel() == 0) return;
  const DeviceScope scope(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  if ((c && !noise) || mask) check_id_values("affine_step_", ids);
  const AffineStepArgs args =
      make_affine_args(out, x, score, a, b, c, noise, seed, ids, draw, x_mean, mask, data, data_a, data_c, data_draw);
  FASTSDE_LAUNCH(x, affine_step_cpu(args), affine_step_cuda(args, current_stream()));
}

void check_sq_norms_args(const at::Tensor& score, const c10::optional<at::Tensor>& noise,
                         const at::Tensor& sample_ids) {
  check_state("step_sq_norms", "score", score);
  if (noise) {  // noise is state-like: the score's dtype, or float32 (float64) beside a narrower score
    TORCH_CHECK(is_float_dtype(noise->scalar_type()) &&
                    step_dtypes_supported(to_dtype(noise->scalar_type()), to_dtype(score.scalar_type())),
                "step_sq_norms: noise must have the dtype of score (", score.scalar_type(),
                ") or be the float32 / float64 state beside a narrower score, got ", noise->scalar_type());
    TORCH_CHECK(noise->sizes() == score.sizes(), "step_sq_norms: noise must have the shape of score ",
                score.sizes(), ", got ", noise->sizes());
    TORCH_CHECK(noise->device() == score.device(), "step_sq_norms: noise must be on ", score.device(), ", got ",
                noise->device());
    TORCH_CHECK(noise->is_contiguous(), "step_sq_norms: noise must be contiguous, got strides ", noise->strides());
  }
  check_ids("step_sq_norms", sample_ids, score);
}

at::Tensor step_sq_norms_op(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
                            const at::Tensor& sample_ids, int64_t draw) {
  check_sq_norms_args(score, noise, sample_ids);
  const auto options = score.options().dtype(at::kDouble);
  if (checks_only(score)) return at::empty({score.size(0), 2}, options);
  if (score.numel() == 0) return at::zeros({score.size(0), 2}, options);
  const DeviceScope scope(score.device());
  // the CPU kernel writes every entry; the CUDA one is given zeros, as it always was
  at::Tensor out = score.is_cuda() ? at::zeros({score.size(0), 2}, options) : at::empty({score.size(0), 2}, options);
  const at::Tensor ids = sample_ids.contiguous();
  if (!noise) check_id_values("step_sq_norms", ids);
  const SqNormsArgs args = make_sq_norms_args(score, noise, seed, ids, draw);
#ifdef FASTSDE_WITH_CUDA
  const at::Tensor partial = score.is_cuda() ? at::empty({step_sq_norms_cuda_partials(args) * 2}, options)
                                             : at::Tensor();
#endif
  FASTSDE_LAUNCH(score, step_sq_norms_cpu(args, out.data_ptr<double>()),
                 step_sq_norms_cuda(args, partial.data_ptr<double>(), out.data_ptr<double>(), current_stream()));
  return out;
}

void check_projection(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                      const c10::optional<at::Tensor>& data) {
  TORCH_CHECK(mask.has_value() == data.has_value(), op, ": mask and data must be given together (got mask ",
              mask.has_value() ? "given" : "None", ", data ", data.has_value() ? "given" : "None", ")");
  if (mask) {
    check_like_x(op, "mask", *mask, x);
    check_like_x(op, "data", *data, x);
  }
}

void check_combine_args(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                        at::TensorList b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                        const at::Tensor& sample_ids, const c10::optional<at::Tensor>& seed_bits,
                        const c10::optional<at::Tensor>& x_mean, const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& data_a,
                        const c10::optional<at::Tensor>& data_c) {
  const char* op = "affine_combine_";
  check_state(op, "x", x);
  check_like_x(op, "out", out, x);
  TORCH_CHECK(!outputs.empty() && outputs.size() <= 3, op, ": outputs must hold 1 to 3 tensors, got ", outputs.size());
  TORCH_CHECK(b.size() == outputs.size(), op, ": b must hold one coefficient per output (", outputs.size(), "), got ",
              b.size());
  check_coef(op, "a", a, x);
  for (size_t k = 0; k < outputs.size(); ++k) {
    const std::string name = "outputs[" + std::to_string(k) + "]";
    check_score(op, name.c_str(), outputs[k], x);
    TORCH_CHECK(outputs[k].scalar_type() == outputs[0].scalar_type(), op, ": ", name, " must have the dtype of outputs[0] (",
                outputs[0].scalar_type(), "), got ", outputs[k].scalar_type());
    TORCH_CHECK(!outputs[k].is_alias_of(out), op, ": ", name,
                " must not share memory with out (it is overwritten before it is read)");
    const std::string coef = "b[" + std::to_string(k) + "]";
    check_coef(op, coef.c_str(), b[k], x);
  }
  if (c) check_coef(op, "c", *c, x);
  if (noise) check_like_x(op, "noise", *noise, x);
  check_ids(op, sample_ids, x);
  if (seed_bits) check_index(op, "seed_bits", *seed_bits, x);
  if (x_mean) {
    check_like_x(op, "x_mean", *x_mean, x);
    TORCH_CHECK(!x_mean->is_alias_of(out), op, ": x_mean must not share memory with out");
  }
  check_projection(op, x, mask, data);
  if (mask) {
    TORCH_CHECK(data_a.has_value() && data_c.has_value(), op, ": the projection (mask, data) needs data_a and data_c");
    check_coef(op, "data_a", *data_a, x);
    check_coef(op, "data_c", *data_c, x);
  }
}

void affine_combine_op(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                       at::TensorList b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                       int64_t seed, const at::Tensor& sample_ids, int64_t draw,
                       const c10::optional<at::Tensor>& seed_bits, const c10::optional<at::Tensor>& x_mean,
                       const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                       const c10::optional<at::Tensor>& data_a, const c10::optional<at::Tensor>& data_c,
                       int64_t data_draw) {
  check_combine_args(out, x, outputs, a, b, c, noise, sample_ids, seed_bits, x_mean, mask, data, data_a, data_c);
  if (checks_only(x) || x.numel() == 0) return;
  const DeviceScope scope(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  if ((c && !noise) || mask) check_id_values("affine_combine_", ids);
  AffineStepArgs args = make_affine_args(out, x, outputs[0], a, b[0], c, noise, seed, ids, draw, x_mean, mask, data,
                                         data_a, data_c, data_draw);
  if (outputs.size() > 1) {
    args.score2 = outputs[1].data_ptr();
    args.b2 = b[1].data_ptr<double>();
    args.b2_len = b[1].size(0);
  }
  if (outputs.size() > 2) {
    args.score3 = outputs[2].data_ptr();
    args.b3 = b[2].data_ptr<double>();
    args.b3_len = b[2].size(0);
  }
  if (seed_bits) args.seed_bits = seed_bits->data_ptr<int64_t>();
  FASTSDE_LAUNCH(x, affine_step_cpu(args), affine_step_cuda(args, current_stream()));
}

// langevin_update_'s scratch (float64, on x's device): [0, 3) the update's [1, b, c], [3, 3 + 2B) the per-sample
// squared norms, then (CUDA) the norm kernel's chunk partials.
int64_t langevin_scratch_numel(const at::Tensor& score) {
  const int64_t batch = score.size(0);
  int64_t n = 3 + 2 * batch;
#ifdef FASTSDE_WITH_CUDA
  if (score.is_cuda()) {
    SqNormsArgs probe{};
    probe.batch = batch;
    probe.numel = batch ? score.numel() / batch : 0;
    n += 2 * step_sq_norms_cuda_partials(probe);
  }
#endif
  return n;
}

void langevin_update_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                        const at::Tensor& score, const at::Tensor& coefs, double snr, const at::Tensor& seed_bits,
                        const at::Tensor& sample_ids, int64_t draw, const c10::optional<at::Tensor>& noise,
                        const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                        int64_t data_draw) {
  const char* op = "langevin_update_";
  check_state(op, "x", x);
  check_like_x(op, "x_mean", x_mean, x);
  check_score(op, "score", score, x);
  TORCH_CHECK(!x_mean.is_alias_of(x) && !x_mean.is_alias_of(score), op,
              ": x_mean must not share memory with x or score");
  TORCH_CHECK(coefs.scalar_type() == at::kDouble && coefs.dim() == 1 && coefs.size(0) == 4 && coefs.is_contiguous() &&
                  coefs.device() == x.device(),
              op, ": coefs must be a contiguous float64 (4,) tensor [alpha, scale, data_a, data_c] on ", x.device(),
              ", got ", coefs.scalar_type(), " of shape ", coefs.sizes(), " on ", coefs.device());
  check_index(op, "seed_bits", seed_bits, x);
  check_ids(op, sample_ids, x);
  if (noise) check_like_x(op, "noise", *noise, x);
  check_projection(op, x, mask, data);
  TORCH_CHECK(scratch.scalar_type() == at::kDouble && scratch.dim() == 1 && scratch.is_contiguous() &&
                  scratch.device() == x.device(),
              op, ": scratch must be a contiguous 1-D float64 tensor on ", x.device(), ", got ", scratch.scalar_type(),
              " of shape ", scratch.sizes(), " on ", scratch.device());
  if (checks_only(x)) return;
  TORCH_CHECK(scratch.numel() >= langevin_scratch_numel(score), op, ": scratch must hold at least ",
              langevin_scratch_numel(score), " values, got ", scratch.numel());
  if (x.numel() == 0) return;
  const DeviceScope scope(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  if (!noise || mask) check_id_values(op, ids);
  double* sc = scratch.data_ptr<double>();
  const double* cf = coefs.data_ptr<double>();
  SqNormsArgs norms = make_sq_norms_args(score, noise, 0, ids, draw);
  norms.seed_bits = seed_bits.data_ptr<int64_t>();
  const int64_t batch = x.size(0);
  // pass 1: the per-sample norms into scratch[3:], then the step's [1, b, c] into scratch[0:3], on x's device
  if (x.is_cuda()) {
#ifdef FASTSDE_WITH_CUDA
    C10_CUDA_CHECK(step_sq_norms_cuda(norms, sc + 3 + 2 * batch, sc + 3, current_stream()));
    C10_CUDA_CHECK(langevin_coefs_cuda(sc + 3, batch, cf, cf + 1, snr, sc, current_stream()));
#endif
  } else {
    step_sq_norms_cpu(norms, sc + 3);
    step::langevin_coefs(sc + 3, batch, cf[0], cf[1], snr, sc);
  }
  // pass 2: the affine update reading [1, b, c] from scratch, the projection's [data_a, data_c] from coefs
  const at::Tensor one = scratch.narrow(0, 0, 1), b = scratch.narrow(0, 1, 1), c = scratch.narrow(0, 2, 1);
  const c10::optional<at::Tensor> data_a = coefs.narrow(0, 2, 1), data_c = coefs.narrow(0, 3, 1);
  AffineStepArgs args = make_affine_args(x, x, score, one, b, c, noise, 0, ids, draw, x_mean, mask, data, data_a,
                                         data_c, data_draw);
  args.seed_bits = seed_bits.data_ptr<int64_t>();
  FASTSDE_LAUNCH(x, affine_step_cpu(args), affine_step_cuda(args, current_stream()));
}

}  // namespace
}  // namespace api
}  // namespace fastsde

FASTSDE_IMPL("affine_step_", &fastsde::api::affine_step_op)
FASTSDE_IMPL("step_sq_norms", &fastsde::api::step_sq_norms_op)
FASTSDE_IMPL("affine_combine_", &fastsde::api::affine_combine_op)
FASTSDE_IMPL("langevin_update_", &fastsde::api::langevin_update_op)
