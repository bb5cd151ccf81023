// FSN1 normals on CUDA: one thread per Philox block (four outputs), grid-stride over batch * blocks.
#include "cuda/fsn1_cuda.h"

#include "fsn1.h"

namespace fastsde {
namespace {

constexpr int kThreads = 256;
// Grid cap; larger problems loop (grid-stride), so any int64 size works.
constexpr int64_t kMaxGrid = int64_t(1) << 20;

template <typename T>
__global__ void __launch_bounds__(kThreads) _fsn1_normal_kernel(
    T* __restrict__ out,                     // (batch, numel) output
    const int64_t* __restrict__ sample_ids,  // (batch,) global sample ids
    int64_t numel, int64_t blocks, int64_t total, uint64_t seed, uint64_t draw) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < total; item += stride) {
    const int64_t b = item / blocks;
    const int64_t blk = item - b * blocks;
    const uint32_t n = uint32_t(sample_ids[b]);
    const fsn1::Normals4<T> z = fsn1::fsn1_normals4_t<T>(fsn1::fsn1_block(seed, n, draw, uint32_t(blk)));
    T* dst = out + b * numel + blk * 4;
    const int64_t left = numel - blk * 4;
    if (left >= 4) {
      dst[0] = z.z[0];
      dst[1] = z.z[1];
      dst[2] = z.z[2];
      dst[3] = z.z[3];
    } else {  // the row's last, partial block; constant indices keep z in registers
      dst[0] = z.z[0];
      if (left > 1) dst[1] = z.z[1];
      if (left > 2) dst[2] = z.z[2];
    }
  }
}

template <typename T>
cudaError_t fsn1_normal_cuda_impl(T* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                                  uint64_t draw, cudaStream_t stream) {
  if (batch <= 0 || numel <= 0) return cudaSuccess;
  const int64_t blocks = (numel + 3) / 4;
  const int64_t total = batch * blocks;
  int64_t grid = (total + kThreads - 1) / kThreads;
  if (grid > kMaxGrid) grid = kMaxGrid;
  _fsn1_normal_kernel<T><<<unsigned(grid), kThreads, 0, stream>>>(out, sample_ids, numel, blocks, total, seed, draw);
  return cudaGetLastError();
}

}  // namespace

cudaError_t fsn1_normal_cuda(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                             uint64_t draw, cudaStream_t stream) {
  return fsn1_normal_cuda_impl<float>(out, batch, numel, seed, sample_ids, draw, stream);
}

cudaError_t fsn1_normal_cuda(double* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                             uint64_t draw, cudaStream_t stream) {
  return fsn1_normal_cuda_impl<double>(out, batch, numel, seed, sample_ids, draw, stream);
}

cudaError_t fsn1_normal_cuda(const Fsn1NormalArgs& a, cudaStream_t stream) {
  if (a.dtype == Dtype::kFloat64)
    return fsn1_normal_cuda(static_cast<double*>(a.out), a.batch, a.numel, a.seed, a.sample_ids, a.draw, stream);
  return fsn1_normal_cuda(static_cast<float*>(a.out), a.batch, a.numel, a.seed, a.sample_ids, a.draw, stream);
}

}  // namespace fastsde
