#!/usr/bin/env bash
# New cells without retraining: train the many-cells configuration (induced attention + profile cell
# encoder) on some cells, then score hidden calls of the trained cells and of cells the model never
# saw, side by side, in one store that holds both (every cell visible as input, 20 % of the test
# chromosome's observed calls hidden in read-sized runs; `benchmark --exclude-cells` scores one group
# at a time).
#
# Cases: `sim` — a simulated 2,000-cell set (4 cell types, 100 kb cut into contigs chrA (train),
# chrV (validation), chrT (test)), 1,600 trained cells; `scbs` — the 27 scbs cells of
# benchmarks/cells_accuracy.sh, 22 trained (cells 01-09, 11-19, 21-24), 5 new (25-29).
# Usage: bash benchmarks/new_cells.sh sim|scbs [OUT_DIR]
# Knobs: STEPS (default 600), MODEL_ARGS (default: compact model), CPGFORMER_SHARED. The simulated
# case trains on 256 random cells per step (segments of 128 sites).
set -euo pipefail
cd "$(dirname "$0")/.."
CASE=${1:?sim or scbs}
OUT=${2:-bench_new_cells_$CASE}
SHARED=${CPGFORMER_SHARED:-../shared}
STEPS=${STEPS:-600}
MODEL_ARGS=${MODEL_ARGS:-"--hidden 32 --n-layers 2 --n-heads 4 --segment-length 256 --batch-size 2 \
--warmup-steps 50 --lr 2e-3 --lr-decay 1.0 --no-early-stopping \
--limit-val-batches 10 --no-tensorboard --mode induced --cell-encoder profile"}
CPGFORMER=${CPGFORMER:-.venv/bin/cpgformer}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

trained=(); new=()
if [ "$CASE" = sim ]; then
  if [ ! -f "$OUT/genome3.fa" ]; then
    "$PY" - "$OUT/genome3.fa" <<'PYEOF'
import sys
import numpy as np
from cpgformer.data.simulate import synthetic_genome
seq = synthetic_genome(100_000, seed=2)["chrS"]
letters = np.array(list("ATCGN"))[np.clip(seq, 0, 4)]
parts = {"chrA": letters[:60_000], "chrV": letters[60_000:75_000], "chrT": letters[75_000:]}
with open(sys.argv[1], "w") as fh:
    for name, s in parts.items():
        fh.write(f">{name}\n")
        text = "".join(s)
        for i in range(0, len(text), 60):
            fh.write(text[i : i + 60] + "\n")
PYEOF
  fi
  [ -d "$OUT/sim" ] || "$CPGFORMER" simulate --fasta "$OUT/genome3.fa" --cells 2000 --cell-types 4 \
    --seed 2 -o "$OUT/sim"
  mapfile -t files < <(ls "$OUT"/sim/cells/*.cov.gz)
  trained=("${files[@]:0:1600}"); new=("${files[@]:1600}")
  VAL=chrV; TEST=chrT; PREP_ARGS="--fasta $OUT/genome3.fa"
  CASE_ARGS="--segment-length 128 --batch-size 1 --resample-cells 256"
else
  DATA="$SHARED/data/scbs_tutorial"
  for i in 01 02 03 04 05 06 07 08 09 11 12 13 14 15 16 17 18 19 21 22 23 24; do
    trained+=("$DATA/cell_$i.cov.gz"); done
  for i in 25 26 27 28 29; do new+=("$DATA/cell_$i.cov.gz"); done
  VAL=5; TEST=10; PREP_ARGS="--pair-adjacent"; CASE_ARGS=""
fi
# shellcheck disable=SC2086
[ -d "$OUT/store-train" ] || "$CPGFORMER" -q prepare "${trained[@]}" $PREP_ARGS -o "$OUT/store-train"
# shellcheck disable=SC2086
[ -d "$OUT/store-all" ] || "$CPGFORMER" -q prepare "${trained[@]}" "${new[@]}" $PREP_ARGS -o "$OUT/store-all"
if [ ! -f "$OUT/run/checkpoints/last.ckpt" ]; then
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$CPGFORMER" train "$OUT/store-train" -o "$OUT/run" --val-chromosomes "$VAL" \
    --test-chromosomes "$TEST" --max-steps "$STEPS" $MODEL_ARGS $CASE_ARGS --seed 0
  echo "train seconds: $(( $(date +%s) - start ))" | tee "$OUT/train_time.txt"
fi
names() { for f in "$@"; do basename "$f" | sed 's/\.cov\.gz$//'; done | paste -sd, -; }
for group in trained new; do
  if [ "$group" = trained ]; then skip=$(names "${new[@]}"); else skip=$(names "${trained[@]}"); fi
  [ -d "$OUT/bench-$group" ] || "$CPGFORMER" benchmark "$OUT/store-all" \
    --models cpgformer,site-mean,knn-cells --checkpoint "$OUT/run/checkpoints/last.ckpt" \
    --test-chroms "$TEST" --hide-fraction 0.2 --seed 0 --no-plots --exclude-cells "$skip" \
    -o "$OUT/bench-$group"
done
for group in trained new; do echo "== $group cells"; cut -f1-6 "$OUT/bench-$group/metrics.tsv"; done
