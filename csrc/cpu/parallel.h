// The one OpenMP loop of the CPU kernels: work items [0, items) split statically over the threads, or run on the
// calling thread when the problem is small. Every kernel fixes the order of operations within an item, so results
// do not depend on the thread count.
#pragma once

#include <stdint.h>

namespace fastsde {

// Below this many elements in total, stay on one thread (a parallel region costs a few microseconds).
constexpr int64_t kMinParallel = 32768;

// fn(i) for every item i; on the calling thread when elements < min_parallel or there is at most one item, without
// entering a parallel region at all (even an if(false) region costs a team setup).
template <typename Fn>
void parallel_for(int64_t items, int64_t elements, const Fn& fn, int64_t min_parallel = kMinParallel) {
  if (elements < min_parallel || items <= 1) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < items; ++i) fn(i);
}

// fn(row, c, j0, j1) over every (row, chunk) of a (batch, numel) problem; chunk c of a row is its elements
// [c chunk, min((c + 1) chunk, numel)).
template <typename Fn>
void parallel_for_chunks(int64_t batch, int64_t numel, int64_t chunk, const Fn& fn,
                         int64_t min_parallel = kMinParallel) {
  if (batch <= 0 || numel <= 0) return;
  const int64_t chunks = (numel + chunk - 1) / chunk;
  parallel_for(
      batch * chunks, batch * numel,
      [&](int64_t item) {
        const int64_t row = item / chunks;
        const int64_t c = item - row * chunks;
        const int64_t j0 = c * chunk;
        const int64_t j1 = j0 + chunk < numel ? j0 + chunk : numel;
        fn(row, c, j0, j1);
      },
      min_parallel);
}

}  // namespace fastsde
