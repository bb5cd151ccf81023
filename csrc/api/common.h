// What every csrc/api/<family>.cpp shares: the argument checks, the conversions from torch types to the torch-free
// kernel arguments, the device scope and launch of a wrapper, and the registration of one wrapper under every
// dispatch key. Only csrc/api/ includes torch; the kernels live in csrc/cpu/*.cpp and csrc/cuda/*.cu.
//
// An op family's file (csrc/api/step.cpp is the model) holds, per op:
//   1. its schema, in a TORCH_LIBRARY_FRAGMENT(fastsde, m) block of that file;
//   2. one `check_<op>_args` (shapes, dtypes, devices: no data access, so it is also the Meta kernel);
//   3. one wrapper `<op>_op` with the schema's argument list, written once for every device:
//        check; if (checks_only(x)) return;  (Meta: torch.compile's fake kernel)
//        const DeviceScope scope(x);         (the tensor's own device, not the current one)
//        ... FASTSDE_LAUNCH(x, cpu_launcher(args), cuda_launcher(args, current_stream()));
//   4. FASTSDE_IMPL("<op>", <op>_op): the wrapper under the CPU, Meta and (built with CUDA) CUDA keys.
// setup.py compiles csrc/api/*.cpp; CMakeLists.txt compile-checks them with FASTSDE_WITH_CUDA.
//
// 64-bit seeds and draw ids: the schema type `int` is a signed int64, but FSN1 seeds and draw ids range over
// [0, 2^64). The Python side passes a value >= 2^63 as its two's-complement int64 (value - 2^64), and as_u64 here
// reinterprets the bits.
#pragma once

#include <torch/extension.h>

#include <cstdint>

#include "step_args.h"

#ifdef FASTSDE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastsde {
namespace api {

constexpr int64_t kMaxSampleId = int64_t(1) << 32;
constexpr int64_t kMaxElementsPerSample = int64_t(1) << 34;

// A uint64 seed or draw id from the int64 the schema carries: the same 64 bits (the conversion is modular).
inline uint64_t as_u64(int64_t bits) { return static_cast<uint64_t>(bits); }

inline Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default: return Dtype::kFloat32;
  }
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Meta tensors (torch.compile's fake kernels) get the checks and nothing else.
inline bool checks_only(const at::Tensor& t) { return t.is_meta(); }

// The wrapper runs on its tensor's device (a CUDA tensor on a non-current GPU included); a no-op on the CPU.
using DeviceScope = c10::DeviceGuard;

#ifdef FASTSDE_WITH_CUDA
// The stream every CUDA op enqueues on: the caller's current stream on the device the DeviceScope selected.
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
// The CPU launcher, or the CUDA one (a cudaError_t, checked) for a CUDA tensor; only the CPU one without CUDA.
#define FASTSDE_LAUNCH(x, cpu_launch, cuda_launch) \
  do {                                             \
    if ((x).is_cuda()) {                           \
      C10_CUDA_CHECK(cuda_launch);                 \
    } else {                                       \
      cpu_launch;                                  \
    }                                              \
  } while (0)
#define FASTSDE_IMPL_CUDA(name, fn) \
  TORCH_LIBRARY_IMPL(fastsde, CUDA, m) { m.impl(name, fn); }
#else
#define FASTSDE_LAUNCH(x, cpu_launch, cuda_launch) \
  do {                                             \
    cpu_launch;                                    \
  } while (0)
#define FASTSDE_IMPL_CUDA(name, fn)
#endif

// One wrapper under every dispatch key the extension serves.
#define FASTSDE_IMPL(name, fn)                                    \
  TORCH_LIBRARY_IMPL(fastsde, CPU, m) { m.impl(name, fn); }       \
  TORCH_LIBRARY_IMPL(fastsde, Meta, m) { m.impl(name, fn); }      \
  FASTSDE_IMPL_CUDA(name, fn)

// The range of sample ids, on the CPU only (a CUDA check would synchronize and break graph capture; fastsde.ops
// checks it in Python; the kernels use the low 32 bits). ids: contiguous int64.
inline void check_id_values(const char* op, const at::Tensor& ids) {
  if (!ids.device().is_cpu()) return;
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < ids.numel(); ++b)
    TORCH_CHECK(p[b] >= 0 && p[b] < kMaxSampleId, op, ": sample_ids must be in [0, 2^32), got ", p[b], " at index ",
                b);
}

// A (B, ...) state-like tensor: the shape, dtype and device of x, contiguous.
inline void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (", x.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

// The score (model output) beside the state x: x's shape and device, contiguous, and x's dtype or a narrower one the
// kernels load directly (a half-precision model beside a float32 state; step_dtypes_supported, csrc/step_args.h).
inline void check_score(const char* op, const char* name, const at::Tensor& s, const at::Tensor& x) {
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
inline void check_coef(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == x.size(0)), op, ": ", name, " must have shape (",
              x.size(0), ",) or (1,), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_state(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must be (batch, ...), got shape ", x.sizes());
  TORCH_CHECK(is_float_dtype(x.scalar_type()), op, ": ", name, " must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", x.strides());
  TORCH_CHECK(x.size(0) == 0 || x.numel() / x.size(0) <= kMaxElementsPerSample, op,
              ": at most 2^34 elements per sample, got shape ", x.sizes());
}

inline void check_ids(const char* op, const at::Tensor& ids, const at::Tensor& x) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": sample_ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == x.size(0), op, ": sample_ids must have shape (", x.size(0),
              ",) (the batch size), got ", ids.sizes());
  TORCH_CHECK(ids.device() == x.device(), op, ": sample_ids must be on ", x.device(), ", got ", ids.device());
}

// A 0-d int64 tensor on x's device: a step index or a seed's bits, read when the kernel runs.
inline void check_index(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 0 && t.scalar_type() == at::kLong, op, ": ", name, " must be a 0-d int64 tensor, got ",
              t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " (the device of x), got ",
              t.device());
}

inline const double* opt_ptr(const c10::optional<at::Tensor>& t) { return t ? t->data_ptr<double>() : nullptr; }
inline int64_t opt_len(const c10::optional<at::Tensor>& t) { return t ? t->size(0) : 0; }
inline const void* opt_data(const c10::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

}  // namespace api
}  // namespace fastsde
