#!/usr/bin/env bash
# Create .venv (if missing), install the pinned dev requirements, and build fastsde._C in place
# (editable install). Idempotent: the extension is rebuilt only when csrc/, setup.py or pyproject.toml changed
# since the last build, when it does not import, or when FASTSDE_REBUILD=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python

echo "bootstrap: installing requirements-dev.txt"
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
echo "bootstrap: installing requirements-nodeps.txt (--no-deps)"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt

stamp=$(ls fastsde/_C*.so 2>/dev/null | head -n 1 || true)
rebuild=${FASTSDE_REBUILD:-0}
if [[ -z "$stamp" ]]; then
  rebuild=1
elif [[ -n "$(find csrc setup.py pyproject.toml -newer "$stamp" -print -quit)" ]]; then
  rebuild=1
elif ! "$PY" -c "import torch; from fastsde import _C" >/dev/null 2>&1; then
  rebuild=1
elif ! "$PY" -m pip show --quiet fastsde >/dev/null 2>&1; then
  rebuild=1
fi

if [[ "$rebuild" == 1 ]]; then
  echo "bootstrap: building fastsde._C (pip install --no-build-isolation -e .)"
  start=$SECONDS
  "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e ".[digits]"
  echo "bootstrap: built in $((SECONDS - start)) s"
else
  echo "bootstrap: fastsde._C is up to date ($stamp)"
fi
"$PY" -c "import torch; from fastsde import _native; assert _native.available(), _native.unavailable_reason(); print('bootstrap: native build_info', _native.build_info())"
