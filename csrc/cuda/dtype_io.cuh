// Storage <-> compute type for the CUDA kernels (csrc/cuda/step.cu, groupnorm.cu): float32 / float64 as is,
// float16 / bfloat16 as raw uint16 bits through float32 (round to nearest even on the way back).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "step_args.h"  // Dtype

namespace fastsde {

// Io<D>::T is the storage type, Io<D>::C the compute type; ld / st convert one element.
template <Dtype D>
struct Io;
template <>
struct Io<Dtype::kFloat32> {
  using T = float;
  using C = float;
  static __device__ __forceinline__ C ld(const T* p) { return *p; }
  static __device__ __forceinline__ void st(T* p, C v) { *p = v; }
};
template <>
struct Io<Dtype::kFloat64> {
  using T = double;
  using C = double;
  static __device__ __forceinline__ C ld(const T* p) { return *p; }
  static __device__ __forceinline__ void st(T* p, C v) { *p = v; }
};
template <>
struct Io<Dtype::kFloat16> {
  using T = uint16_t;
  using C = float;
  static __device__ __forceinline__ C ld(const T* p) { return __half2float(__ushort_as_half(*p)); }
  static __device__ __forceinline__ void st(T* p, C v) { *p = __half_as_ushort(__float2half_rn(v)); }
};
template <>
struct Io<Dtype::kBFloat16> {
  using T = uint16_t;
  using C = float;
  static __device__ __forceinline__ C ld(const T* p) { return __bfloat162float(__ushort_as_bfloat16(*p)); }
  static __device__ __forceinline__ void st(T* p, C v) { *p = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

}  // namespace fastsde
