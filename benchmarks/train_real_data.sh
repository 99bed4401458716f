#!/usr/bin/env bash
# Acceptance run of `cpgformer train` on the shared real data (30 mouse cells, no FASTA).
# Usage: benchmarks/train_real_data.sh [WORKDIR] [extra cpgformer train flags...]
# Prints the validation history (loss, AUROC, per-site-mean baseline AUROC on the same masks).
set -euo pipefail
SHARED=${CPGFORMER_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
WORK=${1:-/tmp/cpgformer-train-real}; shift || true
PY=${PYTHON:-python}
mkdir -p "$WORK"
if [ ! -d "$WORK/store" ]; then
  $PY -m cpgformer.cli -q prepare "$SHARED"/data/scbs_tutorial/cell_*.cov.gz -o "$WORK/store"
fi
rm -rf "$WORK/run"
start=$(date +%s)
$PY -m cpgformer.cli -q train "$WORK/store" -o "$WORK/run" "$@"
echo "wall seconds: $(( $(date +%s) - start ))"
$PY - "$WORK/run/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("| step | val_loss | val_auroc | val_auprc | per-site mean AUROC |")
print("|---|---|---|---|---|")
for r in s["val_history"]:
    print(f"| {int(r['step'])} | {r['val_loss']:.4f} | {r['val_auroc']:.4f} | {r['val_auprc']:.4f} | {r.get('val_baseline_auroc', float('nan')):.4f} |")
PYEOF
