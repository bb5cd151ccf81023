#!/usr/bin/env bash
# Run a command as if this CPU had fewer features, to estimate what another CPU kind of the CI machines costs:
#
#   scripts/emulate_cpu.sh avx2   CMD ...   # AMD EPYC with AVX2 only: no AVX-512, bf16 emulated by oneDNN
#   scripts/emulate_cpu.sh avx512 CMD ...   # AVX-512 without AVX512-BF16/AMX: bf16 emulated with AVX-512
#
# It caps oneDNN (ONEDNN_MAX_CPU_ISA: convolutions, matmuls) and fastsde's own kernels (FASTSDE_SIMD);
# fastsde.precision.native_bf16 reads the oneDNN cap, so "auto" precision and the tests that size themselves to
# native bf16 behave as on that CPU. Instruction latencies and caches stay this CPU's: the result is an estimate (on
# an Intel Xeon with AMX, the AVX2 cap makes a bf16 convolution ~30x slower than float32; a real AVX2-only EPYC
# measured ~17x). ATen's own vector width (ATEN_CPU_CAPABILITY) is left alone: with ATEN_CPU_CAPABILITY=avx2 on an
# AVX-512 CPU, torch 2.13's Inductor generated code that returned NaN in half of the rows of compiled samplers
# (tests/test_loop.py's compiled cases; they pass with the other two caps and on a real AVX2-only CPU).
set -euo pipefail
level=${1:-}
shift || true
case "$level" in
  avx2) export ONEDNN_MAX_CPU_ISA=AVX2 FASTSDE_SIMD=avx2 ;;
  avx512) export ONEDNN_MAX_CPU_ISA=AVX512_CORE FASTSDE_SIMD=avx512 ;;
  *) echo "usage: scripts/emulate_cpu.sh avx2|avx512 COMMAND [ARGS...] (got level '${level}')" >&2; exit 2 ;;
esac
if [[ $# -eq 0 ]]; then
  echo "usage: scripts/emulate_cpu.sh avx2|avx512 COMMAND [ARGS...] (no command given)" >&2
  exit 2
fi
exec "$@"
