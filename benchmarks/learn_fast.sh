#!/usr/bin/env bash
# Short time-budget training runs that compare ways to learn fast (input summaries, per-site-mean
# offset, model sizes) on one store; prints each run's final validation AUROC next to the per-site
# mean of the other cells on the same masked calls (val_baseline_auroc).
#
#   bash benchmarks/learn_fast.sh STORE OUTDIR BUDGET 'name1:flags...' 'name2:flags...' ...
#
# One thread (OMP_NUM_THREADS=1) unless the caller sets it; each variant trains with
# `cpgformer train STORE --time-budget BUDGET FLAGS` into OUTDIR/NAME.
set -euo pipefail
store=$1 out=$2 budget=$3
shift 3
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for spec in "$@"; do
    name=${spec%%:*} flags=${spec#*:}
    [ "$name" = "$spec" ] && flags=""
    rm -rf "${out:?}/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086
    cpgformer train "$store" -o "$out/$name" --time-budget "$budget" $flags >"$out/$name.log" 2>&1 || true
    end=$(date +%s)
    auroc=$(grep -E '^val_auroc:' "$out/$name.log" | awk '{print $2}')
    base=$(grep -E '^val_baseline_auroc:' "$out/$name.log" | awk '{print $2}')
    steps=$(grep -oE 'time budget reached after [0-9]+ steps' "$out/$name.log" | grep -oE '[0-9]+' || echo "?")
    printf '%s\t%s\tval_auroc %s\tsite_mean %s\tsteps %s\t%ss\t%s\n' \
        "$(date -u +%H:%M)" "$name" "${auroc:-?}" "${base:-?}" "$steps" "$((end - start))" "$flags" \
        | tee -a "$out/summary.tsv"
done
