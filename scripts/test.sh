#!/usr/bin/env bash
# Everything CI runs: bootstrap (venv + extension), the linter (ruff), the torch-free CMake build with its C++ tests
# and the nvcc compile check of csrc/cuda, the ASan+UBSan build of the kernels' tests, then pytest. Extra arguments go to
# pytest: scripts/test.sh tests/test_native.py
#
# Every run ends with the time of each phase, the CPU it ran on, and pytest's 20 slowest tests (--durations=20),
# so a slow test is seen the day it appears. The suite must stay under 30 minutes on every CPU kind the CI
# machines have, AVX2-only ones included (docs/reliability.md, "CI on every CPU": scripts/emulate_cpu.sh estimates
# another CPU kind on this one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

phases=()
phase_name=""
phase_t0=$SECONDS
total_t0=$SECONDS
phase() {  # phase NAME: close the running phase (recording its time) and start NAME ("" closes only)
  if [[ -n "$phase_name" ]]; then
    phases+=("$(printf '%-28s %5d s' "$phase_name" $((SECONDS - phase_t0)))")
  fi
  phase_name=$1
  phase_t0=$SECONDS
  if [[ -n "$phase_name" ]]; then
    echo "test: $phase_name"
  fi
}
summary() {
  local rc=$?
  phase ""
  local cpu flags
  cpu=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
  flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|amx_bf16' \
          | tr '\n' ' ' || true)
  echo
  echo "test: phase times (${cpu:-unknown CPU}; ${flags:-no AVX2}; $(nproc) cores)"
  for p in "${phases[@]}"; do echo "  $p"; done
  printf '  %-28s %5d s  (exit %d)\n' "total" $((SECONDS - total_t0)) "$rc"
}
trap summary EXIT

phase "bootstrap"
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # ninja for CMake comes from the venv

phase "lint (ruff)"
.venv/bin/ruff check .  # pyproject.toml [tool.ruff]: pycodestyle errors and warnings, pyflakes, 120 columns

phase "cmake build + ctest"
cmake -S . -B build/cmake -G Ninja
cmake --build build/cmake
ctest --test-dir build/cmake --output-on-failure

# The core compiles at -O0 in this build (CMakeLists.txt: FASTSDE_CORE_OPT), and so do the test drivers.
phase "asan+ubsan build + ctest"
echo "test: ASan + UBSan build of the C++ core (every kernel, every SIMD level, 1-3 threads)"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O0 -DFASTSDE_SANITIZE=ON \
  -DCMAKE_CUDA_COMPILER=
cmake --build build/asan --target test_kernels test_fsn1_simd
# detect_leaks=0: libgomp keeps its thread pool alive at exit
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -L kernels --output-on-failure

phase "benchmarks (smoke)"
# Every case of every benchmark suite once (benchmarks/test_suites.py, common.smoke: one call per measurement, the
# smallest sizes): the suites run and write their records. No timing is asserted; pytest-benchmark's numbers here
# mean nothing.
.venv/bin/python -m pytest benchmarks -q --bench-smoke --bench-no-compile -p no:cacheprovider --benchmark-disable

phase "pytest"
# pytest exits 5 when it collected nothing: a failure here, like any other non-zero code.
# Arguments that name paths replace the default `tests`; option-only arguments (-k ...) apply to `tests`.
targets=(tests)
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    targets=()
    break
  fi
done
rc=0
.venv/bin/python -m pytest "${targets[@]}" -q --durations=20 --durations-min=1.0 "$@" || rc=$?
if [[ $rc == 5 ]]; then
  echo "test: pytest collected no tests" >&2
fi
exit $rc
