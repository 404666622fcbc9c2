#!/usr/bin/env bash
# Everything a CUDA machine should check, in one go (run from the repository root, with the
# package importable): the CPU-vs-CUDA check of every learner path, one whole run on CUDA, the
# test suite with CUDA visible, and the learner throughput on CUDA. Outputs go to $OUT (default
# ./gpu-out). Each part has its own time limit, so that one stuck part cannot hide the others.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1  # MUJOCO_GL is left as the caller set it: egl needs libEGL installed
nvidia-smi -L
lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -E "amx_bf16|avx512_bf16|avx512f" /proc/cpuinfo | sort -u | tr "\n" " "; echo
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "== bench/gpu_check.py"
timeout 240 python3 bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.txt"
echo "== plasticity-gym run on cuda"
timeout 60 plasticity-gym run PermutedMNIST-v0 --agent cbp --scale smoke --seeds 3 --device cuda \
    --no-progress --out "$OUT/run_cuda.json" 2>&1 | tail -5
timeout 30 plasticity-gym validate "$OUT/run_cuda.json" 2>&1 | tail -2
echo "== tests with CUDA visible"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.txt" | tail -40
echo "== bench/throughput.py on cuda"
timeout 150 python3 bench/throughput.py --quick --windows 3 --device cuda --problems mnist-3x100 mnist-3x2000 \
    2>&1 | tee "$OUT/throughput.txt"
