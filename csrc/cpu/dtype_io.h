// Storage <-> float32 lanes for the CPU kernels (csrc/cpu/step_kernels.h, groupnorm_kernels.h): float32 as is,
// float16 / bfloat16 as raw uint16 bits (F16C / AVX-512 conversions, or the scalar ones of simd_scalar.h).
// float64 storage never comes here: it runs scalar float64 code on every level.
//
// Included (no include guard) inside namespace fastsde::simd_<isa>, after that ISA's simd_<isa>.h, like the kernel
// headers that include it, so F, load / store, load_half / store_half and load_bf16 / store_bf16 resolve to it.

template <Dtype D>
struct Io;
template <>
struct Io<Dtype::kFloat32> {
  using T = float;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store(p, v); }
};
template <>
struct Io<Dtype::kFloat16> {
  using T = uint16_t;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load_half(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store_half(p, v); }
};
template <>
struct Io<Dtype::kBFloat16> {
  using T = uint16_t;
  static FASTSDE_SIMD_INLINE F ld(const T* p) { return load_bf16(p); }
  static FASTSDE_SIMD_INLINE void st(T* p, F v) { store_bf16(p, v); }
};
