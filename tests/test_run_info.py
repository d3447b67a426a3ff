"""env.json: what a run ran on, and the note when the global batch is not the recipe's."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from clustercam_pl.optim import OptimConfig
from clustercam_pl.utils import run_info
from helpers import CONF_DIR, compose_train

REPO = CONF_DIR.parents[2]


@pytest.mark.parametrize("experiment, batch", [("voc_vits", 9), ("coco_vits", 6)])
def test_reference_batch_is_the_recipe_batch(experiment, batch):
    cfg = compose_train([f"+experiment={experiment}"])
    assert cfg.reference_batch_size == batch == cfg.data.global_batch_size
    cfg = compose_train([f"+experiment={experiment}", "data.global_batch_size=16"])
    assert cfg.reference_batch_size == batch and cfg.data.global_batch_size == 16
    assert compose_train(["+experiment=synthetic"]).reference_batch_size is None


def test_batch_note():
    derived = OptimConfig()  # conf/optim/reference.yaml: lr = 5e-4 x batch / 512
    assert run_info.batch_note(9, 9, derived.base_lr) is None
    assert run_info.batch_note(16, None, derived.base_lr) is None
    assert run_info.batch_note(18, 9, derived.base_lr) == (
        "global batch 18 differs from the experiment's reference batch 9: the learning rate the recipe derives "
        "(optim.lr_per_512 x batch / 512) is 1.76e-05 instead of 8.79e-06. "
        "To train the recipe's batch: data.global_batch_size=9")
    fixed = OptimConfig(lr=1e-3)
    assert run_info.batch_note(4, 16, fixed.base_lr) == (
        "global batch 4 differs from the experiment's reference batch 16: the learning rate is set (optim.lr=0.001), "
        "so it is not rescaled, but it was tuned at batch 16. To train the recipe's batch: data.global_batch_size=16")


def test_source_commit(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run_info.source_commit(REPO / "src" / "clustercam_pl")["git_commit"] == head
    # An installed copy (site-packages/clustercam_pl) is no checkout, even inside a git repository.
    (tmp_path / ".git").mkdir()
    (tmp_path / "site-packages" / "clustercam_pl").mkdir(parents=True)
    assert run_info.source_commit(tmp_path / "site-packages" / "clustercam_pl") == {"git_commit": None,
                                                                                    "git_dirty": None}


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_train_writes_env_json_and_logs_it(tiny_run):
    info = json.loads((tiny_run.folder / "env.json").read_text())  # the run has reference_batch_size=16
    assert info["clustercam_pl"]["version"] == "0.1.0" and info["world_size"] == 1
    assert info["batch"]["global"] == 4 and info["batch"]["per_device"] == 4 and info["batch"]["reference"] == 16
    assert info["precision"] == "32-true" and info["devices"]["count"] >= 1
    assert info["packages"]["torch"] and info["python"].count(".") == 2
    line = next(m for _, m in tiny_run.messages if m.startswith("env: "))
    assert "world size 1 | batch 4 global, 4 per device | precision 32-true" in line
    level, warning = next((lv, m) for lv, m in tiny_run.messages if "reference batch" in m)
    assert level == logging.WARNING and warning == info["batch"]["note"]
    assert "data.global_batch_size=16" in warning


def test_record_env_for_an_entry_point_without_training(tmp_path):
    """What eval / pseudo_labels / predict call: no optimiser, no reference batch in their configs."""
    from omegaconf import OmegaConf

    from clustercam_pl.entry import record_env

    info = record_env(OmegaConf.create({"task_name": "eval"}), tmp_path, accelerator="cpu")
    assert json.loads((tmp_path / "env.json").read_text()) == json.loads(json.dumps(info))
    assert info["batch"] == {"per_device": None, "global": None, "reference": None, "note": None}
    assert info["devices"]["accelerator"] == "cpu" and info["overrides"] == []
