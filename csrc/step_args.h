// Arguments of the fused sampler-step kernels (csrc/step.h), shared by the CPU (csrc/cpu/step_cpu.h) and CUDA
// (csrc/cuda/step_cuda.h) launchers. Torch-free, math-free.
//
// All tensors are (batch, numel) row-major and contiguous; row b uses per-sample coefficient index
// (len == 1 ? 0 : b).
#pragma once

#include <stdint.h>

namespace fastsde {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// The score (model output) may be stored in a narrower type than the state: a half-precision model beside a
// float32 sampler state. The pairs the step kernels run, (state, score): (D, D) for every D, (float32, float16),
// (float32, bfloat16) and (float64, float32). The score is converted to the compute type as it is loaded.
constexpr bool step_dtypes_supported(Dtype state, Dtype score) {
  return state == score || (state == Dtype::kFloat32 && (score == Dtype::kFloat16 || score == Dtype::kBFloat16)) ||
         (state == Dtype::kFloat64 && score == Dtype::kFloat32);
}

// A dtype as a type, for dispatching a run-time (state, score) pair to templates.
template <Dtype D>
struct DtypeTag {
  static constexpr Dtype value = D;
};

// fn(DtypeTag<state>{}, DtypeTag<score>{}) for a pair of step_dtypes_supported (callers have checked it); returns
// fn's result. One place lists the pairs, so the CPU and CUDA launchers instantiate the same set.
template <typename Fn>
auto with_step_dtypes(Dtype state, Dtype score, const Fn& fn) {
  using F32 = DtypeTag<Dtype::kFloat32>;
  using F64 = DtypeTag<Dtype::kFloat64>;
  using F16 = DtypeTag<Dtype::kFloat16>;
  using BF16 = DtypeTag<Dtype::kBFloat16>;
  if (state == Dtype::kFloat64) return score == Dtype::kFloat32 ? fn(F64{}, F32{}) : fn(F64{}, F64{});
  if (state == Dtype::kFloat16) return fn(F16{}, F16{});
  if (state == Dtype::kBFloat16) return fn(BF16{}, BF16{});
  if (score == Dtype::kFloat16) return fn(F32{}, F16{});
  if (score == Dtype::kBFloat16) return fn(F32{}, BF16{});
  return fn(F32{}, F32{});
}


// affine_step_: see csrc/step.h. out may alias x. Optional pointers are null when absent: c (no noise at all),
// noise (then FSN1 at (seed, sample_ids[b], draw)), x_mean, mask/data/data_a/data_c (projection, all or none).
// Every tensor is in `dtype` (the state's) except the scores, in `score_dtype` (step_dtypes_supported).
// score2/score3 (null when absent; score2 before score3) are further model outputs in the same update,
// x_mean = a x + b score + b2 score2 + b3 score3: the few-step solvers' combine (fastsde/solvers), one pass.
struct AffineStepArgs {
  Dtype dtype;
  Dtype score_dtype;
  int64_t batch, numel;
  void* out;
  const void* x;
  const void* score;
  const void* noise;
  void* x_mean;
  const void* mask;
  const void* data;
  const double *a, *b, *c, *data_a, *data_c;
  int64_t a_len, b_len, c_len, data_a_len, data_c_len;  // 1 (broadcast) or batch
  uint64_t seed, draw, data_draw;
  const int64_t* sample_ids;  // values in [0, 2^32)
  const void* score2 = nullptr;
  const void* score3 = nullptr;
  const double* b2 = nullptr;
  const double* b3 = nullptr;
  int64_t b2_len = 0, b3_len = 0;
  // Null, or a pointer (a device pointer on CUDA) to the seed's int64 bits, read when the kernel runs instead of
  // `seed`: a compiled graph has no seed to guard on, and one recorded CUDA graph serves every seed copied there.
  const int64_t* seed_bits = nullptr;
};
// step_sq_norms: (batch, 2) float64: [b, 0] = sum_j score^2, [b, 1] = sum_j z^2 (noise or FSN1). noise is in
// `dtype` (the state's), score in `score_dtype` (step_dtypes_supported).
struct SqNormsArgs {
  Dtype dtype;
  Dtype score_dtype;
  int64_t batch, numel;
  const void* score;
  const void* noise;
  uint64_t seed, draw;
  const int64_t* sample_ids;
  const int64_t* seed_bits = nullptr;  // as AffineStepArgs::seed_bits
};

}  // namespace fastsde
