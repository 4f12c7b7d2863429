#!/usr/bin/env bash
# jaxvision vs the PyTorch eager peer, interleaved in one run on this machine.
#
#   benchmarks/compare_torch.sh                      # both models, 3 repetitions each
#   REPS=5 STEPS=5 benchmarks/compare_torch.sh vit_ti4_cifar
#   JAX_ARGS=--config.parallel.cpu_devices=2 benchmarks/compare_torch.sh
#
# For each repetition and model it runs `python -m jaxvision.benchmark` and the peer
# (shared/peers/torch_reference.py) back to back, alternating which goes first, with
# the same batch, image size, thread count and number of timed steps (each after
# warm-up, on random inputs). Both are timed as the mean over the timed steps (the
# peer's statistic); the table shows the median over repetitions, min-max across
# repetitions, the ratio of the medians (>1: jaxvision faster) and the median of the
# per-repetition ratios (each from two back-to-back runs). Raw JSON lines go
# to $OUT (default benchmarks/results/compare-<time>.jsonl). Extra XLA flags: XLA_FLAGS;
# extra arguments for jaxvision's side only (config overrides): JAX_ARGS, which the
# table's row names then carry.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
STEPS=${STEPS:-5}
BATCH=${BATCH:-128}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python}
PEER=${PEER:-../shared/peers/torch_reference.py}
JAX_ARGS=${JAX_ARGS:-}
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(resnet18_cifar vit_ti4_cifar)
mkdir -p benchmarks/results
OUT=${OUT:-benchmarks/results/compare-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$OUT"

machine() {
  local cpu
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  echo "{\"measurement\": \"machine\", \"cpu\": \"$cpu\", \"cores\": $(nproc)," \
    "\"load_1min\": $(cut -d' ' -f1 /proc/loadavg), \"when\": \"$(date -u +%FT%TZ)\"}"
}

run_jax() {
  "$PYTHON" -m jaxvision.benchmark --config="benchmarks/peer_configs.py:$1" \
    --config.batch_size="$BATCH" --what=peak,train,infer --steps="$STEPS" --warmup=1 \
    --label="$1" $JAX_ARGS 2>/dev/null | grep -E '"measurement": "(summary|train|infer)"'
}

run_peer() {
  "$PYTHON" "$PEER" --model "$1" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS"
}

machine | tee -a "$OUT"
for rep in $(seq 1 "$REPS"); do
  for model in "${MODELS[@]}"; do
    if (( rep % 2 )); then order=(run_jax run_peer); else order=(run_peer run_jax); fi
    for runner in "${order[@]}"; do
      "$runner" "$model" \
        | sed "s|^{|{\"rep\": $rep, \"bench\": \"$model${JAX_ARGS:+ $JAX_ARGS}\", |" \
        | tee -a "$OUT"
    done
  done
done
machine | tee -a "$OUT"
"$PYTHON" benchmarks/compare_table.py "$OUT"
