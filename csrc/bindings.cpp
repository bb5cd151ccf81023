// fastsde._C: the only translation unit that includes torch. It registers the ops with torch.library
// (schemas + CPU/CUDA/Meta implementations that check their inputs) and exposes build_info() via pybind11.
// The kernels themselves live in torch-free files: csrc/cpu/*.cpp and csrc/cuda/*.cu.
//
// 64-bit seeds and draw ids: the schema type `int` is a signed int64, but FSN1 seeds and draw ids range over
// [0, 2^64). The Python side (fastsde/ops/fsn1.py) passes a value >= 2^63 as its two's-complement int64
// (value - 2^64), and the C++ side reinterprets the int64 bits as uint64 (static_cast, which is modular).
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/fsn1_cpu.h"

#ifdef FASTSDE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/fsn1_cuda.h"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsde {
namespace {

constexpr int64_t kMaxSampleId = int64_t(1) << 32;
constexpr int64_t kMaxElementsPerSample = int64_t(1) << 34;

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

void fsn1_normal_cpu_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(out.device().is_cpu(), "fsn1_normal_: out must be a CPU tensor here, got ", out.device());
  check_fsn1_normal_args(out, sample_ids);
  if (out.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  const int64_t* id_ptr = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < ids.size(0); ++b)
    TORCH_CHECK(id_ptr[b] >= 0 && id_ptr[b] < kMaxSampleId, "fsn1_normal_: sample_ids must be in [0, 2^32), got ",
                id_ptr[b], " at index ", b);
  const uint64_t useed = static_cast<uint64_t>(seed), udraw = static_cast<uint64_t>(draw);
  if (out.scalar_type() == at::kFloat)
    fsn1_normal_cpu(out.data_ptr<float>(), out.size(0), out.size(1), useed, id_ptr, udraw);
  else
    fsn1_normal_cpu(out.data_ptr<double>(), out.size(0), out.size(1), useed, id_ptr, udraw);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const uint64_t useed = static_cast<uint64_t>(seed), udraw = static_cast<uint64_t>(draw);
  cudaError_t err;
  if (out.scalar_type() == at::kFloat)
    err = fsn1_normal_cuda(out.data_ptr<float>(), out.size(0), out.size(1), useed, ids.data_ptr<int64_t>(), udraw,
                           stream);
  else
    err = fsn1_normal_cuda(out.data_ptr<double>(), out.size(0), out.size(1), useed, ids.data_ptr<int64_t>(), udraw,
                           stream);
  C10_CUDA_CHECK(err);
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
  return info;
}

}  // namespace
}  // namespace fastsde

TORCH_LIBRARY(fastsde, m) {
  // out[b, j] = FSN1(seed, sample_ids[b], draw, j); seed and draw are uint64 passed as their int64 bits.
  m.def("fsn1_normal_(Tensor(a!) out, int seed, Tensor sample_ids, int draw) -> ()");
}

TORCH_LIBRARY_IMPL(fastsde, CPU, m) { m.impl("fsn1_normal_", &fastsde::fsn1_normal_cpu_op); }

TORCH_LIBRARY_IMPL(fastsde, Meta, m) { m.impl("fsn1_normal_", &fastsde::fsn1_normal_meta_op); }

#ifdef FASTSDE_WITH_CUDA
TORCH_LIBRARY_IMPL(fastsde, CUDA, m) { m.impl("fsn1_normal_", &fastsde::fsn1_normal_cuda_op); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsde native extension: ops are registered under torch.ops.fastsde";
  m.def("build_info", &fastsde::build_info,
        "Dict describing the build: compiler, openmp, openmp_max_threads, cuda, simd (instruction sets enabled).");
}
