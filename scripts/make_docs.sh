#!/usr/bin/env bash
# Regenerate the pictures and measured numbers the README shows (docs/digits/, docs/bench/), in one run on this
# machine. Takes ~40 minutes on 2 cores; run it on a quiet machine (other processes distort the timings).
# STAGES picks a subset: STAGES="digits e2e tradeoff unet" (the default: all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
F=.venv/bin/fastsde
PY=.venv/bin/python
STAGES=${STAGES:-"digits e2e tradeoff unet"}
mkdir -p docs/digits docs/bench
lscpu | grep -E "Model name" | sed 's/  */ /g' > docs/bench/cpu.txt
grep -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ' >> docs/bench/cpu.txt
for stage in $STAGES; do
  case $stage in
    digits)
      $F sample --seed 0 --no-progress --json --out docs/digits/samples > docs/digits/samples.json
      $F sample --class-label all --n 100 --seed 0 --no-progress --json --out docs/digits/classes \
        > docs/digits/classes.json
      $F inpaint --n 16 --seed 0 --no-progress --json --out docs/digits/inpaint > docs/digits/inpaint.json
      rm -f docs/digits/*.npz ;;
    e2e) $F bench e2e --json docs/bench/e2e.json ;;
    tradeoff)
      # PC 50/200/1000, RK45 at rtol 1e-2/1e-3 and every few-step solver at ~5/10/20/50 model evaluations, each over
      # seeds 0-2 at n = 359 (every test digit), with the ODE error of the deterministic ones (docs/design.md s. 13)
      $PY -c "
import json, torch
torch.set_num_threads(2)
from fastsde.benchmarks import bench_e2e
r = bench_e2e.tradeoff(pc_steps=(50, 200, 1000), ode_rtols=(1e-2, 1e-3), pc_precisions=('fp32',))
json.dump(r, open('docs/bench/e2e_tradeoff.json', 'w'), indent=1)
bench_e2e.plot_tradeoff(r, 'docs/bench/e2e_tradeoff.png')" ;;
    unet) $F bench unet --json docs/bench/bench_unet.json ;;
  esac
done
