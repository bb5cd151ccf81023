// GroupNorm backward on CUDA (math: csrc/groupnorm.h, "Backward"): one thread block per (sample, group), as the
// forward. The block recomputes the group's statistics with the forward's code (csrc/cuda/groupnorm_block.cuh),
// then per channel of the group reduces S1 = sum du and S2 = rstd sum du t, forms m1, m2 (every thread the same
// values, in channel order), and per channel writes dx and reduces sum dx. All reductions are fixed-order block
// sums, so the result does not depend on the launch. Reads x three times and dy twice (the repeats from L2 when a
// group fits it), writes dx once. Channels-last walks a channel with stride C (uncoalesced): correct, not tuned.
// Compiled with --fmad=false: the fmas are the explicit ones of csrc/groupnorm.h.
#include "cuda/groupnorm_cuda.h"

#include "cuda/groupnorm_block.cuh"

namespace fastsde {
namespace {

using gn_cuda::kThreads;

__device__ __forceinline__ float gn_du(float u, float dy, int act) {
  return act == 1 ? groupnorm::gn_dsilu<float, uint32_t>(u, dy) : dy;
}
__device__ __forceinline__ double gn_du(double u, double dy, int act) {
  return act == 1 ? groupnorm::gn_dsilu_f64(u, dy) : dy;
}

template <Dtype D>
__global__ void __launch_bounds__(kThreads) _group_norm_bwd_kernel(GroupNormBwdArgs B) {
  using IO = Io<D>;
  using T = typename IO::T;
  using C = typename IO::C;
  __shared__ double shared[kThreads];
  const GroupNormArgs& A = B.fwd;
  const int64_t n = blockIdx.x / A.groups, g = blockIdx.x % A.groups;
  const int64_t cpg = A.C / A.groups, hw = A.HW, nc = A.N * A.C;
  const gn_cuda::GroupIndex G{A.C, hw, cpg, g * cpg, A.channels_last};
  const int64_t off0 = n * A.C * hw;
  const T *x = static_cast<const T*>(A.x) + off0, *dy = static_cast<const T*>(B.dy) + off0;
  T* dx = static_cast<T*>(B.dx) + off0;
  double *s1 = B.sums + n * A.C, *s2 = s1 + nc, *s3 = s2 + nc;
  C mean, rstd;
  gn_cuda::block_stats<D>(A, n, G, x, shared, mean, rstd);
  double m1 = 0.0, m2 = 0.0;
  for (int64_t k = 0; k < cpg; ++k) {
    const int64_t c = G.c0 + k;
    const groupnorm::ChannelCoef<C> cf = groupnorm::gn_channel<C>(A, n, c, mean, rstd);
    C a = C(0), b = C(0);
    for (int64_t p = threadIdx.x; p < hw; p += kThreads) {
      const int64_t off = G.offset(k, p);
      const C xv = IO::ld(x + off), t = xv + cf.d;
      const C du = gn_du(groupnorm::gn_affine(xv, cf.d, cf.a, cf.b), IO::ld(dy + off), A.act);
      a += du;
      b = groupnorm::f_fma(du, t, b);
    }
    const double sa = gn_cuda::block_sum(double(a), shared);
    const double sb = gn_cuda::block_sum(double(b), shared) * double(rstd);
    if (threadIdx.x == 0) {
      s1[c] = sa;
      s2[c] = sb;
    }
    const double kc = groupnorm::gn_kc<C>(A, n, c);
    m1 += kc * sa;
    m2 += kc * sb;
  }
  const double count = double(cpg * hw);
  const C pc = C(-double(rstd) * double(rstd) * (m2 / count)), qc = C(-double(rstd) * (m1 / count));
  for (int64_t k = 0; k < cpg; ++k) {
    const int64_t c = G.c0 + k;
    const groupnorm::ChannelCoef<C> cf = groupnorm::gn_channel<C>(A, n, c, mean, rstd);
    C s = C(0);
    for (int64_t p = threadIdx.x; p < hw; p += kThreads) {
      const int64_t off = G.offset(k, p);
      const C xv = IO::ld(x + off);
      const C du = gn_du(groupnorm::gn_affine(xv, cf.d, cf.a, cf.b), IO::ld(dy + off), A.act);
      const C v = groupnorm::f_fma(cf.a, du, groupnorm::f_fma(pc, xv + cf.d, qc));
      IO::st(dx + off, v);
      s += v;
    }
    const double total = gn_cuda::block_sum(double(s), shared);
    if (threadIdx.x == 0) s3[c] = total;
  }
}

}  // namespace

cudaError_t group_norm_backward_cuda(const GroupNormBwdArgs& args, cudaStream_t stream) {
  const GroupNormArgs& A = args.fwd;
  if (A.N <= 0 || A.C <= 0 || A.HW <= 0) return cudaSuccess;
  dim3 grid;
  if (!gn_cuda::grid_for(A.N, A.groups, grid)) return cudaErrorInvalidConfiguration;
  switch (A.dtype) {
    case Dtype::kFloat32: _group_norm_bwd_kernel<Dtype::kFloat32><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kFloat64: _group_norm_bwd_kernel<Dtype::kFloat64><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kFloat16: _group_norm_bwd_kernel<Dtype::kFloat16><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kBFloat16: _group_norm_bwd_kernel<Dtype::kBFloat16><<<grid, kThreads, 0, stream>>>(args); break;
  }
  return cudaGetLastError();
}

}  // namespace fastsde
