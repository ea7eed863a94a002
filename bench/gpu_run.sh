#!/usr/bin/env bash
# The GPU verification run (device machine: CuPy, numba, PyTorch, JAX, mpi4py preinstalled, no
# network). Usage there: bash bench/gpu_run.sh OUTDIR [pytest|train|bench|distributed|all]
set -uo pipefail
out=${1:?output folder}; what=${2:-all}
mkdir -p "$out"
python3 -m pip install --quiet --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { cat "$out/install.log"; exit 1; }
export FASTNET_DATA=${FASTNET_DATA:-$PWD/.data} PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
if [[ $what == pytest || $what == all ]]; then
  python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest-gpu.log" | tail -25
fi
if [[ $what == train || $what == all ]]; then
  fastnet train --backend cupy --epochs 20 --verbose 2 --cuda-graph off --json "$out/train-cupy.json" 2>&1 | tee "$out/train-cupy.log"
  fastnet train --backend cupy --epochs 20 --verbose 2 --cuda-graph on --json "$out/train-cupy-graph.json" 2>&1 | tee "$out/train-cupy-graph.log"
  fastnet train --backend cupy --epochs 20 --verbose 2 --precision tf32 --compiled-step on --json "$out/train-cupy-graph-tf32.json" 2>&1 | tee "$out/train-cupy-graph-tf32.log"
  fastnet train --backend cupy --preset best --verbose 2 --json "$out/train-preset-best-cupy.json" 2>&1 | tee "$out/train-preset-best-cupy.log"
fi
if [[ $what == bench || $what == all ]]; then
  fastnet bench --backends numpy,cupy --rounds 7 --json "$out/bench-gpu.json" --plot "$out/bench-gpu.png" 2>&1 | tee "$out/bench-gpu.log"
fi
if [[ $what == distributed || $what == all ]]; then  # mpi staged through the host, nccl on the GPU
  mpirun -n 2 fastnet train --distributed --comm mpi --backend cupy --epochs 3 --verbose 2 2>&1 | tee "$out/distributed-mpi-2ranks.log"
  mpirun -n 1 fastnet train --distributed --comm nccl --backend cupy --epochs 3 --verbose 2 2>&1 | tee "$out/distributed-nccl-1rank.log"
  mpirun -n 2 python3 -m fastnet.bench.distributed --backend cupy --json "$out/distributed-mpi-gpu.json" 2>&1 | tee -a "$out/distributed.log"
fi
