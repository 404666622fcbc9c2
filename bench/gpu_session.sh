#!/usr/bin/env bash
# Everything a CUDA machine should check, in one go (run from the repository root, with the
# package importable): the CPU-vs-CUDA check of every learner path, one whole run on CUDA, the
# test suite with CUDA visible, and the learner throughput on CUDA. Outputs go to $OUT (default
# ./gpu-out). Each part has its own time limit, so that one stuck part cannot hide the others
# (PYTEST_TIMEOUT, CHECK_TIMEOUT, CHECK_ONLY, THROUGHPUT_TIMEOUT, THROUGHPUT_PROBLEMS adjust them).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1  # MUJOCO_GL is left as the caller set it: egl needs libEGL installed
nvidia-smi -L
lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -E "amx_bf16|avx512_bf16|avx512f" /proc/cpuinfo | sort -u | tr "\n" " "; echo
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "== where a CUDA step spends its time (bench/profile_step.py)"
for agent in cbp backprop; do
  timeout 60 python3 bench/profile_step.py --device cuda --agent "$agent" --hidden 2000 2000 2000 --seeds 2 \
      --steps 200 --rows 15 2>&1 | grep -v "^USDT\|^ERROR:.*DeviceProperties" | tee "$OUT/profile_$agent.txt" | head -60
done
echo "== tests with CUDA visible"
# pytest-xdist spreads the suite over the machine's cores when it is installed.
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-8}")
timeout ${PYTEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider $XDIST --durations=10 tests 2>&1 \
    | tee "$OUT/pytest.txt" | tail -40
echo "== bench/gpu_check.py"
timeout ${CHECK_TIMEOUT:-240} python3 bench/gpu_check.py ${CHECK_ONLY:+--only $CHECK_ONLY} 2>&1 | tee "$OUT/gpu_check.txt"
echo "== plasticity-gym run on cuda"
timeout 60 python3 -m plasticity_gym.harness.cli run PermutedMNIST-v0 --agent cbp --scale smoke --seeds 3 --device cuda \
    --no-progress --out "$OUT/run_cuda.json" 2>&1 | tail -5
timeout 30 python3 -m plasticity_gym.harness.cli validate "$OUT/run_cuda.json" 2>&1 | tail -2
timeout 90 python3 -m plasticity_gym.harness.cli run AntFriction-v0 --agent ppo-cbp --scale smoke --seeds 2 --device cuda \
    --no-progress --out "$OUT/ant_cuda.json" 2>&1 | tail -3
echo "== bench/throughput.py on cuda"
timeout ${THROUGHPUT_TIMEOUT:-150} python3 bench/throughput.py --quick --windows 3 --device cuda \
    --problems ${THROUGHPUT_PROBLEMS:-mnist-3x100 mnist-3x2000} 2>&1 | tee "$OUT/throughput.txt"
