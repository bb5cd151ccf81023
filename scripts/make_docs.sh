#!/usr/bin/env bash
# Regenerate the pictures and measured numbers the README shows (docs/digits/, docs/bench/e2e*), in one run on
# this machine. Takes ~15 minutes on 2 cores; run it on a quiet machine (other processes distort the timings).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
F=.venv/bin/fastsde
mkdir -p docs/digits docs/bench
$F sample --seed 0 --no-progress --json --out docs/digits/samples > docs/digits/samples.json
$F sample --class-label all --n 100 --seed 0 --no-progress --json --out docs/digits/classes > docs/digits/classes.json
$F inpaint --n 16 --seed 0 --no-progress --json --out docs/digits/inpaint > docs/digits/inpaint.json
$F eval --n 256 --seed 0 --no-progress --json > docs/digits/eval.json
$F likelihood --n 32 --seed 0 --json > docs/digits/likelihood.json
rm -f docs/digits/*.npz
$F bench e2e --json docs/bench/e2e.json --tradeoff docs/bench/e2e_tradeoff
