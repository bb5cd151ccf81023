// Fused sampler step on CUDA: affine_step_ (one thread per Philox block = 4 elements, grid-stride) and
// step_sq_norms (one thread block per (sample, chunk), block reduction, then the chunks in order).
//
// affine_step_ reads x, score and writes out: 12 B/elem in float32 (+4 B x_mean, +4 B explicit noise, +8 B
// mask/data, +4 B per further output of a combine); the noise is made in registers from FSN1 (csrc/fsn1.h). step_sq_norms reads score (+ noise): 4 B/elem.
// Compiled with --fmad=false: the only fmas are the explicit ones of csrc/fsn1.h / step.h, so float32 normals are
// bit-identical to the CPU's. The kernels are templated on the state dtype D and the score dtype DS (a half-precision
// model output beside a float32 state, csrc/step_args.h): the score is converted as it is loaded, in the same pass.
#include "cuda/step_cuda.h"

#include "cuda/dtype_io.cuh"
#include "fsn1.h"
#include "step.h"
#include "device_seed.h"

namespace fastsde {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = int64_t(1) << 20;
// step_sq_norms: elements per (sample, chunk) thread block.
constexpr int64_t kNormChunk = 16384;

using step::coef_index;
using step::NoiseMode;

template <typename C>
__device__ __forceinline__ fsn1::Normals4<C> normals(uint64_t seed, uint32_t n, uint64_t draw, uint32_t blk) {
  return fsn1::fsn1_normals4_t<C>(fsn1::fsn1_block(seed, n, draw, blk));
}

template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
__global__ void __launch_bounds__(kThreads) _affine_step_fwd_kernel(AffineStepArgs indexed, int64_t blocks,
                                                                                    int64_t total) {
  const AffineStepArgs A = with_device_seed(indexed);  // the seed read from device memory
  using IO = Io<D>;
  using IOS = Io<DS>;
  using T = typename IO::T;
  using C = typename IO::C;
  const T* x = static_cast<const T*>(A.x);             // (B, M) input
  const typename IOS::T* s = static_cast<const typename IOS::T*>(A.score);  // (B, M) score, in DS
  const typename IOS::T* s2 = static_cast<const typename IOS::T*>(A.score2);  // (B, M) 2nd output or null
  const typename IOS::T* s3 = static_cast<const typename IOS::T*>(A.score3);  // (B, M) 3rd output or null
  const T* noise = static_cast<const T*>(A.noise);     // (B, M) explicit noise or null
  const T* mask = static_cast<const T*>(A.mask);       // (B, M) projection mask or null
  const T* data = static_cast<const T*>(A.data);       // (B, M) projection data or null
  T* out = static_cast<T*>(A.out);                     // (B, M) output, may alias x
  T* xmo = static_cast<T*>(A.x_mean);                  // (B, M) x_mean output or null
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < total; item += stride) {
    const int64_t row = item / blocks;
    const int64_t blk = item - row * blocks;
    const uint32_t n = uint32_t(A.sample_ids[row]);
    const C a = C(A.a[coef_index(A.a_len, row)]), b = C(A.b[coef_index(A.b_len, row)]);
    const C c = NM == NoiseMode::kNone ? C(0) : C(A.c[coef_index(A.c_len, row)]);
    const C da = kProject ? C(A.data_a[coef_index(A.data_a_len, row)]) : C(0);
    const C dc = kProject ? C(A.data_c[coef_index(A.data_c_len, row)]) : C(0);
    const C b2 = s2 ? C(A.b2[coef_index(A.b2_len, row)]) : C(0), b3 = s3 ? C(A.b3[coef_index(A.b3_len, row)]) : C(0);
    fsn1::Normals4<C> z{}, z2{};
    if (NM == NoiseMode::kFsn1) z = normals<C>(A.seed, n, A.draw, uint32_t(blk));
    if (kProject) z2 = normals<C>(A.seed, n, A.data_draw, uint32_t(blk));
    const int64_t base = row * A.numel + blk * 4;
    const int left = int(A.numel - blk * 4 < 4 ? A.numel - blk * 4 : 4);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (t < left) {
        const int64_t i = base + t;
        C xm = step::step_mean(a, b, IO::ld(x + i), C(IOS::ld(s + i)));
        if (s2) xm = step::step_add(xm, b2, C(IOS::ld(s2 + i)));
        if (s3) xm = step::step_add(xm, b3, C(IOS::ld(s3 + i)));
        C xo = xm;
        if (NM == NoiseMode::kFsn1) xo = step::step_noisy(xm, c, z.z[t]);
        if (NM == NoiseMode::kExplicit) xo = step::step_noisy(xm, c, IO::ld(noise + i));
        if (kProject) step::step_project(xo, xm, IO::ld(mask + i), IO::ld(data + i), da, dc, z2.z[t]);
        IO::st(out + i, xo);
        if (xmo) IO::st(xmo + i, xm);
      }
    }
  }
}

template <Dtype D, Dtype DS, NoiseMode NM, bool kProject>
cudaError_t launch_affine(const AffineStepArgs& A, cudaStream_t stream) {
  const int64_t blocks = (A.numel + 3) / 4;
  const int64_t total = A.batch * blocks;
  int64_t grid = (total + kThreads - 1) / kThreads;
  if (grid > kMaxGrid) grid = kMaxGrid;
  _affine_step_fwd_kernel<D, DS, NM, kProject><<<unsigned(grid), kThreads, 0, stream>>>(A, blocks, total);
  return cudaGetLastError();
}

template <Dtype D, Dtype DS, NoiseMode NM>
cudaError_t launch_affine_proj(const AffineStepArgs& A, cudaStream_t stream) {
  return A.mask ? launch_affine<D, DS, NM, true>(A, stream) : launch_affine<D, DS, NM, false>(A, stream);
}

template <Dtype D, Dtype DS>
cudaError_t launch_affine_dtype(const AffineStepArgs& A, cudaStream_t stream) {
  if (!A.c) return launch_affine_proj<D, DS, NoiseMode::kNone>(A, stream);
  if (A.noise) return launch_affine_proj<D, DS, NoiseMode::kExplicit>(A, stream);
  return launch_affine_proj<D, DS, NoiseMode::kFsn1>(A, stream);
}

// One thread block per (sample, chunk), numbered row * chunks + chunk on a 1-D grid (grid.y would cap the batch at
// 65535): each thread sums squares of its blocks in float64, then a fixed-order shared-memory tree;
// partial[(row * chunks + chunk) * 2 + {0, 1}].
template <Dtype D, Dtype DS>
__global__ void __launch_bounds__(kThreads) _step_sq_norms_fwd_kernel(SqNormsArgs indexed, int64_t chunks,
                                                                      double* __restrict__ partial) {
  const SqNormsArgs A = with_device_seed(indexed);
  using IO = Io<D>;
  using IOS = Io<DS>;
  using T = typename IO::T;
  using C = typename IO::C;
  const typename IOS::T* s = static_cast<const typename IOS::T*>(A.score);  // (B, M) score, in DS
  const T* noise = static_cast<const T*>(A.noise);  // (B, M) explicit noise or null
  const int64_t row = int64_t(blockIdx.x) / chunks, chunk = int64_t(blockIdx.x) - row * chunks;
  const uint32_t n = uint32_t(A.sample_ids[row]);
  const int64_t j0 = chunk * kNormChunk;
  const int64_t j1 = j0 + kNormChunk < A.numel ? j0 + kNormChunk : A.numel;
  double ss = 0.0, zz = 0.0;
  for (int64_t j = j0 + 4 * int64_t(threadIdx.x); j < j1; j += 4 * kThreads) {
    fsn1::Normals4<C> z{};
    if (!noise) z = normals<C>(A.seed, n, A.draw, uint32_t(j >> 2));
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (j + t < j1) {
        const double sv = double(IOS::ld(s + row * A.numel + j + t));
        const double zv = noise ? double(IO::ld(noise + row * A.numel + j + t)) : double(z.z[t]);
        ss = fma(sv, sv, ss);
        zz = fma(zv, zv, zz);
      }
    }
  }
  __shared__ double sh[2][kThreads];
  sh[0][threadIdx.x] = ss;
  sh[1][threadIdx.x] = zz;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + w];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[(row * chunks + chunk) * 2] = sh[0][0];
    partial[(row * chunks + chunk) * 2 + 1] = sh[1][0];
  }
}

// out[row] = the row's chunk partials summed in chunk order.
__global__ void _step_sq_norms_finish_kernel(const double* __restrict__ partial,  // (B, chunks, 2)
                                             double* __restrict__ out,            // (B, 2)
                                             int64_t batch, int64_t chunks) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= batch) return;
  double s = 0.0, z = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    s += partial[(row * chunks + c) * 2];
    z += partial[(row * chunks + c) * 2 + 1];
  }
  out[row * 2] = s;
  out[row * 2 + 1] = z;
}

template <Dtype D, Dtype DS>
cudaError_t launch_sq_norms(const SqNormsArgs& A, double* partial, double* out, cudaStream_t stream) {
  const int64_t chunks = (A.numel + kNormChunk - 1) / kNormChunk;
  if (A.batch * chunks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;  // grid.x limit
  _step_sq_norms_fwd_kernel<D, DS><<<unsigned(A.batch * chunks), kThreads, 0, stream>>>(A, chunks, partial);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  _step_sq_norms_finish_kernel<<<unsigned((A.batch + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      partial, out, A.batch, chunks);
  return cudaGetLastError();
}

// coefs (3,) = the Langevin step's [1, b, c] (csrc/step.h, langevin_coefs) from *alpha and *scale in device memory:
// one thread, so the batch mean sums in row order like the CPU's.
__global__ void _langevin_coefs_kernel(const double* __restrict__ sq, int64_t batch, const double* __restrict__ alpha,
                                       const double* __restrict__ scale, double snr, double* __restrict__ coefs) {
  step::langevin_coefs(sq, batch, *alpha, *scale, snr, coefs);
}

}  // namespace

cudaError_t langevin_coefs_cuda(const double* sq, int64_t batch, const double* alpha, const double* scale,
                                double snr, double* coefs, cudaStream_t stream) {
  _langevin_coefs_kernel<<<1, 1, 0, stream>>>(sq, batch, alpha, scale, snr, coefs);
  return cudaGetLastError();
}

cudaError_t affine_step_cuda(const AffineStepArgs& args, cudaStream_t stream) {
  if (args.batch <= 0 || args.numel <= 0) return cudaSuccess;
  if (!step_dtypes_supported(args.dtype, args.score_dtype)) return cudaErrorInvalidValue;
  return with_step_dtypes(args.dtype, args.score_dtype, [&](auto d, auto ds) {
    return launch_affine_dtype<decltype(d)::value, decltype(ds)::value>(args, stream);
  });
}

int64_t step_sq_norms_cuda_partials(const SqNormsArgs& args) {
  return args.batch * ((args.numel + kNormChunk - 1) / kNormChunk);
}

cudaError_t step_sq_norms_cuda(const SqNormsArgs& args, double* partial, double* out, cudaStream_t stream) {
  if (args.batch <= 0 || args.numel <= 0) return cudaSuccess;
  if (!step_dtypes_supported(args.dtype, args.score_dtype)) return cudaErrorInvalidValue;
  return with_step_dtypes(args.dtype, args.score_dtype, [&](auto d, auto ds) {
    return launch_sq_norms<decltype(d)::value, decltype(ds)::value>(args, partial, out, stream);
  });
}

}  // namespace fastsde
