#!/usr/bin/env bash
# One entry point for set-up and the everyday jobs. Creates ./.venv on first use.
#   ./dev.sh demo   install, then show loss of plasticity: backprop vs CBP, a couple of minutes
#   ./dev.sh test   install (and Chromium for the browser test, as root), then run the test suite
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

# The web leaderboard's browser test drives the system Chromium through Selenium: Debian's
# chromium and chromium-driver, installed here when missing and apt-get can run as root (CI runs
# as root). Selenium is pointed at them and never downloads a browser; without them the test skips.
browser() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "dev.sh: no chromium/chromedriver and no root apt-get: the browser test will be skipped" >&2
    return 0
  fi
  echo "dev.sh: installing chromium and chromium-driver (apt-get) for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "dev.sh: apt-get could not install chromium; the browser test will be skipped" >&2
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    install
    # backprop vs CBP, 10 seeds: one sentence with the numbers, the figure's path (plasticity-gym demo --help)
    "$VENV/bin/plasticity-gym" demo "$@"
    ;;
  test)
    install
    browser
    "$VENV/bin/python" -m pytest -q --durations=15 "$@"
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
