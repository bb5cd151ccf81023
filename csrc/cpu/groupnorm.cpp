// GroupNorm family on the CPU: OpenMP over (sample, group) work items (NCHW) or samples (channels-last), each run
// by the kernels of the selected SIMD level (csrc/cpu/groupnorm_{scalar,avx2,avx512}.cpp, generated from
// csrc/cpu/groupnorm_kernels.h); float64 storage runs the scalar float64 code below on every level.
//
// Reads x twice from memory (statistics, then the result; the second statistics pass re-reads the group from
// cache) and writes y once: 12 B/elem in float32.
#include "cpu/groupnorm_cpu.h"

#include <math.h>

#include <vector>

#include "cpu/parallel.h"
#include "cpu/step_cpu.h"  // simd_level()
#include "groupnorm.h"

namespace fastsde {
namespace {

const GroupNormKernels& kernels() {
  switch (simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::kAvx512: return group_norm_kernels_avx512();
    case SimdLevel::kAvx2: return group_norm_kernels_avx2();
#endif
    default: return group_norm_kernels_scalar();
  }
}

}  // namespace

// float64: element (c, p) of sample n at n C HW + (channels_last ? p C + c : c HW + p); sums in element order.
void group_norm_stats_f64(const GroupNormArgs& A, int64_t n, int64_t g, double& mean_out, double& rstd_out) {
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg;
  const double* x = static_cast<const double*>(A.x) + n * A.C * hw;
  const int64_t sc = A.channels_last ? 1 : hw, sp = A.channels_last ? A.C : 1;
  double sum = 0.0;
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    const double e = groupnorm::gn_emb<double>(A, n, c);
    for (int64_t p = 0; p < hw; ++p) sum += x[c * sc + p * sp] + e;
  }
  const double mean = sum / double(cpg * hw);
  double sq = 0.0;
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    const double d = groupnorm::gn_emb<double>(A, n, c) - mean;
    for (int64_t p = 0; p < hw; ++p) {
      const double t = x[c * sc + p * sp] + d;
      sq = fma(t, t, sq);
    }
  }
  mean_out = mean;
  rstd_out = groupnorm::gn_rstd<double>(sq, cpg * hw, A.eps);
}

namespace {

void group_norm_f64(const GroupNormArgs& A, int64_t n, int64_t g) {
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg;
  const double* x = static_cast<const double*>(A.x) + n * A.C * hw;
  double* y = static_cast<double*>(A.y) + n * A.C * hw;
  const int64_t sc = A.channels_last ? 1 : hw, sp = A.channels_last ? A.C : 1;
  double mean, rstd;
  group_norm_stats_f64(A, n, g, mean, rstd);
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    const groupnorm::ChannelCoef<double> k = groupnorm::gn_channel<double>(A, n, c, mean, rstd);
    for (int64_t p = 0; p < hw; ++p) {
      const double v = groupnorm::gn_affine(x[c * sc + p * sp], k.d, k.a, k.b);
      y[c * sc + p * sp] = A.act == 1 ? groupnorm::gn_silu_f64(v) : v;
    }
  }
}

}  // namespace

void group_norm_cpu(const GroupNormArgs& A) {
  if (A.N <= 0 || A.C <= 0 || A.HW <= 0) return;
  const int64_t total = A.N * A.C * A.HW;
  if (A.dtype == Dtype::kFloat64) {
    parallel_for(A.N * A.groups, total, [&](int64_t i) { group_norm_f64(A, i / A.groups, i % A.groups); });
    return;
  }
  const GroupNormKernels& k = kernels();
  if (A.channels_last) {
    parallel_for(A.N, total, [&](int64_t n) { k.nhwc(A, n); });
    return;
  }
  parallel_for(A.N * A.groups, total, [&](int64_t i) { k.nchw(A, i / A.groups, i % A.groups); });
}

}  // namespace fastsde
