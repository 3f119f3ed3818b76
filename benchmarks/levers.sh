#!/usr/bin/env bash
# Recipe levers of the quickstart against its references (benchmarks/README.md "Signal"): for each
# LEVER (a --set KEY=VALUE) and seed 0..SEEDS-1, `mmsn pretrain` of mmsn/configs/quickstart.yaml with
# fusion none on CACHE, then the test probe; prints one line per run (pretrain seconds, test macro AUROC).
#
#   bash benchmarks/levers.sh CACHE "model.n_prototypes=256 msn.ema_start=0.996" [SEEDS=3] [OUT=/tmp/levers]
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$1 levers=$2 seeds=${3:-3} out=${4:-/tmp/levers}
mkdir -p "$out"
for lever in $levers; do
  for seed in $(seq 0 $((seeds - 1))); do
    tag="${lever//[^a-z0-9_]/_}-s$seed"
    start=$(date +%s)
    .venv/bin/python -m mmsn.cli pretrain --config mmsn/configs/quickstart.yaml --set ehr.fusion=none \
      --set "train.seed=$seed" --set "$lever" --data "$cache" --out "$out/$tag" > "$out/$tag.log" 2>&1 \
      || { echo "$tag: pretrain failed ($out/$tag.log)"; continue; }
    took=$(( $(date +%s) - start ))
    .venv/bin/python -m mmsn.cli probe --checkpoint "$out/$tag" --data "$cache" --split test --out "$out/$tag.json" \
      > /dev/null
    echo "$tag pretrain ${took}s test $(.venv/bin/python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['macro_auroc'], 4))" "$out/$tag.json")"
  done
done
