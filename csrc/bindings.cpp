// fastsde._C: the only translation unit that includes torch. It registers the ops with torch.library
// (schemas + CPU/CUDA/Meta implementations that check their inputs) and exposes build_info() via pybind11.
// The kernels themselves live in torch-free files: csrc/cpu/*.cpp and csrc/cuda/*.cu.
//
// 64-bit seeds and draw ids: the schema type `int` is a signed int64, but FSN1 seeds and draw ids range over
// [0, 2^64). The Python side (fastsde/ops/fsn1.py) passes a value >= 2^63 as its two's-complement int64
// (value - 2^64), and the C++ side reinterprets the int64 bits as uint64 (as_u64 below).
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/fsn1_cpu.h"
#include "cpu/groupnorm_cpu.h"
#include "cpu/step_cpu.h"
#include "step.h"

#ifdef FASTSDE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/fsn1_cuda.h"
#include "cuda/groupnorm_cuda.h"
#include "cuda/step_cuda.h"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsde {
namespace {

constexpr int64_t kMaxSampleId = int64_t(1) << 32;
constexpr int64_t kMaxElementsPerSample = int64_t(1) << 34;

// A uint64 seed or draw id from the int64 the schema carries: the same 64 bits (the conversion is modular).
uint64_t as_u64(int64_t bits) { return static_cast<uint64_t>(bits); }

Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default: return Dtype::kFloat32;
  }
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The range of sample ids, on the CPU only (a CUDA check would synchronize; fastsde.ops checks it in Python).
// ids: contiguous int64.
void check_id_values(const char* op, const at::Tensor& ids) {
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < ids.numel(); ++b)
    TORCH_CHECK(p[b] >= 0 && p[b] < kMaxSampleId, op, ": sample_ids must be in [0, 2^32), got ", p[b], " at index ",
                b);
}

#ifdef FASTSDE_WITH_CUDA
// The stream every CUDA op enqueues on: the caller's current stream on the current device (set by a CUDAGuard).
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

// Shape/dtype/device checks shared by every backend of fsn1_normal_ (no data access: Meta-safe).
void check_fsn1_normal_args(const at::Tensor& out, const at::Tensor& sample_ids) {
  TORCH_CHECK(out.dim() == 2, "fsn1_normal_: out must be 2-D (batch, numel), got shape ", out.sizes());
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "fsn1_normal_: out must be float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "fsn1_normal_: out must be contiguous, got strides ", out.strides());
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong, "fsn1_normal_: sample_ids must be int64, got ",
              sample_ids.scalar_type());
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == out.size(0),
              "fsn1_normal_: sample_ids must have shape (", out.size(0), ",) (the batch size of out), got ",
              sample_ids.sizes());
  TORCH_CHECK(sample_ids.device() == out.device(), "fsn1_normal_: sample_ids must be on ", out.device(),
              " (the device of out), got ", sample_ids.device());
  TORCH_CHECK(out.size(1) <= kMaxElementsPerSample, "fsn1_normal_: at most 2^34 elements per sample, got ",
              out.size(1));
}

// The kernel arguments; ids: sample_ids made contiguous (kept alive by the caller).
Fsn1NormalArgs make_fsn1_normal_args(const at::Tensor& out, int64_t seed, const at::Tensor& ids, int64_t draw) {
  Fsn1NormalArgs args;
  args.dtype = to_dtype(out.scalar_type());
  args.batch = out.size(0);
  args.numel = out.size(1);
  args.out = out.data_ptr();
  args.seed = as_u64(seed);
  args.draw = as_u64(draw);
  args.sample_ids = ids.data_ptr<int64_t>();
  return args;
}

void fsn1_normal_cpu_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(out.device().is_cpu(), "fsn1_normal_: out must be a CPU tensor here, got ", out.device());
  check_fsn1_normal_args(out, sample_ids);
  if (out.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  check_id_values("fsn1_normal_", ids);
  fsn1_normal_cpu(make_fsn1_normal_args(out, seed, ids, draw));
}

// Fake/meta implementation for torch.compile tracing: the checks, no data.
void fsn1_normal_meta_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  (void)seed;
  (void)draw;
  check_fsn1_normal_args(out, sample_ids);
}

#ifdef FASTSDE_WITH_CUDA
// The range of sample id values is not checked here: that would synchronize with the device (and break CUDA
// graph capture). fastsde.ops.fsn1_normal checks it in Python; the kernel uses the low 32 bits.
void fsn1_normal_cuda_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(out.is_cuda(), "fsn1_normal_: out must be a CUDA tensor here, got ", out.device());
  check_fsn1_normal_args(out, sample_ids);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor ids = sample_ids.contiguous();
  C10_CUDA_CHECK(fsn1_normal_cuda(make_fsn1_normal_args(out, seed, ids, draw), current_stream()));
}
#endif

// ---- fused sampler step: affine_step_, step_sq_norms, fsn1_bits_ ----------------------------------------------

// A (B, ...) state-like tensor: the shape, dtype and device of x, contiguous.
void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (", x.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

// The score (model output) beside the state x: x's shape and device, contiguous, and x's dtype or a narrower one the
// kernels load directly (a half-precision model beside a float32 state; step_dtypes_supported, csrc/step_args.h).
void check_score(const char* op, const char* name, const at::Tensor& s, const at::Tensor& x) {
  TORCH_CHECK(s.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", s.sizes());
  TORCH_CHECK(is_float_dtype(s.scalar_type()) &&
                  step_dtypes_supported(to_dtype(x.scalar_type()), to_dtype(s.scalar_type())),
              op, ": ", name, " must have the dtype of x (", x.scalar_type(),
              ") or, beside float32 x, float16 or bfloat16 (beside float64 x, float32), got ", s.scalar_type());
  TORCH_CHECK(s.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              s.device());
  TORCH_CHECK(s.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", s.strides());
}

// A per-sample coefficient: float64, 1-D, length batch or 1, on x's device, contiguous.
void check_coef(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == x.size(0)), op, ": ", name, " must have shape (",
              x.size(0), ",) or (1,), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_state(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must be (batch, ...), got shape ", x.sizes());
  TORCH_CHECK(is_float_dtype(x.scalar_type()), op, ": ", name, " must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", x.strides());
  TORCH_CHECK(x.size(0) == 0 || x.numel() / x.size(0) <= kMaxElementsPerSample, op,
              ": at most 2^34 elements per sample, got shape ", x.sizes());
}

void check_ids(const char* op, const at::Tensor& ids, const at::Tensor& x) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": sample_ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == x.size(0), op, ": sample_ids must have shape (", x.size(0),
              ",) (the batch size), got ", ids.sizes());
  TORCH_CHECK(ids.device() == x.device(), op, ": sample_ids must be on ", x.device(), ", got ", ids.device());
}

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

const double* opt_ptr(const c10::optional<at::Tensor>& t) { return t ? t->data_ptr<double>() : nullptr; }
int64_t opt_len(const c10::optional<at::Tensor>& t) { return t ? t->size(0) : 0; }
const void* opt_data(const c10::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

AffineStepArgs make_affine_args(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score,
                                const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c,
                                const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& ids,
                                int64_t draw, const c10::optional<at::Tensor>& x_mean,
                                const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                                const c10::optional<at::Tensor>& data_a, const c10::optional<at::Tensor>& data_c,
                                int64_t data_draw) {
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

void affine_step_cpu_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                        const at::Tensor& b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                        int64_t seed, const at::Tensor& sample_ids, int64_t draw,
                        const c10::optional<at::Tensor>& x_mean, const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& data_a,
                        const c10::optional<at::Tensor>& data_c, int64_t data_draw) {
  TORCH_CHECK(x.device().is_cpu(), "affine_step_: x must be a CPU tensor here, got ", x.device());
  check_affine_step_args(out, x, score, a, b, c, noise, sample_ids, x_mean, mask, data, data_a, data_c);
  if (x.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  if ((c && !noise) || mask) check_id_values("affine_step_", ids);
  affine_step_cpu(
      make_affine_args(out, x, score, a, b, c, noise, seed, ids, draw, x_mean, mask, data, data_a, data_c, data_draw));
}

void affine_step_meta_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                         const at::Tensor& b, const c10::optional<at::Tensor>& c,
                         const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& sample_ids,
                         int64_t draw, const c10::optional<at::Tensor>& x_mean, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& data_a,
                         const c10::optional<at::Tensor>& data_c, int64_t data_draw) {
  (void)seed;
  (void)draw;
  (void)data_draw;
  check_affine_step_args(out, x, score, a, b, c, noise, sample_ids, x_mean, mask, data, data_a, data_c);
}

// ids: sample_ids made contiguous (kept alive by the caller).
SqNormsArgs make_sq_norms_args(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
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

at::Tensor step_sq_norms_cpu_op(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
                                const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(score.device().is_cpu(), "step_sq_norms: score must be a CPU tensor here, got ", score.device());
  check_sq_norms_args(score, noise, sample_ids);
  if (score.numel() == 0) return at::zeros({score.size(0), 2}, score.options().dtype(at::kDouble));
  // Every entry is written by the kernel: no zero fill.
  at::Tensor out = at::empty({score.size(0), 2}, score.options().dtype(at::kDouble));
  const at::Tensor ids = sample_ids.contiguous();
  if (!noise) check_id_values("step_sq_norms", ids);
  step_sq_norms_cpu(make_sq_norms_args(score, noise, seed, ids, draw), out.data_ptr<double>());
  return out;
}

at::Tensor step_sq_norms_meta_op(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
                                 const at::Tensor& sample_ids, int64_t draw) {
  (void)seed;
  (void)draw;
  check_sq_norms_args(score, noise, sample_ids);
  return at::empty({score.size(0), 2}, score.options().dtype(at::kDouble));
}

void check_fsn1_bits_args(const at::Tensor& out, const at::Tensor& sample_ids) {
  TORCH_CHECK(out.dim() == 3 && out.size(2) == 4, "fsn1_bits_: out must be (batch, blocks, 4), got shape ",
              out.sizes());
  TORCH_CHECK(out.scalar_type() == at::kInt, "fsn1_bits_: out must be int32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "fsn1_bits_: out must be contiguous");
  TORCH_CHECK(out.size(1) <= (int64_t(1) << 32), "fsn1_bits_: at most 2^32 blocks, got ", out.size(1));
  check_ids("fsn1_bits_", sample_ids, out);
}

void fsn1_bits_cpu_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(out.device().is_cpu(), "fsn1_bits_: out must be a CPU tensor, got ", out.device());
  check_fsn1_bits_args(out, sample_ids);
  if (out.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  check_id_values("fsn1_bits_", ids);
  fsn1_bits_cpu(reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), out.size(0), out.size(1), as_u64(seed),
                ids.data_ptr<int64_t>(), as_u64(draw));
}

void fsn1_bits_meta_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  (void)seed;
  (void)draw;
  check_fsn1_bits_args(out, sample_ids);
}

// ---- affine_combine_ (the solvers' update) and the loop ops (fastsde/ops/loop.py) -----------------------------

// A 0-d int64 tensor on x's device: a step index or a seed's bits, read when the kernel runs.
void check_index(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 0 && t.scalar_type() == at::kLong, op, ": ", name, " must be a 0-d int64 tensor, got ",
              t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
}

void check_combine_args(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                        at::TensorList b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                        const at::Tensor& sample_ids, const c10::optional<at::Tensor>& seed_bits) {
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
}

// ids: sample_ids made contiguous (kept alive by the caller).
AffineStepArgs make_combine_args(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs,
                                 const at::Tensor& a, at::TensorList b, const c10::optional<at::Tensor>& c,
                                 const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& ids,
                                 int64_t draw, const c10::optional<at::Tensor>& seed_bits) {
  AffineStepArgs args = make_affine_args(out, x, outputs[0], a, b[0], c, noise, seed, ids, draw, c10::nullopt,
                                         c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt, 0);
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
  if (seed_bits) args.index.seed = seed_bits->data_ptr<int64_t>();
  return args;
}

void affine_combine_cpu_op(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                           at::TensorList b, const c10::optional<at::Tensor>& c, const c10::optional<at::Tensor>& noise,
                           int64_t seed, const at::Tensor& sample_ids, int64_t draw,
                           const c10::optional<at::Tensor>& seed_bits) {
  TORCH_CHECK(x.device().is_cpu(), "affine_combine_: x must be a CPU tensor here, got ", x.device());
  check_combine_args(out, x, outputs, a, b, c, noise, sample_ids, seed_bits);
  if (x.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  if (c && !noise) check_id_values("affine_combine_", ids);
  affine_step_cpu(make_combine_args(out, x, outputs, a, b, c, noise, seed, ids, draw, seed_bits));
}

void affine_combine_meta_op(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                            at::TensorList b, const c10::optional<at::Tensor>& c,
                            const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& sample_ids,
                            int64_t draw, const c10::optional<at::Tensor>& seed_bits) {
  (void)seed;
  (void)draw;
  check_combine_args(out, x, outputs, a, b, c, noise, sample_ids, seed_bits);
}

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
                     const at::Tensor& step, const at::Tensor& seed, const at::Tensor& sample_ids,
                     const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                     const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table) {
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
}

// The step index, checked against the tables, on the CPU (a host read of CPU memory; a CUDA check would
// synchronize: there FusedLoop owns the index).
int64_t cpu_step(const char* op, const at::Tensor& step, const at::Tensor& table,
                 const c10::optional<at::Tensor>& proj_table) {
  const int64_t i = step.data_ptr<int64_t>()[0];
  const int64_t n = table.size(1);
  TORCH_CHECK(i >= 0 && i < n && (!proj_table || i < proj_table->size(1)), op, ": step must be in [0, ", n,
              "), got ", i);
  return i;
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

void loop_affine_step_cpu_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                             const at::Tensor& table, const at::Tensor& step, const at::Tensor& seed,
                             const at::Tensor& sample_ids, int64_t draw_offset, int64_t draw_stride,
                             const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                             const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table,
                             int64_t proj_offset) {
  const char* op = "loop_affine_step_";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  check_loop_args(op, x, x_mean, score, step, seed, sample_ids, noise, mask, data, proj_table);
  check_table(op, "table", table, 2, 3, x);
  cpu_step(op, step, table, proj_table);
  if (x.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  if ((table.size(0) == 3 && !noise) || mask) check_id_values(op, ids);
  affine_step_cpu(make_loop_args(x, x_mean, score, table, step, seed, ids, draw_offset, draw_stride, noise, mask,
                                 data, proj_table, proj_offset));
}

void loop_affine_step_meta_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                              const at::Tensor& table, const at::Tensor& step, const at::Tensor& seed,
                              const at::Tensor& sample_ids, int64_t draw_offset, int64_t draw_stride,
                              const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table,
                              int64_t proj_offset) {
  (void)draw_offset;
  (void)draw_stride;
  (void)proj_offset;
  check_loop_args("loop_affine_step_", x, x_mean, score, step, seed, sample_ids, noise, mask, data, proj_table);
  check_table("loop_affine_step_", "table", table, 2, 3, x);
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

void check_langevin_loop_args(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                              const at::Tensor& score, const at::Tensor& table, const at::Tensor& step,
                              const at::Tensor& seed, const at::Tensor& sample_ids,
                              const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table) {
  const char* op = "loop_langevin_step_";
  check_loop_args(op, x, x_mean, score, step, seed, sample_ids, noise, mask, data, proj_table);
  check_table(op, "table", table, 1, 2, x);
  TORCH_CHECK(scratch.scalar_type() == at::kDouble && scratch.dim() == 1 && scratch.is_contiguous() &&
                  scratch.device() == x.device(),
              op, ": scratch must be a contiguous 1-D float64 tensor on ", x.device(), ", got ", scratch.scalar_type(),
              " of shape ", scratch.sizes(), " on ", scratch.device());
}

void loop_langevin_step_cpu_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                               const at::Tensor& score, const at::Tensor& table, double snr, const at::Tensor& step,
                               const at::Tensor& seed, const at::Tensor& sample_ids, int64_t draw_offset,
                               int64_t draw_stride, const c10::optional<at::Tensor>& noise,
                               const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                               const c10::optional<at::Tensor>& proj_table, int64_t proj_offset) {
  const char* op = "loop_langevin_step_";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  check_langevin_loop_args(x, x_mean, scratch, score, table, step, seed, sample_ids, noise, mask, data, proj_table);
  const int64_t i = cpu_step(op, step, table, proj_table);
  TORCH_CHECK(scratch.numel() >= langevin_scratch_numel(score), op, ": scratch must hold at least ",
              langevin_scratch_numel(score), " values, got ", scratch.numel());
  if (x.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  if (!noise || mask) check_id_values(op, ids);
  double* sc = scratch.data_ptr<double>();
  SqNormsArgs norms = make_sq_norms_args(score, noise, 0, ids, draw_offset);
  norms.index.step = step.data_ptr<int64_t>();
  norms.index.seed = seed.data_ptr<int64_t>();
  norms.index.draw_stride = draw_stride;
  step_sq_norms_cpu(norms, sc + 3);
  const double* t = table.data_ptr<double>();
  step::langevin_coefs(sc + 3, x.size(0), t[i], table.size(0) == 2 ? t[table.size(1) + i] : 1.0, snr, sc);
  // the update reads [1, b, c] from scratch; the projection's coefficients stay indexed by the step
  const at::Tensor coefs = scratch.narrow(0, 0, 3).view({3, 1});
  AffineStepArgs A = make_loop_args(x, x_mean, score, coefs, step, seed, ids, draw_offset, draw_stride, noise, mask,
                                    data, proj_table, proj_offset);
  A.index.coef_by_step = StepIndex::kDataA | StepIndex::kDataC;
  affine_step_cpu(A);
}

void loop_langevin_step_meta_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                                const at::Tensor& score, const at::Tensor& table, double snr, const at::Tensor& step,
                                const at::Tensor& seed, const at::Tensor& sample_ids, int64_t draw_offset,
                                int64_t draw_stride, const c10::optional<at::Tensor>& noise,
                                const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                                const c10::optional<at::Tensor>& proj_table, int64_t proj_offset) {
  (void)snr;
  (void)draw_offset;
  (void)draw_stride;
  (void)proj_offset;
  check_langevin_loop_args(x, x_mean, scratch, score, table, step, seed, sample_ids, noise, mask, data, proj_table);
}

#ifdef FASTSDE_WITH_CUDA
void affine_step_cuda_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                         const at::Tensor& b, const c10::optional<at::Tensor>& c,
                         const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& sample_ids,
                         int64_t draw, const c10::optional<at::Tensor>& x_mean, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& data_a,
                         const c10::optional<at::Tensor>& data_c, int64_t data_draw) {
  TORCH_CHECK(x.is_cuda(), "affine_step_: x must be a CUDA tensor here, got ", x.device());
  check_affine_step_args(out, x, score, a, b, c, noise, sample_ids, x_mean, mask, data, data_a, data_c);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  C10_CUDA_CHECK(affine_step_cuda(
      make_affine_args(out, x, score, a, b, c, noise, seed, ids, draw, x_mean, mask, data, data_a, data_c, data_draw),
      current_stream()));
}

at::Tensor step_sq_norms_cuda_op(const at::Tensor& score, const c10::optional<at::Tensor>& noise, int64_t seed,
                                 const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(score.is_cuda(), "step_sq_norms: score must be a CUDA tensor here, got ", score.device());
  check_sq_norms_args(score, noise, sample_ids);
  at::Tensor out = at::zeros({score.size(0), 2}, score.options().dtype(at::kDouble));
  if (score.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(score.device());
  const at::Tensor ids = sample_ids.contiguous();
  const SqNormsArgs args = make_sq_norms_args(score, noise, seed, ids, draw);
  at::Tensor partial = at::empty({step_sq_norms_cuda_partials(args) * 2}, out.options());
  C10_CUDA_CHECK(step_sq_norms_cuda(args, partial.data_ptr<double>(), out.data_ptr<double>(), current_stream()));
  return out;
}

void affine_combine_cuda_op(const at::Tensor& out, const at::Tensor& x, at::TensorList outputs, const at::Tensor& a,
                            at::TensorList b, const c10::optional<at::Tensor>& c,
                            const c10::optional<at::Tensor>& noise, int64_t seed, const at::Tensor& sample_ids,
                            int64_t draw, const c10::optional<at::Tensor>& seed_bits) {
  TORCH_CHECK(x.is_cuda(), "affine_combine_: x must be a CUDA tensor here, got ", x.device());
  check_combine_args(out, x, outputs, a, b, c, noise, sample_ids, seed_bits);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  C10_CUDA_CHECK(
      affine_step_cuda(make_combine_args(out, x, outputs, a, b, c, noise, seed, ids, draw, seed_bits), current_stream()));
}

// The loop ops on CUDA never read the device on the host: the step index and the seed are read by the kernels, and
// the Langevin step size is computed on the device (step_sq_norms -> langevin_coefs -> affine), so a CUDA graph
// records them once for every step. The step index is not range-checked here (FusedLoop owns it).
void loop_affine_step_cuda_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& score,
                              const at::Tensor& table, const at::Tensor& step, const at::Tensor& seed,
                              const at::Tensor& sample_ids, int64_t draw_offset, int64_t draw_stride,
                              const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& data, const c10::optional<at::Tensor>& proj_table,
                              int64_t proj_offset) {
  const char* op = "loop_affine_step_";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor here, got ", x.device());
  check_loop_args(op, x, x_mean, score, step, seed, sample_ids, noise, mask, data, proj_table);
  check_table(op, "table", table, 2, 3, x);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  C10_CUDA_CHECK(affine_step_cuda(make_loop_args(x, x_mean, score, table, step, seed, ids, draw_offset, draw_stride,
                                                 noise, mask, data, proj_table, proj_offset),
                                  current_stream()));
}

void loop_langevin_step_cuda_op(const at::Tensor& x, const at::Tensor& x_mean, const at::Tensor& scratch,
                                const at::Tensor& score, const at::Tensor& table, double snr, const at::Tensor& step,
                                const at::Tensor& seed, const at::Tensor& sample_ids, int64_t draw_offset,
                                int64_t draw_stride, const c10::optional<at::Tensor>& noise,
                                const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& data,
                                const c10::optional<at::Tensor>& proj_table, int64_t proj_offset) {
  const char* op = "loop_langevin_step_";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor here, got ", x.device());
  check_langevin_loop_args(x, x_mean, scratch, score, table, step, seed, sample_ids, noise, mask, data, proj_table);
  TORCH_CHECK(scratch.numel() >= langevin_scratch_numel(score), op, ": scratch must hold at least ",
              langevin_scratch_numel(score), " values, got ", scratch.numel());
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ids = sample_ids.contiguous();
  double* sc = scratch.data_ptr<double>();
  SqNormsArgs norms = make_sq_norms_args(score, noise, 0, ids, draw_offset);
  norms.index.step = step.data_ptr<int64_t>();
  norms.index.seed = seed.data_ptr<int64_t>();
  norms.index.draw_stride = draw_stride;
  const int64_t batch = x.size(0);
  C10_CUDA_CHECK(step_sq_norms_cuda(norms, sc + 3 + 2 * batch, sc + 3, current_stream()));
  const double* t = table.data_ptr<double>();
  C10_CUDA_CHECK(langevin_coefs_cuda(sc + 3, batch, t, table.size(0) == 2 ? t + table.size(1) : nullptr,
                                     step.data_ptr<int64_t>(), snr, sc, current_stream()));
  const at::Tensor coefs = scratch.narrow(0, 0, 3).view({3, 1});
  AffineStepArgs A = make_loop_args(x, x_mean, score, coefs, step, seed, ids, draw_offset, draw_stride, noise, mask,
                                    data, proj_table, proj_offset);
  A.index.coef_by_step = StepIndex::kDataA | StepIndex::kDataC;
  C10_CUDA_CHECK(affine_step_cuda(A, current_stream()));
}
#endif

// ---- group_norm (csrc/groupnorm.h): y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift) ----

// Checks shared by every backend (no data access: Meta-safe).
void check_group_norm_args(const at::Tensor& x, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                           const c10::optional<at::Tensor>& shift, const c10::optional<at::Tensor>& emb_add,
                           int64_t act) {
  TORCH_CHECK(x.dim() >= 2, "group_norm: x must be (N, C, *spatial), got shape ", x.sizes());
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "group_norm: x must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups >= 1 && C % num_groups == 0, "group_norm: num_groups must divide the channels (", C,
              "), got ", num_groups);
  TORCH_CHECK(act == 0 || act == 1, "group_norm: act must be 0 (none) or 1 (silu), got ", act);
  auto check_vec = [&](const char* name, const c10::optional<at::Tensor>& v, std::vector<int64_t> shape) {
    if (!v.has_value()) return;
    TORCH_CHECK(v->sizes() == at::IntArrayRef(shape) && at::isFloatingType(v->scalar_type()) &&
                    v->device() == x.device(),
                "group_norm: ", name, " must be a float tensor of shape ", at::IntArrayRef(shape), " on ",
                x.device(), ", got ", v->scalar_type(), " ", v->sizes(), " on ", v->device());
  };
  check_vec("weight", weight, {C});
  check_vec("bias", bias, {C});
  check_vec("scale", scale, {N, C});
  check_vec("shift", shift, {N, C});
  check_vec("emb_add", emb_add, {N, C});
}

// The kernels take NCHW-contiguous x, or channels-last-contiguous 4-D x (y is laid out the same way).
bool group_norm_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor group_norm_meta_op(const at::Tensor& x, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                              const c10::optional<at::Tensor>& bias, double eps, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, const c10::optional<at::Tensor>& emb_add,
                              int64_t act) {
  (void)eps;
  check_group_norm_args(x, num_groups, weight, bias, scale, shift, emb_add, act);
  return at::empty(x.sizes(), x.options().memory_format(group_norm_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                                                                     : at::MemoryFormat::Contiguous));
}

// Runs the checks, lays out x and y, converts the vectors to the compute type (kept alive in `keep`), and fills
// the kernel arguments. Returns y.
at::Tensor prepare_group_norm(const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                              const c10::optional<at::Tensor>& bias, double eps,
                              const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                              const c10::optional<at::Tensor>& emb_add, int64_t act, at::Tensor& x,
                              std::vector<at::Tensor>& keep, GroupNormArgs& args) {
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift, emb_add, act);
  const bool cl = group_norm_channels_last(x_in);
  x = cl || x_in.is_contiguous() ? x_in : x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto vec = [&](const c10::optional<at::Tensor>& v) -> const void* {
    if (!v.has_value()) return nullptr;
    keep.push_back(v->to(compute).contiguous());
    return keep.back().data_ptr();
  };
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
  return y;
}

at::Tensor group_norm_cpu_op(const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                             const c10::optional<at::Tensor>& bias, double eps, const c10::optional<at::Tensor>& scale,
                             const c10::optional<at::Tensor>& shift, const c10::optional<at::Tensor>& emb_add,
                             int64_t act) {
  TORCH_CHECK(x_in.device().is_cpu(), "group_norm: x must be a CPU tensor here, got ", x_in.device());
  at::Tensor x;
  std::vector<at::Tensor> keep;
  GroupNormArgs args;
  at::Tensor y = prepare_group_norm(x_in, num_groups, weight, bias, eps, scale, shift, emb_add, act, x, keep, args);
  if (x.numel() > 0) group_norm_cpu(args);
  return y;
}

#ifdef FASTSDE_WITH_CUDA
at::Tensor group_norm_cuda_op(const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                              const c10::optional<at::Tensor>& bias, double eps,
                              const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                              const c10::optional<at::Tensor>& emb_add, int64_t act) {
  TORCH_CHECK(x_in.is_cuda(), "group_norm: x must be a CUDA tensor here, got ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x;
  std::vector<at::Tensor> keep;
  GroupNormArgs args;
  at::Tensor y = prepare_group_norm(x_in, num_groups, weight, bias, eps, scale, shift, emb_add, act, x, keep, args);
  if (x.numel() > 0) C10_CUDA_CHECK(group_norm_cuda(args, current_stream()));
  return y;
}
#endif

// The SIMD instruction sets the compiler was told it may use (from its predefined macros).
std::vector<std::string> simd_flags() {
  std::vector<std::string> flags;
#ifdef __SSE2__
  flags.emplace_back("sse2");
#endif
#ifdef __SSE4_2__
  flags.emplace_back("sse4.2");
#endif
#ifdef __AVX__
  flags.emplace_back("avx");
#endif
#ifdef __AVX2__
  flags.emplace_back("avx2");
#endif
#ifdef __FMA__
  flags.emplace_back("fma");
#endif
#ifdef __AVX512F__
  flags.emplace_back("avx512f");
#endif
#ifdef __ARM_NEON
  flags.emplace_back("neon");
#endif
#ifdef __ARM_FEATURE_SVE
  flags.emplace_back("sve");
#endif
  return flags;
}

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
#ifdef FASTSDE_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["simd"] = simd_flags();
  // The level the CPU kernels run at (runtime dispatch; FASTSDE_SIMD=scalar|avx2|avx512 forces one).
  info["simd_runtime"] = std::string(simd_level_name(simd_level()));
  std::vector<std::string> supported;
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512})
    if (simd_level_supported(level)) supported.emplace_back(simd_level_name(level));
  info["simd_supported"] = supported;
  return info;
}

}  // namespace
}  // namespace fastsde

TORCH_LIBRARY(fastsde, m) {
  // out[b, j] = FSN1(seed, sample_ids[b], draw, j); seed and draw are uint64 passed as their int64 bits.
  m.def("fsn1_normal_(Tensor(a!) out, int seed, Tensor sample_ids, int draw) -> ()");
  // out = a x + b score [+ c z] [projection]; x_mean = a x + b score [projection]. See csrc/step.h.
  m.def(
      "affine_step_(Tensor(a!) out, Tensor x, Tensor score, Tensor a, Tensor b, Tensor? c, Tensor? noise, int seed, "
      "Tensor sample_ids, int draw, Tensor(b!)? x_mean, Tensor? mask, Tensor? data, Tensor? data_a, Tensor? data_c, "
      "int data_draw) -> ()");
  // (B, 2) float64: per-sample sums of score^2 and z^2.
  m.def("step_sq_norms(Tensor score, Tensor? noise, int seed, Tensor sample_ids, int draw) -> Tensor");
  // out = a x + sum_k b[k] outputs[k] [+ c z]: the few-step solvers' update, one pass over up to 3 outputs.
  // seed_bits (0-d int64 on x's device), when given, holds the seed, read when the kernel runs.
  m.def(
      "affine_combine_(Tensor(a!) out, Tensor x, Tensor[] outputs, Tensor a, Tensor[] b, Tensor? c, Tensor? noise, "
      "int seed, Tensor sample_ids, int draw, Tensor? seed_bits=None) -> ()");
  // The loop ops (fastsde/ops/loop.py): x <- a_i x + b_i score [+ c_i z] [projection], x_mean <- the mean, i = step;
  // the Langevin corrector's step size from the norms, on the device. Step index and seed read at run time.
  m.def(
      "loop_affine_step_(Tensor(a!) x, Tensor(b!) x_mean, Tensor score, Tensor table, Tensor step, Tensor seed, "
      "Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, Tensor? mask, Tensor? data, "
      "Tensor? proj_table, int proj_offset) -> ()");
  m.def(
      "loop_langevin_step_(Tensor(a!) x, Tensor(b!) x_mean, Tensor(c!) scratch, Tensor score, Tensor table, "
      "float snr, Tensor step, Tensor seed, Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, "
      "Tensor? mask, Tensor? data, Tensor? proj_table, int proj_offset) -> ()");
  // Debug: out (B, blocks, 4) int32 = the FSN1 Philox words of the CPU SIMD path.
  m.def("fsn1_bits_(Tensor(a!) out, int seed, Tensor sample_ids, int draw) -> ()");
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, Tensor? scale, Tensor? shift, "
      "Tensor? emb_add, int act) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastsde, CPU, m) {
  m.impl("fsn1_normal_", &fastsde::fsn1_normal_cpu_op);
  m.impl("affine_step_", &fastsde::affine_step_cpu_op);
  m.impl("affine_combine_", &fastsde::affine_combine_cpu_op);
  m.impl("loop_affine_step_", &fastsde::loop_affine_step_cpu_op);
  m.impl("loop_langevin_step_", &fastsde::loop_langevin_step_cpu_op);
  m.impl("step_sq_norms", &fastsde::step_sq_norms_cpu_op);
  m.impl("fsn1_bits_", &fastsde::fsn1_bits_cpu_op);
  m.impl("group_norm", &fastsde::group_norm_cpu_op);
}

TORCH_LIBRARY_IMPL(fastsde, Meta, m) {
  m.impl("fsn1_normal_", &fastsde::fsn1_normal_meta_op);
  m.impl("affine_step_", &fastsde::affine_step_meta_op);
  m.impl("affine_combine_", &fastsde::affine_combine_meta_op);
  m.impl("loop_affine_step_", &fastsde::loop_affine_step_meta_op);
  m.impl("loop_langevin_step_", &fastsde::loop_langevin_step_meta_op);
  m.impl("step_sq_norms", &fastsde::step_sq_norms_meta_op);
  m.impl("fsn1_bits_", &fastsde::fsn1_bits_meta_op);
  m.impl("group_norm", &fastsde::group_norm_meta_op);
}

#ifdef FASTSDE_WITH_CUDA
TORCH_LIBRARY_IMPL(fastsde, CUDA, m) {
  m.impl("fsn1_normal_", &fastsde::fsn1_normal_cuda_op);
  m.impl("affine_step_", &fastsde::affine_step_cuda_op);
  m.impl("affine_combine_", &fastsde::affine_combine_cuda_op);
  m.impl("loop_affine_step_", &fastsde::loop_affine_step_cuda_op);
  m.impl("loop_langevin_step_", &fastsde::loop_langevin_step_cuda_op);
  m.impl("step_sq_norms", &fastsde::step_sq_norms_cuda_op);
  m.impl("group_norm", &fastsde::group_norm_cuda_op);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsde native extension: ops are registered under torch.ops.fastsde";
  m.def("build_info", &fastsde::build_info,
        "Dict describing the build: compiler, openmp, openmp_max_threads, cuda, simd (instruction sets enabled at "
        "compile time), simd_runtime (the level the CPU kernels use), simd_supported.");
}
