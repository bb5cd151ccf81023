// torch.ops.fastsde.freq_step: the per-frequency fused step of the heat family (csrc/freq_step.h), registered as a
// fragment of the fastsde library (schema, checks, CPU / CUDA / Meta implementations). The kernels are torch-free:
// csrc/cpu/freq_step.cpp, csrc/cuda/freq_step.cu.
#include <torch/extension.h>

#include <cstdint>

#include "cpu/freq_step_cpu.h"

#ifdef FASTSDE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/freq_step_cuda.h"
#endif

namespace fastsde {
namespace {

constexpr int64_t kMaxElementsPerSample = int64_t(1) << 34;

// The checks every implementation runs (Meta included): shapes, dtypes, devices, the coefficient period.
void check_freq_step(const at::Tensor& x, const at::Tensor& score, const at::Tensor& a, const at::Tensor& b,
                     const c10::optional<at::Tensor>& c, const at::Tensor& sample_ids) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) >= 0, "freq_step: x must be (batch, ...), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "freq_step: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(score.sizes() == x.sizes(), "freq_step: score must have x's shape ", x.sizes(), ", got ",
              score.sizes());
  TORCH_CHECK(score.scalar_type() == x.scalar_type() ||
                  (x.scalar_type() == at::kFloat && score.scalar_type() == at::kBFloat16),
              "freq_step: score must have x's dtype (or bfloat16 beside float32 x), got ", score.scalar_type(),
              " beside ", x.scalar_type());
  const int64_t numel = x.dim() > 0 && x.size(0) > 0 ? x.numel() / x.size(0) : 0;
  TORCH_CHECK(numel < kMaxElementsPerSample, "freq_step: at most 2^34 elements per sample, got ", numel);
  const int64_t period = a.numel();
  for (const at::Tensor* t : {&a, &b}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "freq_step: a and b must be 1-D in x's dtype and device, got ", t->sizes(), " ", t->scalar_type(),
                " on ", t->device());
  }
  TORCH_CHECK(b.numel() == period && period >= 1 && (numel == 0 || numel % period == 0),
              "freq_step: a and b must have one length dividing the elements per sample (", numel, "), got ",
              a.numel(), " and ", b.numel());
  if (c) {
    TORCH_CHECK(c->dim() == 1 && c->numel() == period && c->scalar_type() == x.scalar_type() &&
                    c->device() == x.device(),
                "freq_step: c must be like a (", period, ",), got ", c->sizes(), " ", c->scalar_type());
  }
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == x.size(0) && sample_ids.scalar_type() == at::kLong &&
                  sample_ids.device() == x.device(),
              "freq_step: sample_ids must be int64 (", x.size(0), ",) on x's device, got ", sample_ids.sizes(), " ",
              sample_ids.scalar_type(), " on ", sample_ids.device());
  TORCH_CHECK(score.device() == x.device(), "freq_step: score must be on x's device ", x.device());
}

struct Prepared {
  at::Tensor x, score, a, b, c, ids, out;
  FreqStepArgs args;
};

// out: the in-place form's output (contiguous, x's shape, dtype and device; may be x), else a new tensor.
Prepared prepare(const at::Tensor& x, const at::Tensor& score, const at::Tensor& a, const at::Tensor& b,
                 const c10::optional<at::Tensor>& c, int64_t seed, const at::Tensor& sample_ids, int64_t draw,
                 const at::Tensor* out = nullptr, const at::Tensor* seed_bits = nullptr) {
  check_freq_step(x, score, a, b, c, sample_ids);
  Prepared p{x.contiguous(), score.contiguous(), a.contiguous(), b.contiguous(),
             c ? c->contiguous() : at::Tensor(), sample_ids.contiguous(),
             out ? *out : at::empty_like(x, at::MemoryFormat::Contiguous), {}};
  FreqStepArgs& args = p.args;
  args.dtype = x.scalar_type() == at::kDouble ? Dtype::kFloat64 : Dtype::kFloat32;
  args.score_dtype = score.scalar_type() == at::kBFloat16 ? Dtype::kBFloat16 : args.dtype;
  args.batch = x.size(0);
  args.numel = args.batch > 0 ? x.numel() / args.batch : 0;
  args.period = a.numel();
  args.x = p.x.data_ptr();
  args.score = p.score.data_ptr();
  args.out = p.out.data_ptr();
  args.a = p.a.data_ptr();
  args.b = p.b.data_ptr();
  args.c = c ? p.c.data_ptr() : nullptr;
  args.seed = static_cast<uint64_t>(seed);  // the int64 carries the uint64's bits (fastsde.ops.checks.as_u64)
  args.draw = static_cast<uint64_t>(draw);
  args.sample_ids = p.ids.data_ptr<int64_t>();
  args.seed_bits = seed_bits ? seed_bits->data_ptr<int64_t>() : nullptr;
  return p;
}

// freq_step_'s extra arguments: out like x and contiguous, seed_bits a 0-d int64 tensor on x's device.
void check_in_place(const at::Tensor& out, const at::Tensor& x, const at::Tensor& seed_bits) {
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device() == x.device() &&
                  out.is_contiguous(),
              "freq_step_: out must be a contiguous tensor like x (", x.sizes(), " ", x.scalar_type(), " on ",
              x.device(), "), got ", out.sizes(), " ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK(seed_bits.dim() == 0 && seed_bits.scalar_type() == at::kLong && seed_bits.device() == x.device(),
              "freq_step_: seed_bits must be a 0-d int64 tensor on ", x.device(), ", got ", seed_bits.scalar_type(),
              " of shape ", seed_bits.sizes(), " on ", seed_bits.device());
}

void check_id_range(const Prepared& p) {
  const int64_t* ids = p.args.sample_ids;
  for (int64_t r = 0; r < p.args.batch; ++r)
    TORCH_CHECK(ids[r] >= 0 && ids[r] < (int64_t(1) << 32), "freq_step: sample_ids must be in [0, 2^32), got ",
                ids[r], " at index ", r);
}

// The in-place form the executor records: out <- a x + b score + c z with the seed read from seed_bits when the
// kernel runs (a recorded graph serves any seed copied there). out may be x.
void freq_step_inplace_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& score, const at::Tensor& a,
                          const at::Tensor& b, const c10::optional<at::Tensor>& c, const at::Tensor& seed_bits,
                          const at::Tensor& sample_ids, int64_t draw) {
  check_in_place(out, x, seed_bits);
  if (x.device().is_meta()) {
    check_freq_step(x, score, a, b, c, sample_ids);
    return;
  }
#ifdef FASTSDE_WITH_CUDA
  const c10::optional<c10::cuda::CUDAGuard> guard =
      x.is_cuda() ? c10::optional<c10::cuda::CUDAGuard>(x.device()) : c10::nullopt;
#endif
  Prepared p = prepare(x, score, a, b, c, 0, sample_ids, draw, &out, &seed_bits);
  if (x.device().is_cpu()) {
    check_id_range(p);
    freq_step_cpu(p.args);
    return;
  }
#ifdef FASTSDE_WITH_CUDA
  C10_CUDA_CHECK(freq_step_cuda(p.args, c10::cuda::getCurrentCUDAStream().stream()));
#else
  TORCH_CHECK(false, "freq_step_: fastsde._C was built without CUDA, got x on ", x.device());
#endif
}

at::Tensor freq_step_cpu_op(const at::Tensor& x, const at::Tensor& score, const at::Tensor& a, const at::Tensor& b,
                            const c10::optional<at::Tensor>& c, int64_t seed, const at::Tensor& sample_ids,
                            int64_t draw) {
  TORCH_CHECK(x.device().is_cpu(), "freq_step: x must be a CPU tensor here, got ", x.device());
  Prepared p = prepare(x, score, a, b, c, seed, sample_ids, draw);
  check_id_range(p);
  freq_step_cpu(p.args);
  return p.out;
}

at::Tensor freq_step_meta_op(const at::Tensor& x, const at::Tensor& score, const at::Tensor& a, const at::Tensor& b,
                             const c10::optional<at::Tensor>& c, int64_t, const at::Tensor& sample_ids, int64_t) {
  check_freq_step(x, score, a, b, c, sample_ids);
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

#ifdef FASTSDE_WITH_CUDA
// Sample id values are not checked here (that would synchronize); fastsde.ops.freq_step checks them in Python.
at::Tensor freq_step_cuda_op(const at::Tensor& x, const at::Tensor& score, const at::Tensor& a, const at::Tensor& b,
                             const c10::optional<at::Tensor>& c, int64_t seed, const at::Tensor& sample_ids,
                             int64_t draw) {
  TORCH_CHECK(x.is_cuda(), "freq_step: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared p = prepare(x, score, a, b, c, seed, sample_ids, draw);
  C10_CUDA_CHECK(freq_step_cuda(p.args, c10::cuda::getCurrentCUDAStream().stream()));
  return p.out;
}
#endif

}  // namespace
}  // namespace fastsde

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  m.def("freq_step(Tensor x, Tensor score, Tensor a, Tensor b, Tensor? c, int seed, Tensor sample_ids, int draw) "
        "-> Tensor");
  m.def("freq_step_(Tensor(a!) out, Tensor x, Tensor score, Tensor a, Tensor b, Tensor? c, Tensor seed_bits, "
        "Tensor sample_ids, int draw) -> ()");
}

TORCH_LIBRARY_IMPL(fastsde, CPU, m) {
  m.impl("freq_step", &fastsde::freq_step_cpu_op);
  m.impl("freq_step_", &fastsde::freq_step_inplace_op);
}

TORCH_LIBRARY_IMPL(fastsde, Meta, m) {
  m.impl("freq_step", &fastsde::freq_step_meta_op);
  m.impl("freq_step_", &fastsde::freq_step_inplace_op);
}

#ifdef FASTSDE_WITH_CUDA
TORCH_LIBRARY_IMPL(fastsde, CUDA, m) {
  m.impl("freq_step", &fastsde::freq_step_cuda_op);
  m.impl("freq_step_", &fastsde::freq_step_inplace_op);
}
#endif
