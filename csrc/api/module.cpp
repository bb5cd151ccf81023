// fastsde._C's Python module: build_info(). The ops register themselves with torch.library from their family's
// file (csrc/api/*.cpp, pattern in csrc/api/common.h) when the module is loaded; they are torch.ops.fastsde.*.
#include <string>
#include <vector>

#include "api/common.h"
#include "cpu/step_cpu.h"  // simd_level*

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsde {
namespace api {
namespace {

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
}  // namespace api
}  // namespace fastsde

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsde native extension: ops are registered under torch.ops.fastsde";
  m.def("build_info", &fastsde::api::build_info,
        "Dict describing the build: compiler, openmp, openmp_max_threads, cuda, simd (instruction sets enabled at "
        "compile time), simd_runtime (the level the CPU kernels use), simd_supported.");
}
