#!/usr/bin/env bash
# jaxvision vs PyTorch at its best: eager, torch.compile and channels-last, interleaved.
#
#   benchmarks/compare_torch.sh                      # all four models, 3 repetitions each
#   REPS=5 STEPS=5 benchmarks/compare_torch.sh resnet18_cifar vit_ti4_cifar
#   JAX_ARGS=--config.parallel.cpu_devices=2 benchmarks/compare_torch.sh vit_ti4_cifar
#
# Models and batches (BATCH=N overrides every model's): resnet18_cifar and vit_ti4_cifar
# at 32 px, batch 128; resnet50_imagenet at 224 px, batch 16; vit_b16_imagenet at 224 px,
# batch 8 (sizes that run in minutes on 2 cores).
#
# Setups per repetition and model: jaxvision (`python -m jaxvision.benchmark`), PyTorch
# eager and torch.compile (inductor), and for the convolutional models also both with
# channels-last memory (shared/peers/torch_reference.py; SETUPS=... picks a subset, e.g.
# SETUPS="jax eager compile"). The order of the setups rotates from one repetition to the
# next. All use the same batch, image size, thread count and number of timed steps, after
# warm-up (torch.compile compiles during its warm-up steps, which are not timed; jaxvision
# compiles before its own), on random inputs, each as the mean over its timed steps.
# The table (benchmarks/compare_table.py) shows per model and step the ratio to the
# FASTEST PyTorch setup (by median), then the ratio to every setup; medians over
# repetitions with min-max; the machine line names the CPU model and ISA.
# Raw JSON lines go to $OUT (default benchmarks/results/compare-<time>.jsonl). Extra XLA
# flags: XLA_FLAGS; extra arguments for jaxvision's side only: JAX_ARGS.
#
# Wall time, measured UNDER LOAD (load average 8-12 on 2 cores from other jobs): one
# repetition of the two CIFAR models with all their setups took about 60 min (ResNet-18's
# five setups 39 min, ViT-Ti/4's three about 20), much of it compilation (jaxvision's and
# torch.compile's, twice per model: train and eval). A ResNet-50 step at batch 16 costs
# about what a ResNet-18 step at 128 does, a ViT-B/16 step at batch 8 about 1.5x a
# ViT-Ti/4 step at 128, and ResNet-50 compiles about twice as long, so the ImageNet pair
# takes about 1.5x the CIFAR pair: REPS=3 of all four is about 7-8 h at that load. Scaled
# by the load (a rough guess, not measured), about 1.5-2 h on a quiet machine. Measured
# quiet (AVX-512, load < 2): one repetition of resnet18_cifar with all five setups about
# 3 min, of vit_ti4_cifar with three setups about 2 min.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
STEPS=${STEPS:-5}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python}
PEER=${PEER:-../shared/peers/torch_reference.py}
if [ ! -f "$PEER" ]; then  # a git worktree: the peer sits beside the main checkout
  PEER="$(git rev-parse --git-common-dir)/../../shared/peers/torch_reference.py"
fi
JAX_ARGS=${JAX_ARGS:-}
SETUPS=${SETUPS:-jax eager compile compile-cl eager-cl}
# The first jaxvision run measures the matmul peak afresh: a cached one may come from a
# busier hour.
PEAK_ARGS=--peak_refresh
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(resnet18_cifar vit_ti4_cifar resnet50_imagenet vit_b16_imagenet)
mkdir -p benchmarks/results
OUT=${OUT:-benchmarks/results/compare-$(date -u +%Y%m%dT%H%M%S).jsonl}
: > "$OUT"

batch_of() {
  if [ -n "${BATCH:-}" ]; then echo "$BATCH"; return; fi
  case "$1" in
    resnet50_imagenet) echo 16 ;;
    vit_b16_imagenet) echo 8 ;;
    *) echo 128 ;;
  esac
}

machine() {
  local cpu flags isa=unknown
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for f in amx_tile:amx avx512f:avx512f avx2:avx2; do
    if [[ "$flags" == *" ${f%%:*} "* ]]; then isa=${f##*:}; break; fi
  done
  echo "{\"measurement\": \"machine\", \"cpu\": \"$cpu\", \"isa\": \"$isa\"," \
    "\"cores\": $(nproc), \"load_1min\": $(cut -d' ' -f1 /proc/loadavg)," \
    "\"when\": \"$(date -u +%FT%TZ)\"}"
}

# run SETUP MODEL BATCH: one JSON line per measurement of that setup.
run() {
  local setup=$1 model=$2 batch=$3
  if [ "$setup" = jax ]; then
    "$PYTHON" -m jaxvision.benchmark --config="benchmarks/peer_configs.py:$model" \
      --config.batch_size="$batch" --what=peak,train,infer --steps="$STEPS" --warmup=1 \
      --label="$model" $PEAK_ARGS $JAX_ARGS 2>/dev/null \
      | grep -E '"measurement": "(summary|train|infer)"'
    return
  fi
  local args=()
  [[ "$setup" == compile* ]] && args+=(--compile)
  [[ "$setup" == *-cl ]] && args+=(--channels-last)
  "$PYTHON" "$PEER" --model "$model" --batch "$batch" --steps "$STEPS" --threads "$THREADS" \
    "${args[@]}"
}

machine | tee -a "$OUT"
for rep in $(seq 1 "$REPS"); do
  for model in "${MODELS[@]}"; do
    setups=()
    for s in $SETUPS; do
      # Channels-last is a convolution layout: the ViTs run it as the plain setup.
      [[ "$s" == *-cl && "$model" == vit* ]] && continue
      setups+=("$s")
    done
    n=${#setups[@]}
    for i in $(seq 0 $((n - 1))); do
      setup=${setups[$(((i + rep - 1) % n))]}  # each repetition starts one setup later
      run "$setup" "$model" "$(batch_of "$model")" \
        | sed "s|^{|{\"rep\": $rep, \"bench\": \"$model${JAX_ARGS:+ $JAX_ARGS}\", |" \
        | tee -a "$OUT"
      if [ "$setup" = jax ]; then PEAK_ARGS=""; fi  # later runs read the cached peak
    done
  done
done
machine | tee -a "$OUT"
"$PYTHON" benchmarks/compare_table.py "$OUT"
