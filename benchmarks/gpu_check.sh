#!/usr/bin/env bash
# The prepared GPU check: a user's epoch on one accelerator, in one call of at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--smoke] [OUT_DIR]     # figures as JSON + a log in OUT_DIR (default gpu_check)
#
# Steps (each with its own time limit, 460 s in all):
#   epoch       ViT-S/16 MSN at 224 px + 10 x 96 px views in bf16, fed by the real loader from a cache on
#               disk: img/s, peak memory and MFU at batch 64 and 256, eager and compiled; the largest batch
#               that fits; every objective's step; the probe on 50k x 384 features (benchmarks/gpu_epoch.py)
#   lightly     the same MSN step composed from lightly's parts, for the ratio (only when lightly imports)
#   sweep       a 2-trial 1-GPU sweep through Ray Tune (only when ray, optuna and torchxrayvision import:
#               carry their wheels)
# --smoke runs every step at tiny sizes on the CPU (what CI and a reviewer without a GPU can run, < 3 min).
# Needs torch, timm, numpy, pandas, pyarrow and pyyaml: a missing one is named on one line and nothing runs.
# Exit status: 0 when every step that ran passed; otherwise 1, with one line per failed step.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/benchmarks
LOG=$OUT/gpu_check.log
: >"$LOG"
FAILED=()

have() { python -c "import $1" 2>/dev/null; }

step() {  # step SECONDS NAME COMMAND...: run with a limit and log it; a failure is remembered, not fatal
    local limit=$1 name=$2 status
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    echo "=== $name: exit $status" | tee -a "$LOG"
    if [ "$status" -ne 0 ]; then
        local why="exit $status"
        [ "$status" -eq 124 ] && why="over its ${limit} s limit"
        FAILED+=("$name: $why (see $LOG)")
    fi
}

missing=()
for module in torch timm numpy pandas pyarrow yaml; do
    have "$module" || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
    for module in "${missing[@]}"; do echo "gpu_check: cannot import $module (required)" | tee -a "$LOG"; done
    exit 1
fi
python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" \
    | tee -a "$LOG"

if [ "$SMOKE" = 1 ]; then
    step 120 "epoch" python benchmarks/gpu_epoch.py --smoke --compile --objectives --json "$OUT/epoch.json"
    SCALE=(--device cpu --precision fp32 --backbone vit_nano --size 32 --focal-size 16 --n-focal 2 --batch 8
           --n-images 64 --no-probe --steps 2)
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
    step 300 "epoch" python benchmarks/gpu_epoch.py --batches 64,256 --steps 20 --compile --largest --objectives \
        --json "$OUT/epoch.json"
    SCALE=(--device cuda --precision bf16 --backbone vit_small_patch16_224 --size 224 --focal-size 96
           --n-focal 10 --batch 128 --n-images 512 --no-probe --steps 20)
fi

if have lightly; then
    step 60 "lightly" python benchmarks/bench_msn.py "${SCALE[@]}" --json "$OUT/lightly.json"
else
    echo "gpu_check: lightly not importable: the step composed from lightly's parts is skipped" | tee -a "$LOG"
fi

if have ray && have optuna && have torchxrayvision; then
    if [ "$SMOKE" = 1 ]; then
        SET="{views.size: 32, views.focal_size: 16, views.n_focal: 2, model.backbone: vit_nano, model.head_hidden: 64,
              model.head_out: 32, model.n_prototypes: 32, train.batch_size: 16, train.max_steps_per_epoch: 2,
              probe.bootstrap: 20}"
        DATA="{dataset: synthetic, size: 32, n: 300, seed: 0, split: '0.6,0.2,0.2'}"
        RES="{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}"
    else
        SET="{views.size: 96, views.focal_size: 48, views.n_focal: 4, model.backbone: vit_tiny_patch16_224,
              train.batch_size: 64, train.num_workers: 2, probe.bootstrap: 200}"
        DATA="{dataset: synthetic, size: 96, n: 2000, seed: 0, split: '0.6,0.2,0.2'}"
        RES="{workers: 1, cpus_per_worker: 4, gpus_per_worker: 0.5, max_concurrent_trials: 2}"
    fi
    cat >"$OUT/gpu_smoke.yaml" <<YAML
name: gpu_smoke
description: The GPU path end to end - trials on half a GPU each, bf16, milestone probes on the GPU, analysis.
base: {config: vit_small_gpu, set: $SET}
data: $DATA
axes:
  ehr.fusion: {grid: [none, concat_anchor]}
seeds: [0]
search: {algorithm: grid}
scheduler: {type: fifo, milestones: [1, 2]}
resources: $RES
YAML
    export RAY_AUTH_MODE=token
    step 100 "sweep" python -m trainables.sweep "$OUT/gpu_smoke.yaml" --storage "$OUT/sweeps"
    cp "$OUT"/sweeps/gpu_smoke/analysis/report.md "$OUT/gpu_smoke_report.md" 2>/dev/null
    rm -rf "$OUT/sweeps"  # only the report and the log come back
else
    echo "gpu_check: ray, optuna or torchxrayvision not importable: the 1-GPU sweep is skipped" | tee -a "$LOG"
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    for line in "${FAILED[@]}"; do echo "gpu_check: FAILED $line" | tee -a "$LOG"; done
    exit 1
fi
echo "gpu_check: done: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
