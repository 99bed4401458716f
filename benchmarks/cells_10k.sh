#!/usr/bin/env bash
# Many cells end to end (#A2 of the many-cells work): 10,000 simulated cells (4 cell types) at a
# 100 kb region -> train with the defaults the tool picks, within a time budget on this CPU ->
# impute every cell (peak memory) -> benchmark against the per-site mean and k-nearest cells on
# the test contig, overall and per cell type (paired bootstrap intervals).
#
# Usage: bash benchmarks/cells_10k.sh OUT_DIR [BUDGET]     (default budget 50m)
# The simulated data (simulate --genome-length 100000 --seed 1, contigs chrA training, chrV
# validation, chrT test) is made in OUT_DIR/sim unless it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: cells_10k.sh OUT_DIR [BUDGET]}
BUDGET=${2:-50m}
CPGFORMER=${CPGFORMER:-.venv/bin/cpgformer}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
stamp() { echo "$(date -u +%FT%TZ) $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$OUT/timeline.txt"; }
if [ ! -f "$OUT/sim/store/manifest.json" ]; then
  stamp "simulate"
  "$CPGFORMER" simulate --genome-length 100000 --seed 1 -o "$OUT/genome" -q --cells 2 --no-overwrite
  "$PYTHON" - "$OUT/genome/genome.fa" "$OUT/genome3.fa" <<'PY'
import sys
seq = "".join(l.strip() for l in open(sys.argv[1]) if not l.startswith(">"))
with open(sys.argv[2], "w") as out:
    for name, a, b in (("chrA", 0, 60000), ("chrV", 60000, 75000), ("chrT", 75000, 100000)):
        out.write(f">{name}\n")
        for i in range(a, b, 60):
            out.write(seq[i : min(b, i + 60)] + "\n")
PY
  "$CPGFORMER" simulate --fasta "$OUT/genome3.fa" --cells 10000 --cell-types 4 --seed 1 \
    -o "$OUT/sim" --store "$OUT/sim/store"
fi
if [ ! -f "$OUT/run/checkpoints/best.ckpt" ]; then
  stamp "train start"
  /usr/bin/time -v "$CPGFORMER" train "$OUT/sim/store" -o "$OUT/run" --val-chromosomes chrV \
    --test-chromosomes chrT --time-budget "$BUDGET" >"$OUT/train.log" 2>&1
  stamp "train done"
fi
if [ ! -d "$OUT/imputed" ]; then
  stamp "impute start"
  /usr/bin/time -v "$CPGFORMER" impute "$OUT/sim/store" "$OUT/run/checkpoints/best.ckpt" \
    -o "$OUT/imputed" >"$OUT/impute.log" 2>&1
  stamp "impute done"
fi
if [ ! -f "$OUT/bench/metrics.tsv" ]; then
  stamp "benchmark start"
  "$CPGFORMER" benchmark "$OUT/sim/store" --checkpoint "$OUT/run/checkpoints/best.ckpt" \
    --models cpgformer,site-mean,knn-cells --test-chromosomes chrT -o "$OUT/bench" \
    --no-figures >"$OUT/bench.log" 2>&1
  stamp "benchmark done"
fi
"$PYTHON" benchmarks/paired_auroc.py "$OUT/bench/predictions.tsv.gz" --reference cpgformer \
  --groups "$OUT/sim/cell_types.tsv" | tee "$OUT/paired.txt"
grep -h "Maximum resident\|Elapsed (wall" "$OUT/train.log" "$OUT/impute.log" | tee "$OUT/peaks.txt"
