"""Resumable evaluation: a run SIGKILLed in the middle (one process, two processes), then rerun,
gives exactly the numbers of an uninterrupted run; a rerun with other settings is refused.

The kill is deterministic: `tasks.evaluate.KILL_AFTER_ENV` makes each process SIGKILL itself right
after writing its N-th per-image record. The one-process run is a forked child (no interpreter
start-up); the two-process one is the real command line (slow)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from clustercam_pl.eval import evaluate
from clustercam_pl.tasks.evaluate import KILL_AFTER_ENV, RECORDS
from helpers import compose_eval, run_command, save_framework_checkpoint, tiny_net

REPO = Path(__file__).resolve().parents[1]
N = 8  # images: 4 batches of 2
DATA = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_train=2",
        f"data.synthetic.num_val={N}", "data.val_batch_size=2", "device=cpu", "crf_workers=0"]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_framework_checkpoint(tiny_net(4, decoder_width=16).eval(), tmp_path / "last.ckpt")


def _killed_child(cfg, kill_after: int) -> None:
    os.environ[KILL_AFTER_ENV] = str(kill_after)
    torch.set_num_threads(1)  # a forked child: no OpenMP pool inherited from the parent
    evaluate(cfg)


def _assert_same_result(resumed: dict, fresh: dict) -> None:
    assert resumed["miou"] is not None
    assert resumed["miou"] == fresh["miou"]  # exact: the stored counts are integers
    assert resumed["per_class_iou"] == pytest.approx(fresh["per_class_iou"], abs=0, nan_ok=True)
    assert resumed["checkpoints"][0]["images"] == fresh["checkpoints"][0]["images"] == N


@pytest.mark.slow  # a process killed mid-run, then two evaluations
def test_sigkill_mid_eval_then_rerun_equals_an_uninterrupted_run(ckpt, tmp_path):
    over = [*DATA, f"ckpt_path={ckpt}", "eval=ss"]
    out = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=_killed_child, args=(compose_eval(over, out), 3))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL, f"the child was not killed mid-way (exit code {child.exitcode})"
    done = sorted(p.name for p in (out / RECORDS).glob("*.npz"))
    assert len(done) == 3 and not (out / "eval_metrics.json").exists()

    resumed = evaluate(compose_eval(over, out))
    assert (resumed["checkpoints"][0]["computed"], resumed["checkpoints"][0]["resumed"]) == (N - 3, 3)
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    fresh = evaluate(compose_eval(over, tmp_path / "fresh"))
    assert fresh["checkpoints"][0]["resumed"] == 0
    _assert_same_result(resumed, fresh)
    for name in done:  # the records the killed run left are the ones a fresh run writes
        with np.load(out / RECORDS / name) as a, np.load(tmp_path / "fresh" / RECORDS / name) as b:
            np.testing.assert_array_equal(a["confmat"], b["confmat"])

    # A rerun with another protocol or other images into the same folder is refused, naming the key.
    with pytest.raises(ValueError, match=r"killed holds eval outputs made with .*protocol: stored .*"
                                         r"Pass another out_dir=\.\.\., or overwrite=true"):
        evaluate(compose_eval([*DATA, f"ckpt_path={ckpt}", "eval=ms"], out))
    with pytest.raises(ValueError, match=r"num_images: stored 8, now 5"):
        evaluate(compose_eval([*over, "limit=5"], out))
    again = evaluate(compose_eval([*over, "limit=2", "overwrite=true"], out))  # recomputes all
    assert again["checkpoints"][0]["resumed"] == 0 and again["num_images"] == 2


def test_several_checkpoints_keep_a_record_folder_each(ckpt, tmp_path):
    torch.manual_seed(1)
    other = save_framework_checkpoint(tiny_net(4, decoder_width=16).eval(), tmp_path / "epoch1.ckpt", epoch=0)
    over = [*DATA, f"ckpt_path=[{other},{ckpt}]", "eval=ss", "limit=2"]
    first = evaluate(compose_eval(over, tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run" / RECORDS).iterdir()) == ["00_epoch1", "01_last"]
    est = first["checkpoints"][0]
    assert est["estimate_s"] > 0 and est["estimate_bytes"] == est["bytes"] > 0  # 2 images: the probe is all
    second = evaluate(compose_eval(over, tmp_path / "run"))  # everything resumed, nothing computed
    assert [r["computed"] for r in second["checkpoints"]] == [0, 0]
    assert [r["miou"] for r in second["checkpoints"]] == [r["miou"] for r in first["checkpoints"]]


@pytest.mark.slow  # two processes through the command line: interpreter start-ups on 2 cores
def test_two_process_eval_killed_then_rerun_equals_an_uninterrupted_run(ckpt, tmp_path):
    over = [*DATA, f"ckpt_path={ckpt}", "eval=ss"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           KILL_AFTER_ENV: "2"}  # each process kills itself after its 2nd image (shares of 4)
    done = run_command("clustercam_pl.eval", [*over, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                              f"hydra.run.dir={out}"], REPO, env, timeout=400)
    assert done.returncode == -signal.SIGKILL, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(list((out / RECORDS).glob("*.npz"))) == 4 and not (out / "eval_metrics.json").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == N
    # The rerun continues on one process (any number of processes resumes the same records).
    resumed = evaluate(compose_eval(over, out))
    assert (resumed["checkpoints"][0]["computed"], resumed["checkpoints"][0]["resumed"]) == (4, 4)
    fresh = evaluate(compose_eval(over, tmp_path / "fresh"))
    _assert_same_result(resumed, fresh)
