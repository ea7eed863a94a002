#!/usr/bin/env bash
# The GPU verification run, staged to fit one 8-minute call of a lent H100/H200 (device machine:
# CuPy, numba, PyTorch, JAX, mpi4py, pytest preinstalled; no network).
#
#   bash bench/gpu_run.sh OUTDIR [--dry-run] [all|pytest|graph|train|bench|distributed ...]
#
# Stages (each under its own `timeout`, all within TOTAL_S: default 450 s, 240 s for `speed`
# alone) and the files they fill:
#   gpu, setup        nvidia-smi; `pip install --no-deps -e .`; versions        -> gpu.txt
#   pytest-cupy       the GPU tests (-k cupy, not cupy-emulated), -n 8 with xdist -> pytest.log
#   graph-check       eager vs compiled step on Fashion-MNIST, every optimizer x schedule
#                                                            -> graph-check.json (table: train.log)
#   train-*           4 epochs each: eager fp32, CUDA graph fp32, CUDA graph tf32, eager
#                     mixed_float16 and mixed_bfloat16                        -> train.log
#   preset-best       --preset best --epochs 2                                   -> train.log
#   distributed-*     two epochs and 100 timed all-reduces over MPI (2 ranks, GPU arrays staged)
#                     and NCCL (1 rank, captured), if mpirun exists or MPICH's wheels were
#                     carried in .whl (bash bench/mpi_wheels.sh)               -> distributed.log
#   bench-kernels     the GPU kernel suite                                 -> bench.json, bench.log
#   bench-train       only when asked for (`speed`, not part of `all`: a call of its own after
#                     the check): the train suite, fastnet's graphs (32 and 1 step per replay,
#                     cuBLAS instead of cuBLASLt, autotuned GEMMs) against JAX jit+scan and
#                     PyTorch's CUDA graph, fp32 and tf32, and the big MLP against its matmuls
#                                                          -> bench-train.json (log: bench.log)
# summary.txt has one "PASS|FAIL|SKIP  stage  detail" line per stage, then the trainings' numbers:
# 8 files in all. Exit status 1 when a stage failed or was skipped for want of time.
# Data: $FASTNET_DATA, else ./.data when present (the device has no Fashion-MNIST: carry it, after
#   mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*.gz .data/).
# --dry-run (or DRY_RUN=1): on a CPU machine every stage runs on numba/numpy with tiny sizes and
# the GPU-only parts print "SKIP (no GPU)". PYTHON picks the interpreter (default python3).
set -uo pipefail
out="" dry=${DRY_RUN:-0} groups=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) if [[ -z $out ]]; then out=$arg; else groups+=("$arg"); fi ;;
  esac
done
[[ -n $out ]] || { echo "usage: bash bench/gpu_run.sh OUTDIR [--dry-run] [STAGES...]" >&2; exit 2; }
[[ ${#groups[@]} -gt 0 ]] || groups=(all)
PY=${PYTHON:-python3}
mkdir -p "$out" && rm -f "$out"/{summary.txt,gpu.txt,pytest.log,graph-check.json,train.log}
rm -f "$out"/{bench.json,bench.log,distributed.log,bench-train.json}
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
speed_only=0 && [[ ${groups[*]} == speed ]] && speed_only=1
deadline=$(( SECONDS + ${TOTAL_S:-$( (( speed_only )) && echo 240 || echo 450)} ))
if [[ -z ${FASTNET_DATA:-} && -d .data ]]; then export FASTNET_DATA=$PWD/.data; fi
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # no ptrace/CMA in the device's VM
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX shares the GPU with CuPy and PyTorch
export CUBLASLT_LOG_LEVEL=${CUBLASLT_LOG_LEVEL:-1}  # cuBLASLt's errors, with their reason, in the logs

wanted() {  # wanted GROUP: whether the command line asked for this group of stages
  local g
  for g in "${groups[@]}"; do [[ $g == all || $g == "$1" ]] && return 0; done
  return 1
}

record() {  # record RESULT STAGE DETAIL
  printf '%-4s  %-20s %s\n' "$1" "$2" "$3" | tee -a "$out/summary.txt"
}

stage() {  # stage NAME LIMIT_S LOG CMD...: run CMD under min(LIMIT_S, time left), log appended
  local name=$1 limit=$2 log=$3 left=$(( deadline - SECONDS )) start=$SECONDS rc
  shift 3
  if (( left < 20 )); then record SKIP "$name" "(out of time: ${left}s left)"; return; fi
  (( limit > left - 10 )) && limit=$(( left - 10 ))
  echo "=== $name (limit ${limit}s): $*" >>"$out/$log"
  timeout -k 10 "$limit" "$@" >>"$out/$log" 2>&1
  rc=$?
  if (( rc == 0 )); then record PASS "$name" "($(( SECONDS - start ))s)"
  elif (( rc == 124 || rc == 137 )); then record FAIL "$name" "(timed out after ${limit}s; $log)"
  else record FAIL "$name" "(exit $rc after $(( SECONDS - start ))s; $log)"; fi
}

mpi_from_wheels() {  # no MPI launcher (the device image has mpi4py, no MPI): MPICH and an
  # mpi4py of its ABI from carried wheels (bash bench/mpi_wheels.sh; carry .whl), into $tmp/mpi
  # (MPI_WHEELS=1: even where an MPI is installed, to try this path on a CPU machine)
  if [[ ${MPI_WHEELS:-0} != 1 ]] && { command -v mpirun || command -v mpiexec; } >/dev/null; then
    return
  fi
  compgen -G ".whl/mpich-*.whl" >/dev/null || return
  "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --prefix "$tmp/mpi" .whl/mpich-*.whl .whl/mpi4py-*.whl >>"$out/distributed.log" 2>&1 || return
  local site
  site=$(echo "$tmp"/mpi/lib/python3*/site-packages)
  export PATH=$tmp/mpi/bin:$PATH LD_LIBRARY_PATH=$tmp/mpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  echo "MPI from wheels: $(mpichversion 2>/dev/null | head -1)" >>"$out/distributed.log"
}

# Sizes and backends: the real run, or the CPU dry run.
if (( dry )); then
  be=numba small=(--limit 1000 --layers 64) epochs=(--epochs 1)
  preset=(--epochs 1 --limit 500 --layers 128,64)
  gc=(--backend numba --rows 512 --epochs 1) mpi_be=numpy
  bench=(--backends numpy --suite kernels --quick --rounds 1)
  speed=(--backends numpy --suite train --quick --rounds 1)
  tests=(tests/test_backends.py)  # (the stage's plumbing: collecting all tests takes 9 s)
else
  be=cupy small=() epochs=(--epochs 4) preset=(--epochs 2) gc=(--backend cupy) mpi_be=cupy
  bench=(--backends cupy --suite kernels --rounds 5)
  speed=(--backends cupy --suite train --rounds 5) tests=(tests)
fi
train=("$PY" -m fastnet.cli train --verbose 2 --backend "$be" "${small[@]}")
nogpu() { record SKIP "$1" "(no GPU)"; }

if (( dry )); then nogpu gpu; else stage gpu 20 gpu.txt nvidia-smi; fi
if (( dry )); then
  stage setup 30 gpu.txt "$PY" -c "import fastnet, numpy; print('fastnet', fastnet.__version__)"
else
  # no install possible (e.g. an older setuptools): the two mapped packages linked in place
  stage setup 90 gpu.txt bash -c "{ $PY -m pip install -q --no-deps --no-build-isolation \
    --no-index --disable-pip-version-check -e . || { ln -sfn ../kernels fastnet/kernels &&
    ln -sfn ../bench fastnet/bench && echo 'pip failed: fastnet.kernels/.bench linked'; }; } &&
    $PY -m fastnet.bench.gpu_facts"
fi
if wanted pytest; then
  xdist=() && "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$( (( dry )) && echo 2 || echo 8)")
  stage pytest-cupy 150 pytest.log "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" \
    "${tests[@]}" -k "cupy and not emulated and not network"
fi
if wanted graph || wanted train; then
  stage graph-check 120 train.log "$PY" -m fastnet.bench.graph_check "${gc[@]}" \
    --out "$out/graph-check.json"
fi
if wanted train; then
  stage train-eager-fp32 60 train.log "${train[@]}" "${epochs[@]}" --cuda-graph off \
    --json "$tmp/train-eager-fp32.json"
  stage train-graph-fp32 60 train.log "${train[@]}" "${epochs[@]}" --cuda-graph on \
    --json "$tmp/train-graph-fp32.json"
  if (( dry )); then nogpu train-graph-tf32; else
    stage train-graph-tf32 60 train.log "${train[@]}" "${epochs[@]}" --cuda-graph on \
      --precision tf32 --json "$tmp/train-graph-tf32.json"
  fi
  for policy in mixed_float16 mixed_bfloat16; do  # captured (--compiled-step auto), else eager
    if (( dry )); then nogpu "train-$policy"; else
      stage "train-$policy" 60 train.log "${train[@]}" "${epochs[@]}" --dtype "$policy" \
        --json "$tmp/train-$policy.json"
    fi
  done
  stage preset-best 90 train.log "$PY" -m fastnet.cli train --verbose 2 --backend "$be" \
    --preset best "${preset[@]}" --json "$tmp/preset-best.json"
fi
if wanted distributed; then
  mpi_from_wheels
  mpirun=$(command -v mpirun || command -v mpiexec || command -v "$(dirname "$(command -v "$PY")")/mpiexec")
  if [[ -z $mpirun ]]; then
    record SKIP distributed-mpi "(no mpirun/mpiexec)"; record SKIP distributed-nccl "(no mpirun)"
  else
    dp=("$PY" -m fastnet.bench.distributed --epochs 2 --repeats 100)  # + all-reduce timing
    stage distributed-mpi 60 distributed.log "$mpirun" -n 2 "${dp[@]}" --backend "$mpi_be" \
      --comm mpi
    if (( dry )); then nogpu distributed-nccl; else  # the all-reduce inside the graph
      stage distributed-nccl 60 distributed.log "$mpirun" -n 1 "${dp[@]}" --backend cupy \
        --comm nccl --compiled on
    fi
  fi
fi
if wanted bench; then
  stage bench-kernels 75 bench.log "$PY" -m fastnet.cli bench "${bench[@]}" \
    --json "$out/bench.json"
fi
if [[ " ${groups[*]} " == *" speed "* ]]; then
  stage bench-train 230 bench.log "$PY" -m fastnet.cli bench "${speed[@]}" \
    --json "$out/bench-train.json"
fi

# The trainings' numbers under the stage lines, then the file count (the device returns 8).
"$PY" - "$tmp" >>"$out/summary.txt" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    print(f"      {path.stem:20s} test accuracy {r['test']['accuracy']:.4f}  "
          f"{r['s_per_epoch']:.2f} s/epoch  {r['step']}")
EOF
files=$(find "$out" -maxdepth 1 -type f | wc -l)
echo "      $files files in $out" >>"$out/summary.txt"
(( files <= 8 )) || record FAIL outputs "($files files; the device returns 8)"
echo "summary: $out/summary.txt"
! grep -qE '^(FAIL|SKIP .*out of time)' "$out/summary.txt"  # (a stage not run is not a pass)
