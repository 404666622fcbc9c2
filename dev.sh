#!/usr/bin/env bash
# One entry point for set-up and the everyday jobs. Creates ./.venv on first use.
#   ./dev.sh demo   install, then run a short reference job on the embedded data
#   ./dev.sh test   install, then run the test suite
#   ./dev.sh bench  install, then run the benchmarks in bench/
set -euo pipefail
cd "$(dirname "$0")"
VENV=${PLASTICITY_GYM_VENV:-.venv}
PY=${PYTHON:-python3}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # constraints.txt pins the torch/torchvision pair; pyproject.toml keeps the ranges.
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test,plot]"
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    install
    "$VENV/bin/plasticity-gym" run SlowRegression-v0 --agent cbp --scale smoke --seeds 3 --out runs/demo.json "$@"
    "$VENV/bin/plasticity-gym" leaderboard SlowRegression-v0 --scale smoke --include runs/demo.json
    ;;
  test)
    install
    "$VENV/bin/python" -m pytest -q "$@"
    ;;
  bench)
    install
    for b in bench/*.py; do echo "== $b"; "$VENV/bin/python" "$b" "$@"; done
    ;;
  *)
    echo "usage: ./dev.sh demo|test|bench [args...]" >&2
    exit 2
    ;;
esac
