// GroupNorm family on CUDA: one thread block per (sample, group); pass 1 the mean, pass 2 the centered sum of
// squares (both block reductions in a fixed tree order), pass 3 y = act((x + d_c) a_c + b_c). Math: csrc/groupnorm.h.
//
// Reads x once for the mean, once (from L2) for the variance and once for the result, writes y once:
// 12 B/elem of DRAM traffic in float32 when a group fits L2. Compiled with --fmad=false: the fmas are the explicit
// ones of csrc/groupnorm.h, as on the CPU.
#include "cuda/groupnorm_cuda.h"

#include "cuda/dtype_io.cuh"
#include "groupnorm.h"

namespace fastsde {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float gn_act(float y, int act) {
  return act == 1 ? groupnorm::gn_silu<float, uint32_t>(y) : y;
}
__device__ __forceinline__ double gn_act(double y, int act) { return act == 1 ? groupnorm::gn_silu_f64(y) : y; }

// Sum over the block in a fixed tree order (the same for every launch): float64 partials.
__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

template <Dtype D>
__global__ void __launch_bounds__(kThreads) _group_norm_fwd_kernel(GroupNormArgs A) {
  using IO = Io<D>;
  using T = typename IO::T;
  using C = typename IO::C;
  __shared__ double shared[kThreads];
  const int64_t n = blockIdx.x / A.groups, g = blockIdx.x % A.groups;
  const int64_t cpg = A.C / A.groups, hw = A.HW, c0 = g * cpg, count = cpg * hw;
  const T* x = static_cast<const T*>(A.x) + n * A.C * hw;  // (C, HW) or (HW, C) of sample n
  T* y = static_cast<T*>(A.y) + n * A.C * hw;
  // element i of the group: channel c0 + k, position p
  auto locate = [&](int64_t i, int64_t& k, int64_t& off) {
    if (A.channels_last) {
      const int64_t p = i / cpg;
      k = i - p * cpg;
      off = p * A.C + c0 + k;
    } else {
      k = i / hw;
      off = (c0 + k) * hw + (i - k * hw);
    }
  };
  // Each pass runs once more on values scaled by kGnTiny when its block total overflowed (csrc/groupnorm.h); the
  // total is the same in every thread, so the whole block takes the same branch.
  double total = 0.0;
  for (int scaled = 0; scaled < 2; ++scaled) {
    const C k_scale = scaled ? C(groupnorm::kGnTiny) : C(1);
    C part = C(0);
    for (int64_t i = threadIdx.x; i < count; i += kThreads) {
      int64_t k, off;
      locate(i, k, off);
      part += (IO::ld(x + off) + groupnorm::gn_emb<C>(A, n, c0 + k)) * k_scale;
    }
    total = block_sum(double(part), shared) * (scaled ? groupnorm::kGnTinyInv : 1.0);
    if (isfinite(total)) break;
  }
  const C mean = C(total / double(count));
  for (int scaled = 0; scaled < 2; ++scaled) {
    const C k_scale = scaled ? C(groupnorm::kGnTiny) : C(1);
    C part = C(0);
    for (int64_t i = threadIdx.x; i < count; i += kThreads) {
      int64_t k, off;
      locate(i, k, off);
      const C t = (IO::ld(x + off) + (groupnorm::gn_emb<C>(A, n, c0 + k) - mean)) * k_scale;
      part = groupnorm::f_fma(t, t, part);
    }
    total = block_sum(double(part), shared) * (scaled ? groupnorm::kGnTinyInv * groupnorm::kGnTinyInv : 1.0);
    if (isfinite(total)) break;
  }
  const C rstd = groupnorm::gn_rstd<C>(total, count, A.eps);
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    int64_t k, off;
    locate(i, k, off);
    const groupnorm::ChannelCoef<C> cf = groupnorm::gn_channel<C>(A, n, c0 + k, mean, rstd);
    IO::st(y + off, gn_act(groupnorm::gn_affine(IO::ld(x + off), cf.d, cf.a, cf.b), A.act));
  }
}

}  // namespace

cudaError_t group_norm_cuda(const GroupNormArgs& args, cudaStream_t stream) {
  if (args.N <= 0 || args.C <= 0 || args.HW <= 0) return cudaSuccess;
  const int64_t blocks = args.N * args.groups;
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (args.dtype) {
    case Dtype::kFloat32: _group_norm_fwd_kernel<Dtype::kFloat32><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kFloat64: _group_norm_fwd_kernel<Dtype::kFloat64><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kFloat16: _group_norm_fwd_kernel<Dtype::kFloat16><<<grid, kThreads, 0, stream>>>(args); break;
    case Dtype::kBFloat16: _group_norm_fwd_kernel<Dtype::kBFloat16><<<grid, kThreads, 0, stream>>>(args); break;
  }
  return cudaGetLastError();
}

}  // namespace fastsde
