#!/usr/bin/env bash
# Acceptance runs of "learn fast": for each store, `cpgformer train STORE --time-budget BUDGET` with
# every other parameter at its default, then `cpgformer benchmark` with its defaults (six baselines
# at their defaults, paired bootstrap intervals of cpgformer minus each baseline).
#
#   bash benchmarks/learn_fast_acceptance.sh OUTDIR BUDGET NAME=STORE [NAME=STORE ...]
#
# Runs one store after another (train, then benchmark); logs and timings in OUTDIR/NAME.*.
# BENCH_ARGS (environment) is added to every benchmark command (e.g. a DeepCpG time bound:
# BENCH_ARGS="--deepcpg-max-seconds 900"); SKIP_TRAIN=1 benchmarks an existing OUTDIR/NAME.run.
set -euo pipefail
out=$1 budget=$2
shift 2
mkdir -p "$out"
for spec in "$@"; do
    name=${spec%%=*} store=${spec#*=}
    if [ "${SKIP_TRAIN:-0}" != 1 ]; then
        echo "$(date -u +%FT%TZ) $name: train start (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$out/timeline.txt"
        cpgformer train "$store" -o "$out/$name.run" --time-budget "$budget" >"$out/$name.train.log" 2>&1
    fi
    echo "$(date -u +%FT%TZ) $name: benchmark start (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$out/timeline.txt"
    # shellcheck disable=SC2086
    cpgformer benchmark "$store" --checkpoint "$out/$name.run/checkpoints/best.ckpt" \
        -o "$out/$name.bench" ${BENCH_ARGS:-} >"$out/$name.bench.log" 2>&1
    echo "$(date -u +%FT%TZ) $name: done (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$out/timeline.txt"
done
