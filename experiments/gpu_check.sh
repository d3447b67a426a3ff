#!/usr/bin/env bash
# The GPU path in one script (issue 23): the real commands, not only the benchmark, on one GPU in at
# most ~8 minutes. No data and no network needed: synthetic images at 448 px, voc_vits-shaped network
# (DeiT-S, the reference's CAM settings; K=8, the synthetic set's most, the benchmark K=20) at random
# init (model.pretrained=null).
#
#   bash experiments/gpu_check.sh 2>gpu_check.log | tee gpu_check.txt    # one "CHECK name: PASS|FAIL|SKIP" line each
#   DEVICE=cpu SIZE=64 BATCH=2 STEPS=1 NET="net=tiny" bash experiments/gpu_check.sh   # CPU smoke run (tests)
#   DRY_RUN=1 bash experiments/gpu_check.sh      # print the commands only
#   ONLY="fp32 fp16" bash experiments/gpu_check.sh   # a subset of the checks
#
# Checks: fp32, fp16 (16-mixed with its gradient scaler) and bf16 (bf16-mixed) training steps, loss
# finite, the first-step loss of each equal to fp32's within TOL_FP16 / TOL_BF16 (relative); resume
# (the fp16 run continued for another epoch from its last.ckpt); eval (eval=ms_crf on that checkpoint);
# predict (two images); bench (the benchmark's JSON lines: fused attention fp32, bf16, bf16 +
# torch.compile); ddp (eval on 2 GPUs with NCCL; SKIP with fewer than 2 GPUs).
# The JSON lines of the benchmark and the commands' output go to stderr; verdicts to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-448}
BATCH=${BATCH:-4}
STEPS=${STEPS:-3}
CLASSES=${CLASSES:-8}                # the synthetic set has at most 8 classes (the benchmark uses K=20)
NET=${NET:-}                        # extra net overrides (tests: net=tiny and smaller)
NET_BENCH=${NET_BENCH:-}            # extra bench flags (tests: --tiny)
TOL_FP16=${TOL_FP16:-0.01}          # |loss_fp16 - loss_fp32| / |loss_fp32| at the first step
TOL_BF16=${TOL_BF16:-0.03}          # bf16 keeps 8 bits of mantissa: a looser bound
LIMIT=${LIMIT:-120}                 # seconds per command
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
ONLY=${ONLY:-fp32 fp16 bf16 resume eval predict bench ddp}
DRY_RUN=${DRY_RUN:-0}
if [[ $DEVICE == cpu ]]; then ACC=cpu; else ACC=gpu; fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1

verdict() { echo "CHECK $1: $2${3:+ ($3)}"; }
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
run() {  # run NAME CMD...: the command under a time limit, its output to stderr; DRY_RUN prints it
    local name=$1
    shift
    if [[ $DRY_RUN == 1 ]]; then
        echo "DRY $name: $*"
        return 0
    fi
    echo "== $name: $*" >&2
    if [[ $name == bench_* ]]; then timeout "$LIMIT" "$@"; else timeout "$LIMIT" "$@" >&2; fi  # bench: JSON on stdout
}
DATA=(data=synthetic "data.synthetic.num_classes=$CLASSES" "data.synthetic.image_size=$SIZE" data.synthetic.num_val=2
      data.synthetic.num_test=2 data.val_batch_size=2)
train() {  # train NAME PRECISION [EXTRA...]: STEPS steps of a voc_vits-shaped run, one epoch
    local name=$1 precision=$2
    shift 2
    # shellcheck disable=SC2086  # NET is a list of overrides
    run "$name" "$PY" -m clustercam_pl.train +experiment=voc_vits "${DATA[@]}" "data.crop_size=$SIZE" \
        "data.synthetic.num_train=$((BATCH * STEPS))" "reference_batch_size=$BATCH" model.pretrained=null \
        model.seg_start_epoch=0 model.val_pseudo_labels=false "trainer.accelerator=$ACC" trainer.devices=1 \
        "trainer.precision=$precision" trainer.max_epochs=1 trainer.log_every_n_steps=1 trainer.limit_val_batches=1 \
        trainer.enable_progress_bar=false logger=csv seed=0 $NET "hydra.run.dir=$OUT/$name" "$@"
}
first_loss() {  # the logged train/loss of the first step of run folder $1
    "$PY" - "$1" <<'EOF'
import csv, glob, sys
for path in sorted(glob.glob(f"{sys.argv[1]}/csv/**/metrics.csv", recursive=True)):
    for row in csv.DictReader(open(path)):
        if row.get("train/loss"):
            print(row["train/loss"]); sys.exit(0)
sys.exit(1)
EOF
}
compare() {  # compare NAME TOL: the run's first loss is finite and within TOL of fp32's
    local name=$1 tol=$2 loss ref
    loss=$(first_loss "$OUT/$name") || { verdict "$name" FAIL "no train/loss logged"; return; }
    ref=$(first_loss "$OUT/fp32" 2>/dev/null) || ref=""
    "$PY" -c "
import math, sys
loss, ref, tol = float('$loss'), '$ref', float('$tol')
if not math.isfinite(loss): print('CHECK $name: FAIL (first loss', loss, 'not finite)'); sys.exit()
if not ref: print('CHECK $name: PASS (first loss', loss, 'finite; no fp32 run to compare)'); sys.exit()
rel = abs(loss - float(ref)) / max(abs(float(ref)), 1e-12)
print('CHECK $name:', 'PASS' if rel <= tol else 'FAIL', f'(first loss {loss:.6g} vs fp32 {float(ref):.6g}, rel {rel:.2e}, tol {tol:g})')"
}

if [[ $DRY_RUN != 1 && $DEVICE == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
echo "gpu_check: DEVICE=$DEVICE SIZE=$SIZE BATCH=$BATCH STEPS=$STEPS OUT=$OUT" >&2
if wanted fp32; then
    if train fp32 32-true; then [[ $DRY_RUN == 1 ]] || compare fp32 0; else verdict fp32 FAIL "training exited $?"; fi
fi
for p in fp16:16-mixed:$TOL_FP16 bf16:bf16-mixed:$TOL_BF16; do
    IFS=: read -r name precision tol <<<"$p"
    wanted "$name" || continue
    if [[ $DEVICE == cpu && $name == fp16 ]]; then verdict fp16 SKIP "16-mixed needs CUDA"; continue; fi
    if train "$name" "$precision"; then [[ $DRY_RUN == 1 ]] || compare "$name" "$tol"
    else verdict "$name" FAIL "training exited $?"; fi
done
CKPT_RUN=fp16
[[ $DEVICE == cpu ]] && CKPT_RUN=fp32
CKPT=$OUT/$CKPT_RUN/checkpoints/last.ckpt
if wanted resume; then
    prec=16-mixed; [[ $DEVICE == cpu ]] && prec=32-true
    if train "$CKPT_RUN" "$prec" trainer.max_epochs=2; then
        [[ $DRY_RUN == 1 ]] || "$PY" -c "
import torch, sys
step = torch.load('$CKPT', map_location='cpu', weights_only=False)['global_step']
print('CHECK resume:', 'PASS' if step == 2 * $STEPS else 'FAIL', f'(global_step {step} after resuming, expected {2 * $STEPS})')"
    else verdict resume FAIL "the resumed training exited $?"; fi
fi
if wanted eval; then
    if run eval "$PY" -m clustercam_pl.eval "${DATA[@]}" "ckpt_path=$CKPT" eval=ms_crf "device=$DEVICE" limit=2 \
            progress=false "hydra.run.dir=$OUT/eval"; then
        [[ $DRY_RUN == 1 ]] || "$PY" -c "
import json, math
m = json.load(open('$OUT/eval/eval_metrics.json'))
ok = m['miou'] is not None and math.isfinite(m['miou'])
print('CHECK eval:', 'PASS' if ok else 'FAIL', f\"(eval=ms_crf mIoU {m['miou']} on {m['num_images']} images)\")"
    else verdict eval FAIL "eval exited $? (eval=ms_crf needs the crf extra: pip install -e '.[crf]')"; fi
fi
if wanted predict; then
    [[ $DRY_RUN == 1 ]] || "$PY" -c "
import numpy as np, pathlib; from PIL import Image
d = pathlib.Path('$OUT/inputs'); d.mkdir(exist_ok=True)
for i in range(2): Image.fromarray(np.random.default_rng(i).integers(0, 255, ($SIZE, $SIZE + 32, 3), dtype=np.uint8)).save(d / f'{i}.jpg')"
    if run predict "$PY" -m clustercam_pl.predict "ckpt_path=$CKPT" "input=$OUT/inputs" "out_dir=$OUT/predict" \
            "device=$DEVICE" eval=ss progress=false; then
        [[ $DRY_RUN == 1 ]] || { n=$(wc -l <"$OUT/predict/predictions.jsonl" 2>/dev/null || echo 0)
            if [[ $n -eq 2 ]]; then verdict predict PASS "2 images predicted"; else verdict predict FAIL "$n of 2 predicted"; fi; }
    else verdict predict FAIL "predict exited $?"; fi
fi
if wanted bench; then
    ok=PASS
    for variant in "fp32:" "bf16:--precision bf16" "bf16_compile:--precision bf16 --compile"; do
        IFS=: read -r name flags <<<"$variant"
        [[ $DEVICE == cpu && $name == bf16_compile ]] && continue  # inductor on CPU takes minutes
        # shellcheck disable=SC2086  # flags is a list
        line=$(run "bench_$name" "$PY" -m clustercam_pl.bench train-step --device "$DEVICE" --size "$SIZE" \
                   --batch "$BATCH" --classes 20 --steps 2 --warmup 1 $flags $NET_BENCH | tail -1) || ok=FAIL
        [[ $DRY_RUN == 1 ]] && { echo "$line"; continue; }
        echo "{\"variant\": \"$name\", \"result\": ${line:-null}}" >&2
        [[ $line == \{* ]] || ok=FAIL
    done
    [[ $DRY_RUN == 1 ]] || verdict bench "$ok" "JSON lines on stderr"
fi
if wanted ddp; then
    ngpu=0
    [[ $DEVICE == cuda* && $DRY_RUN != 1 ]] && ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [[ $ngpu -ge 2 || $DRY_RUN == 1 ]]; then
        if run ddp "$PY" -m clustercam_pl.eval "${DATA[@]}" "ckpt_path=$CKPT" eval=ms trainer=ddp trainer.devices=2 \
                progress=false "hydra.run.dir=$OUT/ddp"; then [[ $DRY_RUN == 1 ]] || verdict ddp PASS "eval on 2 GPUs (NCCL)"
        else verdict ddp FAIL "eval with trainer=ddp exited $?"; fi
    else
        verdict ddp SKIP "NCCL DDP needs 2 GPUs, this machine has $ngpu"
    fi
fi
