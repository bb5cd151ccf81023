// FSN1 normals on the CPU: OpenMP over (sample, chunk of Philox blocks), one Philox call per four outputs.
#include "cpu/fsn1_cpu.h"

#include "fsn1.h"

namespace fastsde {
namespace {

// Philox blocks (4 elements each) per unit of parallel work: 4096 outputs, ~16 KiB of float32.
constexpr int64_t kChunkBlocks = 1024;
// Below this many blocks in total, stay on one thread (a parallel region costs a few microseconds).
constexpr int64_t kMinParallelBlocks = 4096;

template <typename T>
void fsn1_normal_cpu_impl(T* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                          uint64_t draw) {
  if (batch <= 0 || numel <= 0) return;
  const int64_t blocks = (numel + 3) / 4;
  const int64_t chunks = (blocks + kChunkBlocks - 1) / kChunkBlocks;
  const int64_t work = batch * chunks;
#pragma omp parallel for schedule(static) if (batch * blocks >= kMinParallelBlocks)
  for (int64_t item = 0; item < work; ++item) {
    const int64_t b = item / chunks;
    const int64_t chunk = item - b * chunks;
    const uint32_t n = uint32_t(sample_ids[b]);
    T* row = out + b * numel;
    const int64_t first = chunk * kChunkBlocks;
    const int64_t last = first + kChunkBlocks < blocks ? first + kChunkBlocks : blocks;
    for (int64_t blk = first; blk < last; ++blk) {
      const fsn1::Normals4<T> z = fsn1::fsn1_normals4_t<T>(fsn1::fsn1_block(seed, n, draw, uint32_t(blk)));
      const int64_t j = blk * 4;
      if (j + 4 <= numel) {
        row[j] = z.z[0];
        row[j + 1] = z.z[1];
        row[j + 2] = z.z[2];
        row[j + 3] = z.z[3];
      } else {
        for (int64_t t = 0; j + t < numel; ++t) row[j + t] = z.z[t];
      }
    }
  }
}

}  // namespace

void fsn1_normal_cpu(float* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw) {
  fsn1_normal_cpu_impl<float>(out, batch, numel, seed, sample_ids, draw);
}

void fsn1_normal_cpu(double* out, int64_t batch, int64_t numel, uint64_t seed, const int64_t* sample_ids,
                     uint64_t draw) {
  fsn1_normal_cpu_impl<double>(out, batch, numel, seed, sample_ids, draw);
}

}  // namespace fastsde
