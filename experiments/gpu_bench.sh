#!/usr/bin/env bash
# ClusterCAM training-step benchmark on one GPU: the voc_vits step (DeiT-S, K=20, 448 crops,
# batch 9) in fp32 (fast and materialising attention path, each in its own process), bf16 autocast,
# bf16 + torch.compile, the multi-scale CAM / pseudo-label throughput, and the training step of every
# other backbone preset of conf/net in bf16 (issue 14: variants bf16_<preset>). Random weights and
# inputs: it needs only the repo installed (`pip install -e .`), no data, no network.
# One JSON object per line on stdout, tagged with "variant" (the card is in "device_name");
# progress and the card's nvidia-smi line on stderr.
#
#   bash experiments/gpu_bench.sh > gpu_bench.jsonl          # about 3-4 minutes on an H100
#   PYTHON=.venv/bin/python bash experiments/gpu_bench.sh
#   DEVICE=cpu SIZE=64 BATCH=2 EXTRA=--tiny COMPILE_TIMEOUT=1 PRESETS= bash experiments/gpu_bench.sh  # smoke test
#   PRESETS="vitb dinov2_vits14" bash experiments/gpu_bench.sh   # only these backbones besides vits
#
# Every variant has a time limit; one that fails or runs out prints an "error" line and the others
# still run. The compiled variant compiles four backbone graphs (three CAM scales and the training
# forward) and the backward before its first timed step: that is most of its limit.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-448}
BATCH=${BATCH:-9}
EXTRA=${EXTRA:-}
COMPILE_TIMEOUT=${COMPILE_TIMEOUT:-200}
# Backbone presets (conf/net) timed in bf16 after the vits variants; vits itself is the bf16 line above.
PRESETS=${PRESETS-vitt vitb vits_dino8 dinov2_vits14 dinov2_vitb14}
# shellcheck disable=SC2206  # EXTRA is a list of flags
COMMON=(--device "$DEVICE" --size "$SIZE" --batch "$BATCH" --classes 20 --steps 5 --warmup 2 $EXTRA)

if [[ $DEVICE == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
    "$PY" -c "import sys, torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(), file=sys.stderr)" || exit 1
fi

run() {  # run NAME LIMIT_S ARGS...: the benchmark's last stdout line, tagged with the variant
    local name=$1 limit=$2
    shift 2
    local out
    out=$(timeout "$limit" "$PY" -m clustercam_pl.bench "$@" | tail -n 1)
    if [[ $out == "{"* ]]; then
        "$PY" -c 'import json, sys; print(json.dumps({"variant": sys.argv[2], **json.loads(sys.argv[1])}))' \
            "$out" "$name"
    else
        echo "{\"variant\": \"$name\", \"error\": \"failed or over its ${limit} s limit\"}"
    fi
}

run fp32_compare 150 train-step "${COMMON[@]}" --precision fp32 --compare
run bf16 60 train-step "${COMMON[@]}" --precision bf16
run cam_fp32 60 cam "${COMMON[@]}" --precision fp32
run cam_bf16 60 cam "${COMMON[@]}" --precision bf16
run bf16_compile "$COMPILE_TIMEOUT" train-step "${COMMON[@]}" --precision bf16 --compile --warmup 3
# shellcheck disable=SC2086  # PRESETS is a list of names
for preset in $PRESETS; do
    run "bf16_$preset" 120 train-step "${COMMON[@]}" --precision bf16 --net "$preset"
done
