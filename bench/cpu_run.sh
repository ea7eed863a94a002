#!/usr/bin/env bash
# One CPU machine's results, as committed under bench/results/<cpu>/ and quoted in the README:
#
#   bash bench/cpu_run.sh OUTDIR [ROUNDS]      (repository root; .venv from `make`, JAX for the
#                                               peer: .venv/bin/pip install jax)
#
# One benchmark at a time (never two on the same cores), OMP_NUM_THREADS = the cores:
#   lscpu.txt
#   bench-train-jax.{json,log}   training epochs against the peers (ROUNDS, default 9)
#   bench-kernels.{json,log}     kernels, Adam with normal and 20% subnormal slots (ROUNDS)
#   floor-breakdown.{json,log}   the stripped-loop floor breakdown (ROUNDS)
#   bench-inference.{json,log}   predict_proba against onnxruntime (21 rounds)
#   pair-jax.log                 the numba fused epoch against JAX jit + lax.scan alone (21)
#   train-{numba,numpy}.{json,log}  `fastnet train`, the default 20 epochs
# QUICK=1: small sizes, 2 rounds, 1 training epoch on 2,000 rows (what the test runs).
set -euo pipefail
out=${1:?usage: bash bench/cpu_run.sh OUTDIR [ROUNDS]}
rounds=${2:-9} long=21 quick=() train=()
if [[ ${QUICK:-0} == 1 ]]; then
  results=$(cd "$(dirname "$0")" && pwd -P)/results  # (this script's own folder's)
  target=$(realpath -m "$out" 2>/dev/null) || target=""  # (GNU realpath; none: no check)
  case "$target/" in  # a smoke test's files are no result: never among them
    "$results"/*) echo "QUICK=1 writes no results under bench/results" >&2; exit 2 ;;
  esac
  rounds=2 long=2 quick=(--quick) train=(--epochs 1 --limit 2000)
fi
bin=${VENV:-.venv}/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$out"
lscpu >"$out/lscpu.txt" 2>&1 || echo "lscpu unavailable" >"$out/lscpu.txt"
cpu=$(sed -n 's/^Model name: *//p' "$out/lscpu.txt")

bench() {  # bench SUITE NAME ROUNDS
  "$bin/fastnet" bench --suite "$1" --rounds "$3" "${quick[@]}" --json "$out/$2.json" \
    >"$out/$2.log" 2>&1
}
bench train bench-train-jax "$rounds"
bench kernels bench-kernels "$rounds"
bench floor floor-breakdown "$rounds"
bench inference bench-inference "$long"
{
  echo "# python -m fastnet.bench.pair_jax $long (OMP_NUM_THREADS=$OMP_NUM_THREADS)," \
    "$(date +%F), ${cpu:-unknown CPU}, float32"
  if "$bin/python" -c "import jax" 2>/dev/null; then
    "$bin/python" -m fastnet.bench.pair_jax "$long" "${quick[@]}"
  else
    echo "JAX is not installed: no pairing"
  fi
} >"$out/pair-jax.log" 2>&1
for backend in numba numpy; do
  "$bin/fastnet" train --backend "$backend" --verbose 2 "${train[@]}" \
    --json "$out/train-$backend.json" >"$out/train-$backend.log" 2>&1
done
echo "wrote $out ($cpu)"
