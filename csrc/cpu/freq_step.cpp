// The per-frequency fused step on the CPU: the element math of csrc/freq_step.h over (sample, chunk) work items.
// Plain scalar code (the compiler vectorizes the coefficient loads; the Philox + Box-Muller of the noise dominate).
#include "cpu/freq_step_cpu.h"

#include "cpu/parallel.h"
#include "device_seed.h"

namespace fastsde {
namespace {

// Elements per work item, a multiple of 4 (a Philox block never straddles two items).
constexpr int64_t kChunk = 8192;
// The noise costs ~1 ns per element: go parallel from this many elements (kMinParallel without noise).
constexpr int64_t kMinParallelNoise = 4096;

template <typename T, typename S>
void run(const FreqStepArgs& args) {
  parallel_for_chunks(
      args.batch, args.numel, kChunk,
      [&](int64_t row, int64_t, int64_t j0, int64_t j1) { freq_step::rows_span<T, S>(args, row, j0, j1); },
      args.c ? kMinParallelNoise : kMinParallel);
}

}  // namespace

void freq_step_cpu(const FreqStepArgs& seeded) {
  const FreqStepArgs args = with_device_seed(seeded);
  if (args.dtype == Dtype::kFloat64)
    run<double, double>(args);
  else if (args.score_dtype == Dtype::kBFloat16)
    run<float, uint16_t>(args);
  else
    run<float, float>(args);
}

}  // namespace fastsde
