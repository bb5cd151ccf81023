#!/usr/bin/env bash
# Everything CI runs: bootstrap (venv + extension), the torch-free CMake build with its C++ tests and the
# nvcc compile check of csrc/cuda, then pytest. Extra arguments go to pytest: scripts/test.sh tests/test_native.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # ninja for CMake comes from the venv

echo "test: cmake build + ctest"
cmake -S . -B build/cmake -G Ninja
cmake --build build/cmake
ctest --test-dir build/cmake --output-on-failure

# -O0: the instrumented template-heavy kernels compile in ~7 min at -O0 on 2 cores (longer at -O1/-O3)
echo "test: ASan + UBSan build of the C++ core (every kernel, every SIMD level, 1-3 threads)"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O0 -DFASTSDE_SANITIZE=ON -DCMAKE_CUDA_COMPILER=
cmake --build build/asan --target test_kernels test_fsn1_simd
# detect_leaks=0: libgomp keeps its thread pool alive at exit
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -L kernels --output-on-failure

echo "test: pytest"
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
.venv/bin/python -m pytest "${targets[@]}" -q "$@" || rc=$?
if [[ $rc == 5 ]]; then
  echo "test: pytest collected no tests" >&2
fi
exit $rc
