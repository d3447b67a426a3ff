"""experiments/gpu_check.sh: its commands (dry run, fast) and one real check on the CPU (slow: a
training start-up takes 10-20 s on 2 cores; the whole script on the CPU at 64 px takes ~2.5 min,
run by hand: see the script's header)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu_check.sh"
TINY = ("net=tiny net.embed_dim=32 net.depth=2 net.num_heads=2 cam.cam_layers=2 net.decoder_width=16 "
        "cam.par_iters=2")


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SIZE": "64", "BATCH": "2", "STEPS": "1",
            "CLASSES": "4", "NET": TINY, "NET_BENCH": "--tiny", "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)


def test_dry_run_lists_every_real_command(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = _run(tmp_path, DRY_RUN="1", DEVICE="cuda", NET="", NET_BENCH="", SIZE="448", BATCH="4", STEPS="3",
                CLASSES="8")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["DRY fp32", "DRY fp16", "DRY bf16", "DRY fp16", "DRY eval", "DRY predict", "DRY bench_fp32",
                     "DRY bench_bf16", "DRY bench_bf16_compile", "DRY ddp"]
    train = lines[1]
    for arg in ("-m clustercam_pl.train +experiment=voc_vits", "data.synthetic.image_size=448", "data.crop_size=448",
                "trainer.precision=16-mixed", "model.pretrained=null", "data.synthetic.num_train=12"):
        assert arg in train
    assert "trainer.precision=bf16-mixed" in lines[2] and "trainer.max_epochs=2" in lines[3]
    assert "-m clustercam_pl.eval" in lines[4] and "eval=ms_crf" in lines[4] and "fp16/checkpoints/last.ckpt" in lines[4]
    assert "--precision bf16 --compile" in lines[8] and "trainer=ddp trainer.devices=2" in lines[9]


@pytest.mark.slow  # one training start-up on the CPU
def test_one_real_check_on_the_cpu(tmp_path):
    done = _run(tmp_path, ONLY="fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("CHECK fp32: PASS (first loss "), done.stdout + done.stderr[-3000:]
