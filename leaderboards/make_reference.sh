#!/usr/bin/env bash
# Regenerate the reference entries of one board: run each reference agent, file the result,
# then redraw the tables in leaderboards/README.md and the board's figure.
#   leaderboards/make_reference.sh SlowRegression-v0 cpu 5      # env id, scale, seeds
#   AGENTS="backprop cbp" leaderboards/make_reference.sh PermutedMNIST-v0 smoke 3
# Uses ./.venv (./dev.sh creates it). One torch thread per run, so two boards can run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
env_id=${1:?usage: make_reference.sh ENV_ID SCALE SEEDS}
scale=${2:?usage: make_reference.sh ENV_ID SCALE SEEDS}
seeds=${3:?usage: make_reference.sh ENV_ID SCALE SEEDS}
agents=${AGENTS:-backprop adam l2 shrink-perturb cbp}
bin=${VENV:-.venv}/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "runs/$scale"
for agent in $agents; do
  out="runs/$scale/$env_id-$agent.json"
  "$bin/plasticity-gym" run "$env_id" --agent "$agent" --scale "$scale" --seeds "$seeds" \
      --out "$out" --no-progress --resume
  "$bin/plasticity-gym" submit "$out" --name "$agent"
done
"$bin/plasticity-gym" leaderboard --update-readme leaderboards/README.md
mkdir -p leaderboards/figures
"$bin/plasticity-gym" plot leaderboards/"$env_id"/"$scale"/*.json \
    --out "leaderboards/figures/$env_id-$scale.png" --title "$env_id, scale $scale"
