// The per-frequency fused step on CUDA: one thread per Philox block (four consecutive elements of one sample), the
// element math of csrc/freq_step.h; a grid-stride loop over the batch x blocks-per-sample items.
#include "cuda/freq_step_cuda.h"
#include "device_seed.h"

namespace fastsde {
namespace {

constexpr int kThreads = 256;

constexpr int64_t kMaxBlocks = 65535 * 16;

template <typename T, typename S>
__global__ void freq_step_kernel(FreqStepArgs seeded, int64_t per_row) {
  const FreqStepArgs args = with_device_seed(seeded);  // the seed read from device memory when given there
  const int64_t items = args.batch * per_row;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < items; i += int64_t(gridDim.x) * kThreads) {
    const int64_t row = i / per_row;
    const int64_t j0 = (i - row * per_row) * 4;
    freq_step::rows_span<T, S>(args, row, j0, j0 + 4 < args.numel ? j0 + 4 : args.numel);
  }
}

}  // namespace

cudaError_t freq_step_cuda(const FreqStepArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.numel == 0) return cudaSuccess;
  const int64_t per_row = (args.numel + 3) / 4;
  const int64_t needed = (args.batch * per_row + kThreads - 1) / kThreads;
  const unsigned grid = unsigned(needed < kMaxBlocks ? needed : kMaxBlocks);
  if (args.dtype == Dtype::kFloat64)
    freq_step_kernel<double, double><<<grid, kThreads, 0, stream>>>(args, per_row);
  else if (args.score_dtype == Dtype::kBFloat16)
    freq_step_kernel<float, uint16_t><<<grid, kThreads, 0, stream>>>(args, per_row);
  else
    freq_step_kernel<float, float><<<grid, kThreads, 0, stream>>>(args, per_row);
  return cudaGetLastError();
}

}  // namespace fastsde
