#!/usr/bin/env bash
# The prepared GPU check (one H100/H200, <= 8 min): the paper-scale training step (ViT-S/16, 224 px +
# 10 x 96 px views, batch 128, bf16) with and without torch.compile (MFU; goal >= 45 %), the step time of
# every objective at that scale, and, when ray and optuna import (carry their wheels), a 1-GPU sweep.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # figures as JSON + a log in OUT_DIR (default: gpu_check)
#
# Needs torch with CUDA and timm (the device image has them); lightly only for the reference rows
# (skipped with a NOTE when missing). Every step has its own time limit so one slow step cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
LOG=$OUT/gpu_check.log
SCALE=(--device cuda --precision bf16 --backbone vit_small_patch16_224 --size 224 --focal-size 96
       --n-focal 10 --batch 128 --n-images 512 --no-probe)

step() {  # step SECONDS NAME COMMAND...: run with a limit, log it, never stop the script
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" \
    | tee -a "$LOG"
step 120 "msn eager" python benchmarks/bench_msn.py "${SCALE[@]}" --steps 20 --json "$OUT/msn_eager.json"
step 180 "msn compiled" python benchmarks/bench_msn.py "${SCALE[@]}" --steps 20 --compile --json "$OUT/msn_compile.json"
for objective in vicreg mlvicx dino mae mrm_ehr supcon_ehr msn_supcon; do
    step 60 "$objective eager" python benchmarks/bench_msn.py "${SCALE[@]}" --objective "$objective" --steps 10 \
        --json "$OUT/step_$objective.json"
done
if python -c "import ray, optuna" 2>/dev/null; then
    # ehr_ablation's question on the synthetic default at 96 px, 4 trials sharing the GPU (2 at a time)
    cat >"$OUT/gpu_smoke.yaml" <<'YAML'
name: gpu_smoke
description: The GPU path end to end - Ray Train on CUDA, bf16, milestone probes on the GPU, analysis.
base:
  config: vit_small_gpu
  set: {views.size: 96, views.focal_size: 48, views.n_focal: 4, model.backbone: vit_tiny_patch16_224,
        train.batch_size: 64, train.num_workers: 2, probe.bootstrap: 200}
data: {dataset: synthetic, size: 96, n: 2000, seed: 0, split: "0.6,0.2,0.2"}
axes:
  ehr.fusion: {grid: [none, concat_anchor]}
seeds: [0, 1]
search: {algorithm: grid}
scheduler: {type: asha, milestones: [2, 4], reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 4, gpus_per_worker: 0.5, max_concurrent_trials: 2, probe_cpus: 2,
            probe_gpus: 0.5}
YAML
    export RAY_AUTH_MODE=token
    step 300 "1-GPU sweep" python -m trainables.sweep "$OUT/gpu_smoke.yaml" --storage "$OUT/sweeps"
    cp "$OUT"/sweeps/gpu_smoke/analysis/report.md "$OUT/gpu_smoke_report.md" 2>/dev/null
    rm -rf "$OUT/sweeps"  # only the report and the log come back
else
    echo "NOTE: ray or optuna not importable here: the 1-GPU smoke sweep is skipped" | tee -a "$LOG"
fi
echo "done: $(ls "$OUT")" | tee -a "$LOG"
