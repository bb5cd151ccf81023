// GroupNorm backward on the CPU (math: csrc/groupnorm.h, "Backward"): the forward's work items and OpenMP split,
// each run by the backward kernels of the selected SIMD level (csrc/cpu/groupnorm_backward_kernels.h, compiled in
// csrc/cpu/groupnorm_{scalar,avx2,avx512}.cpp); float64 storage runs the scalar float64 code below on every level.
#include <math.h>

#include "cpu/groupnorm_cpu.h"
#include "cpu/parallel.h"
#include "cpu/step_cpu.h"  // simd_level()
#include "groupnorm.h"

namespace fastsde {
namespace {

const GroupNormBwdKernels& bwd_kernels() {
  switch (simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::kAvx512: return group_norm_bwd_kernels_avx512();
    case SimdLevel::kAvx2: return group_norm_bwd_kernels_avx2();
#endif
    default: return group_norm_bwd_kernels_scalar();
  }
}

// float64, one (sample n, group g), either layout (strides as in group_norm_stats_f64); sums in element order.
void group_norm_backward_f64(const GroupNormBwdArgs& B, int64_t n, int64_t g) {
  const GroupNormArgs& A = B.fwd;
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg, nc = A.N * A.C;
  const int64_t sc = A.channels_last ? 1 : hw, sp = A.channels_last ? A.C : 1, off = n * A.C * hw;
  const double *x = static_cast<const double*>(A.x) + off, *dy = static_cast<const double*>(B.dy) + off;
  double* dx = static_cast<double*>(B.dx) + off;
  double *s1 = B.sums + n * A.C, *s2 = s1 + nc, *s3 = s2 + nc;
  double mean, rstd;
  group_norm_stats_f64(A, n, g, mean, rstd);
  // du = dy act'(u) at element i of channel c, t = x + d_c
  auto du_at = [&](const groupnorm::ChannelCoef<double>& k, int64_t i, double& t) {
    t = x[i] + k.d;
    return A.act == 1 ? groupnorm::gn_dsilu_f64(groupnorm::gn_affine(x[i], k.d, k.a, k.b), dy[i]) : dy[i];
  };
  double m1 = 0.0, m2 = 0.0;
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    const groupnorm::ChannelCoef<double> k = groupnorm::gn_channel<double>(A, n, c, mean, rstd);
    double a = 0.0, b = 0.0, t;
    for (int64_t p = 0; p < hw; ++p) {
      const double du = du_at(k, c * sc + p * sp, t);
      a += du;
      b = fma(du, t, b);
    }
    s1[c] = a;
    s2[c] = b * rstd;
    const double kc = groupnorm::gn_kc<double>(A, n, c);
    m1 += kc * s1[c];
    m2 += kc * s2[c];
  }
  const double count = double(cpg * hw), pc = -rstd * rstd * (m2 / count), qc = -rstd * (m1 / count);
  for (int64_t c = c0; c < c0 + cpg; ++c) {
    const groupnorm::ChannelCoef<double> k = groupnorm::gn_channel<double>(A, n, c, mean, rstd);
    double s = 0.0, t;
    for (int64_t p = 0; p < hw; ++p) {
      const int64_t i = c * sc + p * sp;
      const double du = du_at(k, i, t);
      dx[i] = fma(k.a, du, fma(pc, t, qc));
      s += dx[i];
    }
    s3[c] = s;
  }
}

}  // namespace

void group_norm_backward_cpu(const GroupNormBwdArgs& B) {
  const GroupNormArgs& A = B.fwd;
  if (A.N <= 0 || A.C <= 0 || A.HW <= 0) return;
  const int64_t total = A.N * A.C * A.HW, G = A.groups;
  if (A.dtype == Dtype::kFloat64) {
    parallel_for(A.N * G, total, [&](int64_t i) { group_norm_backward_f64(B, i / G, i % G); });
    return;
  }
  const GroupNormBwdKernels& k = bwd_kernels();
  if (A.channels_last) {
    parallel_for(A.N, total, [&](int64_t n) { k.nhwc(B, n); });
    return;
  }
  parallel_for(A.N * G, total, [&](int64_t i) { k.nchw(B, i / G, i % G); });
}

}  // namespace fastsde
