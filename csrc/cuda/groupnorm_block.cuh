// Shared by the CUDA GroupNorm forward (csrc/cuda/groupnorm.cu) and backward (csrc/cuda/groupnorm_backward.cu):
// one thread block per (sample, group), fixed-order block reductions, and the group's statistics (the backward
// recomputes them with this same code, so it sees the forward's bits). Math: csrc/groupnorm.h.
#pragma once

#include "cuda/dtype_io.cuh"
#include "groupnorm.h"

namespace fastsde {
namespace gn_cuda {

constexpr int kThreads = 256;

// Sum over the block in a fixed tree order (the same for every launch): float64 partials.
__device__ inline double block_sum(double v, double* shared) {
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

// Element i of group g of a sample (NCHW or channels-last): its channel k within the group and its offset.
struct GroupIndex {
  int64_t C, hw, cpg, c0;
  bool channels_last;
  __device__ void locate(int64_t i, int64_t& k, int64_t& off) const {
    if (channels_last) {
      const int64_t p = i / cpg;
      k = i - p * cpg;
      off = p * C + c0 + k;
    } else {
      k = i / hw;
      off = (c0 + k) * hw + (i - k * hw);
    }
  }
  // element p of channel k of the group
  __device__ int64_t offset(int64_t k, int64_t p) const { return channels_last ? p * C + c0 + k : (c0 + k) * hw + p; }
};

// mean and rstd of x + emb_add over group g of sample n (x: the sample's (C, HW) or (HW, C) elements). Each pass
// runs once more on values scaled by kGnTiny when its block total overflowed (csrc/groupnorm.h); the total is the
// same in every thread, so the whole block takes the same branch.
template <Dtype D>
__device__ void block_stats(const GroupNormArgs& A, int64_t n, const GroupIndex& G, const typename Io<D>::T* x,
                            double* shared, typename Io<D>::C& mean, typename Io<D>::C& rstd) {
  using IO = Io<D>;
  using C = typename IO::C;
  const int64_t count = G.cpg * G.hw;
  double total = 0.0;
  for (int scaled = 0; scaled < 2; ++scaled) {
    const C k_scale = scaled ? C(groupnorm::kGnTiny) : C(1);
    C part = C(0);
    for (int64_t i = threadIdx.x; i < count; i += kThreads) {
      int64_t k, off;
      G.locate(i, k, off);
      part += (IO::ld(x + off) + groupnorm::gn_emb<C>(A, n, G.c0 + k)) * k_scale;
    }
    total = block_sum(double(part), shared) * (scaled ? groupnorm::kGnTinyInv : 1.0);
    if (isfinite(total)) break;
  }
  mean = C(total / double(count));
  for (int scaled = 0; scaled < 2; ++scaled) {
    const C k_scale = scaled ? C(groupnorm::kGnTiny) : C(1);
    C part = C(0);
    for (int64_t i = threadIdx.x; i < count; i += kThreads) {
      int64_t k, off;
      G.locate(i, k, off);
      const C t = (IO::ld(x + off) + (groupnorm::gn_emb<C>(A, n, G.c0 + k) - mean)) * k_scale;
      part = groupnorm::f_fma(t, t, part);
    }
    total = block_sum(double(part), shared) * (scaled ? groupnorm::kGnTinyInv * groupnorm::kGnTinyInv : 1.0);
    if (isfinite(total)) break;
  }
  rstd = groupnorm::gn_rstd<C>(total, count, A.eps);
}

// The launch grid: one block per (sample, group); false when it exceeds the grid limit.
inline bool grid_for(int64_t N, int64_t groups, dim3& grid) {
  const int64_t blocks = N * groups;
  if (blocks > int64_t(0x7fffffff)) return false;
  grid = dim3(static_cast<unsigned>(blocks));
  return true;
}

}  // namespace gn_cuda
}  // namespace fastsde
