"""Reading a sweep: `python -m clustercam_pl.summarize` on hand-made job folders and on a real synthetic sweep."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from clustercam_pl.summarize import cli, main
from clustercam_pl.tasks.sweep import SweepError, parse_override, summarize
from helpers import TINY_OVERRIDES
from test_train import REPO, run_cli


def make_job(folder: Path, overrides: list[str], metrics: dict[str, float] | None, optimized: str = "val/seg_miou"):
    """A job folder as Hydra and train.py leave it: .hydra/overrides.yaml, .hydra/config.yaml, metrics.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": optimized, "seed": 0}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, **metrics, "global_step": 4}))


def grid_sweep(root: Path) -> dict[str, dict[str, float]]:
    """2 grids x 2 alphas x 2 seeds, one job of the last setting still running; returns metrics by job."""
    out = {}
    job = 0
    for grid in ("[2,2]", "[3,3]"):
        for alpha in ("0.25", "0.5"):
            for seed in ("0", "1"):
                pending = grid == "[3,3]" and alpha == "0.5" and seed == "1"
                m = None if pending else {"val/seg_miou": 0.1 * job + 0.01 * int(seed) ** 2,
                                          "val/map": 0.9 - 0.05 * job, "train/loss": 1.0}
                make_job(root / str(job), ["+experiment=synthetic", f"net.cluster_grid={grid}",
                                           f"net.alpha_init={alpha}", f"seed={seed}"], m)
                out[str(job)] = m
                job += 1
    return out


def test_parse_override():
    assert parse_override("+net.cluster_grid=[2,2]") == ("net.cluster_grid", "[2,2]")
    assert parse_override("++a.b=x=y") == ("a.b", "x=y")
    assert parse_override("~model.compile") == ("model.compile", "<deleted>")


def test_summary_of_a_two_key_sweep_with_a_pending_job(tmp_path, capsys):
    jobs = grid_sweep(tmp_path / "sweep")
    (tmp_path / "sweep" / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"net.alpha_init": 0.5}, "best_value": 0.6}))
    summary = main([str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert summary.swept == ["net.cluster_grid", "net.alpha_init", "seed"]
    assert summary.setting_keys == ["net.cluster_grid", "net.alpha_init"]
    assert summary.metrics == ["val/seg_miou", "val/map"]  # train/ metrics are not summarised
    # Sorted by val/seg_miou, highest first: jobs 4,5 > 2,3 > 0,1; [3,3]/0.5 has one finished job (6).
    rows = [(s.values["net.cluster_grid"], s.values["net.alpha_init"]) for s in summary.settings]
    assert rows == [("[3,3]", "0.5"), ("[3,3]", "0.25"), ("[2,2]", "0.5"), ("[2,2]", "0.25")]
    for s in summary.settings:
        finished = [jobs[r.folder.name] for r in s.runs if r.metrics is not None]
        for m in ("val/seg_miou", "val/map"):
            mean, std, n = s.stats(m)
            assert n == len(finished)
            assert mean == pytest.approx(statistics.fmean(j[m] for j in finished), abs=1e-12)
            if n > 1:
                assert std == pytest.approx(statistics.stdev([j[m] for j in finished]), abs=1e-12)
            else:
                assert math.isnan(std)
    assert [r.folder.name for r in summary.pending] == ["7"]
    assert "| net.cluster_grid | net.alpha_init | n | seeds | val/seg_miou | val/map | best run |" in out
    assert "| [3,3] | 0.25 | 2 | 0,1 | 0.4550 ± 0.0778 | 0.6750 ± 0.0354 | 5 |" in out
    assert "| [3,3] | 0.5 | 1 | 0 | 0.6000 | 0.6000 | 6 |" in out
    assert "pending (1 of 8: no metrics.json yet" in out
    assert "- 7: +experiment=synthetic net.cluster_grid=[3,3] net.alpha_init=0.5 seed=1" in out
    assert "best_value: 0.6" in out and "optimization_results.yaml" in out

    with (tmp_path / "sweep" / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["net.cluster_grid"] for r in table] == ["[3,3]", "[3,3]", "[2,2]", "[2,2]"]
    assert float(table[1]["val/seg_miou mean"]) == pytest.approx(0.455)
    assert float(table[1]["val/seg_miou std"]) == pytest.approx(statistics.stdev([0.4, 0.51]))
    assert table[1]["n"] == "2" and table[1]["best_run"].endswith("5")
    pngs = sorted(p.name for p in (tmp_path / "sweep").glob("*.png"))
    assert pngs == ["summary_net.alpha_init.png", "summary_net.cluster_grid.png",
                    "summary_net.cluster_grid_x_net.alpha_init.png"]
    for p in pngs:
        with Image.open(tmp_path / "sweep" / p) as im:
            assert im.format == "PNG" and im.width > 300


def test_run_folders_and_metric_choice(tmp_path, capsys):
    make_job(tmp_path / "a", ["cam.bg_high=0.5"], {"val/seg_miou": 0.3, "val/map": 0.2})
    make_job(tmp_path / "b", ["cam.bg_high=0.55"], {"val/seg_miou": 0.2, "val/map": 0.4})
    s = summarize([tmp_path / "a", tmp_path / "b"], metric="val/map")
    assert [x.values["cam.bg_high"] for x in s.settings] == ["0.55", "0.5"]
    assert s.out_dir == tmp_path.resolve()
    s = summarize([tmp_path / "a", tmp_path / "b"], metric="val/map", minimize=True)
    assert [x.values["cam.bg_high"] for x in s.settings] == ["0.5", "0.55"]
    assert cli([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plots"]) == 0
    assert (tmp_path / "summary.csv").is_file() and not list(tmp_path.glob("*.png"))


def test_errors_name_the_input(tmp_path, capsys):
    with pytest.raises(SweepError, match=re.escape(f"{tmp_path / 'nope'} is not a folder")):
        summarize([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SweepError, match=re.escape(f"no run folders in {tmp_path / 'empty'}: a Hydra multirun "
                                                   "folder holds <job>/.hydra/overrides.yaml")):
        summarize([tmp_path / "empty"])
    make_job(tmp_path / "s" / "0", ["seed=0"], {"val/seg_miou": 0.3, "val/map": 0.2})
    with pytest.raises(SweepError, match=re.escape("metric 'val/miou' is in none of the finished runs' metrics.json; "
                                                   "choose one of: --metric val/map, --metric val/seg_miou")):
        summarize([tmp_path / "s"], metric="val/miou")
    (tmp_path / "s" / "0" / "metrics.json").write_text("{")
    assert cli([str(tmp_path / "s")]) == 1
    assert f"error: cannot read {tmp_path / 's' / '0' / 'metrics.json'}" in capsys.readouterr().err


def test_broken_jobs_are_listed_with_their_file_and_the_others_summarised(tmp_path, capsys):
    grid_sweep(tmp_path / "sweep")
    metrics = tmp_path / "sweep" / "2" / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])  # truncated: a job killed while writing, a full disk
    overrides = tmp_path / "sweep" / "5" / ".hydra" / "overrides.yaml"
    overrides.write_text("[seed=1\n")  # not YAML: an unclosed list
    assert cli([str(tmp_path / "sweep"), "--no-plots"]) == 1  # after the summary: a script notices
    out, err = capsys.readouterr()
    assert [line.split(":")[0:2] for line in err.splitlines()] == [["error", f" cannot read {metrics}"],
                                                                   ["error", f" cannot read {overrides}"]]
    assert err.splitlines()[0].endswith("; rerun the job, or delete the file to list the job as pending")
    assert "| [2,2] | 0.5 | 1 | 1 | 0.3100 | 0.7500 | 3 |" in out  # job 3 alone: job 2's metrics unread
    assert "| [3,3] | 0.25 | 1 | 0 | 0.4000 | 0.7000 | 4 |" in out
    assert "broken (2 of 8: a file could not be read; left out of the table):" in out
    assert f"- 2: cannot read {metrics}: Unterminated string" in out
    assert f"- 5: cannot read {overrides}: while parsing" in out
    assert "pending (1 of 8: no metrics.json yet" in out  # job 7, as before
    summary = summarize([tmp_path / "sweep"])
    assert [r.folder.name for r in summary.broken] == ["2", "5"] and len(summary.settings) == 4
    with (tmp_path / "sweep" / "summary.csv").open() as f:
        assert [r["n"] for r in csv.DictReader(f)] == ["1", "1", "1", "2"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # the sweep may take its 400 s on a loaded machine
def test_four_job_synthetic_sweep(tmp_path, capsys):
    """Two cluster grids x two seeds, two steps each, then summarize: two rows of n = 2 whose mean and std
    are those of the jobs' metrics.json; each job's config.yaml has its swept values, the jobs share one
    wandb group and carry the swept keys. (The one multirun training of the suite.)"""
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", *TINY_OVERRIDES, "trainer.max_epochs=1", "data.synthetic.num_train=8",
                    "data.synthetic.num_val=2", "logger=wandb", "callbacks=none",
                    "net.cluster_grid=[2,2],[3,3]", "seed=0,1", f"hydra.sweep.dir={sweep}"], REPO, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = {j: json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1", "2", "3")}
    assert all(m["global_step"] == 2 for m in jobs.values())
    for j in jobs:
        cfg = yaml.safe_load((sweep / j / "config.yaml").read_text())
        assert cfg["net"]["cluster_grid"] == ([2, 2] if j in "01" else [3, 3]) and cfg["seed"] == int(j) % 2
        assert cfg["logger"]["wandb"]["group"] == "sweep"
        assert cfg["logger"]["wandb"]["config"] == {
            "sweep": "sweep", "sweep/net.cluster_grid": "[2,2]" if j in "01" else "[3,3]", "sweep/seed": str(int(j) % 2)}
        env = json.loads((sweep / j / "env.json").read_text())
        assert env["batch"] == {"per_device": 4, "global": 4, "reference": None, "note": None}

    summary = main([str(sweep)])
    assert "| net.cluster_grid | n | seeds | val/seg_miou |" in capsys.readouterr().out
    assert sorted(s.values["net.cluster_grid"] for s in summary.settings) == ["[2,2]", "[3,3]"]
    assert summary.settings[0].stats("val/seg_miou")[0] >= summary.settings[1].stats("val/seg_miou")[0]
    for s in summary.settings:
        ids = "01" if s.values["net.cluster_grid"] == "[2,2]" else "23"
        for m in ("val/seg_miou", "val/pseudo_miou", "val/cam_miou", "val/map"):
            values = [jobs[i][m] for i in ids]
            mean, std, n = s.stats(m)
            assert n == 2
            assert mean == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-12)
    with (sweep / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    with Image.open(sweep / "summary_net.cluster_grid.png") as im:
        assert im.format == "PNG"
