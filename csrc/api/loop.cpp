// The PC loop ops (fastsde/ops/loop.py): x <- a_i x + b_i score [+ c_i z] [projection], x_mean <- the mean, with the
// step index i and the seed read by the kernels when they run (StepIndex, csrc/step_args.h), and the Langevin
// corrector's step size computed from the norms on the device: nothing is read on the host, so a CUDA graph records
// them once for every step. The step index is range-checked on the CPU only (on CUDA the loop owns it).
#include "api/common.h"
#include "api/step_fill.h"
#include "cpu/step_cpu.h"
#include "step.h"

#ifdef FASTSDE_WITH_CUDA
#include "cuda/step_cuda.h"
#endif

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  m.def(
      "loop_affine_step_(Tensor(a!) x, Tensor(b!) x_mean, Tensor score, Tensor table, Tensor step, Tensor seed, "
      "Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, Tensor? mask, Tensor? data, "
      "Tensor? proj_table, int proj_offset) -> ()");
  m.def(
      "loop_langevin_step_(Tensor(a!) x, Tensor(b!) x_mean, Tensor(c!) scratch, Tensor score, Tensor table, "
      "float snr, Tensor step, Tensor seed, Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, "
      "Tensor? mask, Tensor? data, Tensor? proj_table, int proj_offset) -> ()");
}

namespace fastsde {
namespace api {
namespace {

// A loop op's coefficient table: (rows, N) float64 on x's device, contiguous, rows one of the allowed counts.
void check_table(const char* op, const char* name, const at::Tensor& t, int64_t rows_lo, int64_t rows_hi,
                 const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.dim() == 2 && t.size(0) >= rows_lo && t.size(0) <= rows_hi &&
                  t.size(1) >= 1,
              op, ": ", name, " must be a float64 (", rows_lo, "..", rows_hi, ", steps) table, got ", t.scalar_type(),
              " of shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Checks shared by loop_affine_step_ and loop_langevin_step_ (no data access: Meta-safe).
void check_loop_args(const char* op, const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                     const at::Tensor& table, int64_t table_rows_lo, const at::Tensor& step, const at::Tensor& seed,
                     const at::Tensor& sample_ids, const c10::optional<at::Tensor>& noise,
                     const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                     const c10::optional<at::Tensor>& proj_table) {
  check_state(op, "x", x);
  check_like_x(op, "x_mean", x_mean, x);
  check_score(op, "score", score, x);
  TORCH_CHECK(!x_mean.is_alias_of(x) && !x_mean.is_alias_of(score), op,
              ": x_mean must not share memory with x or score");
  check_index(op, "step", step, x);
  check_index(op, "seed", seed, x);
  check_ids(op, sample_ids, x);
  if (noise) check_like_x(op, "noise", *noise, x);
  TORCH_CHECK(mask.has_value() == data.has_value() && mask.has_value() == proj_table.has_value(), op,
              ": mask, data and proj_table must be given together");
  if (mask) {
    check_like_x(op, "mask", *mask, x);
    check_like_x(op, "data", *data, x);
    check_table(op, "proj_table", *proj_table, 2, 2, x);
  }
  check_table(op, "table", table, table_rows_lo, table_rows_lo + 1, x);
  if (step.device().is_cpu()) {  // a host read of CPU memory; on CUDA it would synchronize
    const int64_t i = step.data_ptr<int64_t>()[0];
    const int64_t n = table.size(1);
    TORCH_CHECK(i >= 0 && i < n && (!proj_table || i < proj_table->size(1)), op, ": step must be in [0, ", n,
                "), got ", i);
  }
}

// The arguments of one loop update x <- a_i x + b_i score [+ c_i z] [projection], x_mean <- the mean, with every
// per-step value read at run time (StepIndex): table (2|3, N) = [a; b; (c)], proj_table (2, N) = [data_a; data_c].
AffineStepArgs make_loop_args(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                              const at::Tensor& table, const at::Tensor& step, const at::Tensor& seed,
                              const at::Tensor& ids, int64_t draw_offset, int64_t draw_stride,
                              const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table,
                              int64_t proj_offset) {
  AffineStepArgs A{};
  A.dtype = to_dtype(x.scalar_type());
  A.score_dtype = to_dtype(score.scalar_type());
  A.batch = x.size(0);
  A.numel = x.size(0) ? x.numel() / x.size(0) : 0;
  A.out = x.data_ptr();
  A.x = x.data_ptr();
  A.score = score.data_ptr();
  A.x_mean = x_mean.data_ptr();
  const double* t = table.data_ptr<double>();
  const int64_t n = table.size(1);
  A.a = t;
  A.b = t + n;
  A.c = table.size(0) == 3 ? t + 2 * n : nullptr;
  A.a_len = A.b_len = A.c_len = 1;
  A.noise = A.c ? opt_data(noise) : nullptr;
  if (mask) {
    A.mask = mask->data_ptr();
    A.data = data->data_ptr();
    const double* p = proj_table->data_ptr<double>();
    A.data_a = p;
    A.data_c = p + proj_table->size(1);
    A.data_a_len = A.data_c_len = 1;
  }
  A.draw = as_u64(draw_offset);
  A.data_draw = as_u64(proj_offset);
  A.sample_ids = ids.data_ptr<int64_t>();
  A.index.step = step.data_ptr<int64_t>();
  A.index.seed = seed.data_ptr<int64_t>();
  A.index.draw_stride = draw_stride;
  A.index.coef_by_step = StepIndex::kAll;
  return A;
}

void loop_affine_step_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                         const at::Tensor& table, const at::Tensor& step, const at::Tensor& seed,
                         const at::Tensor& sample_ids, int64_t draw_offset, int64_t draw_stride,
                         const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table,
                         int64_t proj_offset) {
  const char* op = "loop_affine_step_";
  check_loop_args(op, x, x_mean, score, table, 2, step, seed, sample_ids, noise, mask, data, proj_table);
  if (checks_only(x) || x.numel() == 0) return;
  const DeviceScope scope(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  if ((table.size(0) == 3 && !noise) || mask) check_id_values(op, ids);
  const AffineStepArgs args = make_loop_args(x, x_mean, score, table, step, seed, ids, draw_offset, draw_stride,
                                             noise, mask, data, proj_table, proj_offset);
  FASTSDE_LAUNCH(x, affine_step_cpu(args), affine_step_cuda(args, current_stream()));
}

// loop_langevin_step_'s scratch (float64, on x's device): [0, 3) the update's [1, b, c], [3, 3 + 2B) the per-sample
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

void loop_langevin_step_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                           const at::Tensor& score, const at::Tensor& table, double snr, const at::Tensor& step,
                           const at::Tensor& seed, const at::Tensor& sample_ids, int64_t draw_offset,
                           int64_t draw_stride, const c10::optional<at::Tensor>& noise,
                           const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                           const c10::optional<at::Tensor>& proj_table, int64_t proj_offset) {
  const char* op = "loop_langevin_step_";
  check_loop_args(op, x, x_mean, score, table, 1, step, seed, sample_ids, noise, mask, data, proj_table);
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
  SqNormsArgs norms = make_sq_norms_args(score, noise, 0, ids, draw_offset);
  norms.index.step = step.data_ptr<int64_t>();
  norms.index.seed = seed.data_ptr<int64_t>();
  norms.index.draw_stride = draw_stride;
  const int64_t batch = x.size(0);
  const double* t = table.data_ptr<double>();
  const double* scale = table.size(0) == 2 ? t + table.size(1) : nullptr;
  // pass 1: the per-sample norms into scratch[3:], then the step's [1, b, c] into scratch[0:3], on x's device
  if (x.is_cuda()) {
#ifdef FASTSDE_WITH_CUDA
    C10_CUDA_CHECK(step_sq_norms_cuda(norms, sc + 3 + 2 * batch, sc + 3, current_stream()));
    C10_CUDA_CHECK(langevin_coefs_cuda(sc + 3, batch, t, scale, step.data_ptr<int64_t>(), snr, sc, current_stream()));
#endif
  } else {
    const int64_t i = step.data_ptr<int64_t>()[0];
    step_sq_norms_cpu(norms, sc + 3);
    step::langevin_coefs(sc + 3, batch, t[i], scale ? scale[i] : 1.0, snr, sc);
  }
  // pass 2: the update reads [1, b, c] from scratch; the projection's coefficients stay indexed by the step
  const at::Tensor coefs = scratch.narrow(0, 0, 3).view({3, 1});
  AffineStepArgs args = make_loop_args(x, x_mean, score, coefs, step, seed, ids, draw_offset, draw_stride, noise,
                                       mask, data, proj_table, proj_offset);
  args.index.coef_by_step = StepIndex::kDataA | StepIndex::kDataC;
  FASTSDE_LAUNCH(x, affine_step_cpu(args), affine_step_cuda(args, current_stream()));
}

}  // namespace
}  // namespace api
}  // namespace fastsde

FASTSDE_IMPL("loop_affine_step_", &fastsde::api::loop_affine_step_op)
FASTSDE_IMPL("loop_langevin_step_", &fastsde::api::loop_langevin_step_op)
