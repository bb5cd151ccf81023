#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine whose Python already has CUDA torch (and triton, nvcc, pytest; no network
# needed), build fastsde in place with its CUDA extension, run the CUDA tests (pytest -m cuda) and every benchmark
# suite with --device cuda, write logs and JSON records into OUTDIR and print a markdown summary
# (scripts/gpu_report.py). Every phase has a time limit and a failing phase does not stop the next one; the whole
# run stays inside GPU_CHECK_BUDGET_S (a phase that would start with less than its minimum left is skipped).
# Without CUDA the build, test and benchmark phases are reported as skipped (the CPU extension is left alone).
#
#   bash scripts/gpu_check.sh [OUTDIR]          (default OUTDIR: out/gpu_check in the repository)
#
# Environment: PYTHON (interpreter; default: the first of python3, python, .venv/bin/python whose torch sees a GPU,
# else the first that imports torch), GPU_CHECK_BUDGET_S (default 480), GPU_CHECK_SUITES (default: steps,
# steps:triton, e2e; e.g. "groupnorm attention:triton sampler unet" for the others),
# GPU_CHECK_QUICK=1 (--quick suites), GPU_CHECK_DEVICE=cpu (dry run: the benchmark phases on the CPU, to check the
# commands on a machine without a GPU; their numbers are not GPU numbers).
set -uo pipefail
CALLER_DIR=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SELF="$PWD/scripts/gpu_check.sh"

# Two phases run as their own process (so that `timeout` can bound them): the script calls itself with --env/--build.
case ${1:-} in
  --env)  # what the machine is
    "$PYTHON" scripts/gpu_report.py --env
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
    if command -v ninja >/dev/null; then echo "ninja $(ninja --version)"
    elif "$PYTHON" -c 'import ninja' 2>/dev/null; then echo "ninja: the python package"
    else echo "ninja: not found (the extension build falls back to one compiler process at a time)"; fi
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv
    else echo "nvidia-smi: not found"; fi
    exit 0 ;;
  --build)  # fastsde in place with its CUDA extension: the machine's torch, no dependency resolution, no index
    "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . || exit 1
    exec "$PYTHON" -c 'import sys
from fastsde import _native
print("fastsde._C:", _native.build_info() if _native.available() else _native.unavailable_reason())
sys.exit(0 if _native.has_cuda() else "fastsde._C was built without its CUDA kernels")' ;;
esac

OUT=${1:-out/gpu_check}
[[ $# -ge 1 && $OUT != /* ]] && OUT="$CALLER_DIR/$OUT"  # a given OUTDIR is relative to where the script was called
# The default budget and suites fit a lent GPU's ~15 minutes with the machine's start and the copies around it:
# env ~10 s, build ~100 s (16 compilers, one architecture), the CUDA tests ~200 s (Triton JIT and torch.compile
# dominate), steps ~60 s, steps on Triton ~45 s, e2e ~100 s: about 8 minutes. More suites: GPU_CHECK_SUITES.
BUDGET=${GPU_CHECK_BUDGET_S:-480}
SUITES=${GPU_CHECK_SUITES:-"steps steps:triton e2e"}
START=$(date +%s)
mkdir -p "$OUT/logs" "$OUT/bench" || exit 1
rm -f "$OUT"/bench/*.json
PHASES="$OUT/phases.tsv"
printf 'phase\tstatus\tseconds\tlog\n' >"$PHASES"
FAILED=0

note() { printf '%s\n' "$*" | tee -a "$OUT/logs/check.log"; }
now() { date +%s; }

# record NAME STATUS SECONDS LOG
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$PHASES"
  note "== $1: $2 ($3 s; total $(($(now) - START)) s)"
}

# phase NAME CAP_S MIN_S COMMAND...: run COMMAND with its output in OUT/logs/NAME.log, limited to CAP_S seconds and
# to what is left of the budget; skipped when less than MIN_S is left.
phase() {
  local name=$1 cap=$2 min=$3 log="$OUT/logs/$1.log"
  shift 3
  local left=$((START + BUDGET - $(now)))
  if ((left < min)); then
    record "$name" "skipped: out of time (${left} s of the ${BUDGET} s budget left, needs ${min} s)" 0 ""
    return 0
  fi
  local limit=$((cap < left ? cap : left)) t0 rc status
  note "-- $name (limit ${limit} s): $*"
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout after ${limit} s"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  record "$name" "$status" "$(($(now) - t0))" "$log"
  if [[ $rc != 0 ]]; then tail -n 5 "$log" | sed 's/^/   | /' | tee -a "$OUT/logs/check.log"; fi
}

# ---- which Python, and does its torch see a GPU? ------------------------------------------------------------------
find_python() {
  local py
  for py in python3 python .venv/bin/python; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1 && { echo "$py"; return; }
  done
  for py in python3 python .venv/bin/python; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c 'import torch' >/dev/null 2>&1 && { echo "$py"; return; }
  done
  echo python3
}
PY=${PYTHON:-$(find_python)}
CUDA_WHY=$("$PY" -c 'import torch
if not torch.cuda.is_available():
    build = "CUDA " + torch.version.cuda if torch.version.cuda else "a CPU-only build"
    print("no CUDA: torch", torch.__version__, "(" + build + ") sees no GPU")' 2>&1 | tail -n 1)
[[ -n "$CUDA_WHY" ]] && HAVE_CUDA=0 || HAVE_CUDA=1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
note "gpu_check: python $PY, OUTDIR $OUT, budget ${BUDGET} s, $([[ $HAVE_CUDA == 1 ]] && echo "CUDA available" || echo "$CUDA_WHY")"

# ---- env: what the machine is ----------------------------------------------------------------------------------------
phase env 60 5 env PYTHON="$PY" bash "$SELF" --env

# ---- build: fastsde in place with its CUDA extension, the machine's torch, no dependency resolution -------------------
if [[ $HAVE_CUDA == 1 ]]; then
  ARCH=$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.major}.{p.minor}")')
  phase build 240 60 env PYTHON="$PY" TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=16 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    bash "$SELF" --build
else
  record build "skipped ($CUDA_WHY; the CPU extension is left as it is)" 0 ""
fi

# ---- tests: the CUDA selection (every cuda-marked test lives in tests/test_cuda.py: tests/conftest.py enforces it),
# Triton compiled (not interpreted), a backend that cannot run fails ---------------------------------------------------
if [[ $HAVE_CUDA == 1 ]]; then
  phase tests 240 30 env TRITON_INTERPRET=0 FASTSDE_REQUIRE_CUDA=1 OMP_NUM_THREADS=4 \
    "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider -rs --junitxml="$OUT/pytest_cuda.xml"
else
  # The dry run checks the selection. Collecting one module takes seconds on an idle machine; its limit is what is
  # left of the budget, not a fixed few minutes, so that a loaded machine is slower, never a failure.
  t0=$(now)
  left=$((START + BUDGET - $(now)))
  selected=$(OMP_NUM_THREADS=1 timeout $((left > 30 ? left : 30)) "$PY" -m pytest -m cuda tests/test_cuda.py -q \
    -p no:cacheprovider --collect-only 2>&1 | grep -Eo '^[0-9]+(/[0-9]+)? tests? collected' | head -n 1)
  record tests "skipped (no CUDA; pytest -m cuda selects ${selected:-nothing: the collection failed})" \
    "$(($(now) - t0))" ""
  [[ -z "$selected" ]] && FAILED=1
fi

# ---- benchmarks: every suite on the GPU (SUITE or SUITE:BACKEND; the Triton runs skip torch.compile) ----------------
QUICK=()
[[ ${GPU_CHECK_QUICK:-0} == 1 ]] && QUICK=(--quick)
for entry in $SUITES; do
  suite=${entry%%:*}
  backend=native
  [[ $entry == *:* ]] && backend=${entry#*:}
  name="bench-$suite$([[ $backend != native ]] && echo "-$backend")"
  extra=()
  [[ $backend != native ]] && extra=(--no-compile)
  case $suite in
    steps | e2e | unet) cap=100 ;;
    *) cap=60 ;;
  esac
  [[ $backend != native ]] && cap=45
  if [[ $HAVE_CUDA == 1 || $DEVICE == cpu ]]; then
    phase "$name" "$cap" 20 "$PY" -m fastsde bench "$suite" --device "$DEVICE" --backend "$backend" "${extra[@]}" \
      "${QUICK[@]}" --json "$OUT/bench/${name#bench-}.json"
  else
    record "$name" "skipped (no CUDA)" 0 ""
  fi
done

# ---- the summary: phases, the GPU, every record's ratios ------------------------------------------------------------
"$PY" scripts/gpu_report.py "$OUT" | tee "$OUT/summary.md"
note "gpu_check: done in $(($(now) - START)) s; logs and records in $OUT$([[ $FAILED == 1 ]] && echo '; SOME PHASES FAILED')"
exit $FAILED
