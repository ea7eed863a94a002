#!/usr/bin/env bash
# The GPU verification run (device machine: CuPy, numba, PyTorch preinstalled, no network).
# Usage there: bash bench/gpu_run.sh OUTDIR [pytest|bench|train|all]
set -uo pipefail
out=${1:?output folder}; what=${2:-all}
mkdir -p "$out"
python3 -m pip install --quiet --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { cat "$out/install.log"; exit 1; }
export FASTNET_DATA=${FASTNET_DATA:-$PWD/.data} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
if [[ $what == pytest || $what == all ]]; then
  python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest-gpu.log" | tail -25
fi
if [[ $what == train || $what == all ]]; then
  fastnet train --backend cupy --epochs 20 --verbose 2 --json "$out/train-cupy.json" 2>&1 | tee "$out/train-cupy.log"
  fastnet train --backend cupy --epochs 20 --verbose 2 --cuda-graph --json "$out/train-cupy-graph.json" 2>&1 | tee "$out/train-cupy-graph.log"
fi
if [[ $what == bench || $what == all ]]; then
  fastnet bench --backends numpy,cupy --rounds 7 --json "$out/bench-gpu.json" --plot "$out/bench-gpu.png" 2>&1 | tee "$out/bench-gpu.log"
fi
