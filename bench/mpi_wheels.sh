#!/usr/bin/env bash
# MPICH and mpi4py as wheels for the GPU machine (its image has mpi4py but no MPI runtime, and no
# network): run here, then carry .whl with .data; bench/gpu_run.sh installs them when it finds no
# mpirun. PY_VERSION: the device's Python (3.12).
set -euo pipefail
py=${PY_VERSION:-3.12}
mkdir -p .whl && rm -f .whl/mpich-*.whl .whl/mpi4py-*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 \
  manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d .whl "mpich>=4.3" "mpi4py>=4.1"
ls -l .whl
