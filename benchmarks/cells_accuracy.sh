#!/usr/bin/env bash
# Accuracy of the many-cells configuration (induced attention + profile cell encoder) against full
# axial attention (published mode, cell table), same data, split, model size and training budget,
# and against the per-site mean and k-nearest cells, on identical hidden calls.
#
# Data: ../shared/data/scbs_tutorial, the 27 cells of benchmarks/real_data_benchmark.sh (cells 10,
# 20, 30 left out), chromosome hold-out: 5 validates, 10 is the test chromosome (20 % of its
# observed calls hidden in read-sized runs, seed 0); baselines are fitted on every other chromosome.
#
# Usage: bash benchmarks/cells_accuracy.sh [OUT_DIR]   (default bench_cells)
# Knobs (environment): STEPS (default 600), MODEL_ARGS (default: the compact model), CPGFORMER_SHARED.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_cells}
SHARED=${CPGFORMER_SHARED:-../shared}
DATA="$SHARED/data/scbs_tutorial"
STEPS=${STEPS:-600}
MODEL_ARGS=${MODEL_ARGS:-"--hidden 32 --n-layers 2 --n-heads 4 --segment-length 256 --batch-size 2 \
--warmup-steps 50 --lr 2e-3 --lr-decay 1.0 --no-early-stopping --val-check-interval 200 \
--limit-val-batches 20 --no-tensorboard"}
CPGFORMER=${CPGFORMER:-.venv/bin/cpgformer}
mkdir -p "$OUT"
files=()
for i in $(seq -w 1 30); do
  case "$i" in 10|20|30) continue ;; esac
  files+=("$DATA/cell_$i.cov.gz")
done
[ -d "$OUT/store" ] || "$CPGFORMER" prepare "${files[@]}" --pair-adjacent -o "$OUT/store"

declare -A VARIANT=(
  [axial]="--mode axial --cell-encoder table"
  [induced]="--mode induced --cell-encoder profile"
)
for name in axial induced; do
  if [ ! -f "$OUT/run-$name/checkpoints/last.ckpt" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$CPGFORMER" train "$OUT/store" -o "$OUT/run-$name" --val-chromosomes 5 --test-chromosomes 10 \
      --max-steps "$STEPS" $MODEL_ARGS ${VARIANT[$name]} --seed 0
    echo "$name train seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/times.txt"
  fi
  [ -d "$OUT/bench-$name" ] || "$CPGFORMER" benchmark "$OUT/store" \
    --models cpgformer,site-mean,knn-cells --checkpoint "$OUT/run-$name/checkpoints/last.ckpt" \
    --test-chroms 10 --hide-fraction 0.2 --seed 0 --no-plots -o "$OUT/bench-$name"
done
for name in axial induced; do
  echo "== $name"; cat "$OUT/bench-$name/metrics.tsv" 2>/dev/null | cut -f1-6
done
