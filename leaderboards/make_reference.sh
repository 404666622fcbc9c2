#!/usr/bin/env bash
# Regenerate reference entries: run each reference agent, file the result, then redraw the
# tables in leaderboards/README.md and the boards' figures (`plasticity-gym reference` does it).
#   leaderboards/make_reference.sh all cpu                      # every cpu board, one command
#   leaderboards/make_reference.sh SlowRegression-v0 cpu 5      # one board: env id, scale, seeds
#   AGENTS="backprop cbp" leaderboards/make_reference.sh PermutedMNIST-v0 smoke 3
#   AGENTS="backprop cbp" SEEDS=2 leaderboards/make_reference.sh all smoke
# `all` finds every env with a board of that scale and takes the agents and seeds of its stored
# reference entries (AGENTS / SEEDS override them). The runs are a job queue of JOBS processes at
# once (default: one per core), each with cores/JOBS torch threads; an interrupted suite resumes
# from the checkpoints under runs/. Uses ./.venv (./dev.sh creates it).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: make_reference.sh all SCALE | make_reference.sh ENV_ID SCALE SEEDS"
target=${1:?$usage}
scale=${2:?$usage}
bin=${VENV:-.venv}/bin
args=(reference "$scale")
if [[ "$target" == all ]]; then
  [[ -n "${SEEDS:-}" ]] && args+=(--seeds "$SEEDS")
  [[ -n "${AGENTS:-}" ]] && args+=(--agents $AGENTS)
else
  seeds=${3:?$usage}
  args+=(--env "$target" --seeds "$seeds" --agents ${AGENTS:-backprop adam l2 shrink-perturb cbp})
fi
[[ -n "${JOBS:-}" ]] && args+=(--jobs "$JOBS")
exec "$bin/plasticity-gym" "${args[@]}"
