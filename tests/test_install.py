"""The package as a user installs it: a wheel (not editable) run from a folder outside the checkout, and
experiments kept in the user's own config folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES, compose_train

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"clustercam-train", "clustercam-eval", "clustercam-export-labels", "clustercam-predict",
           "clustercam-prepare", "clustercam-bench", "clustercam-summarize", "clustercam-audit", "clustercam-refine"}
# A user's experiment outside the repository: the packaged synthetic recipe plus one change to recognise it by.
MY_RUN = """\
# @package _global_
defaults:
  - synthetic
task_name: my_run
cam:
  bg_high: 0.45
"""


def my_configs(root: Path) -> Path:
    """~/my_configs/experiment/my_run.yaml, under root."""
    (root / "my_configs" / "experiment").mkdir(parents=True)
    (root / "my_configs" / "experiment" / "my_run.yaml").write_text(MY_RUN)
    return root / "my_configs"


def test_own_experiment_file_through_the_search_path(tmp_path):
    configs = my_configs(tmp_path)
    cfg = compose_train([f"hydra.searchpath=[file://{configs}]", "+experiment=my_run"])
    assert cfg.task_name == "my_run" and cfg.cam.bg_high == 0.45
    assert cfg.net.patch_size == 8  # the rest is the packaged synthetic experiment


def test_every_console_script_names_a_function_of_the_package():
    # The wheel test below finds each script's module in the installed copy and runs three of them.
    scripts = [e for e in metadata.distribution("clustercam_pl").entry_points if e.group == "console_scripts"]
    assert {e.name for e in scripts} == SCRIPTS
    for script in scripts:
        assert callable(script.load()), script


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(900)  # six commands (pip twice) of up to 300 s each on a loaded machine
def test_wheel_install_runs_from_another_folder(tmp_path):
    # Build from a copy, so the build leaves nothing in the checkout; offline and without build isolation
    # (setuptools comes from this environment: the dev extra).
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(tree)],
         tmp_path, dict(os.environ))
    (wheel,) = (tmp_path / "dist").glob("clustercam_pl-*.whl")
    target = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], tmp_path, dict(os.environ))

    # -S: no site-packages .pth files, so an editable install of the checkout is not on the path; the
    # dependencies come from this environment's site-packages, after the installed wheel.
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": os.pathsep.join([str(target), *deps]), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    py = [sys.executable, "-S"]
    user = tmp_path / "user"  # the folder the user works in, outside the checkout
    user.mkdir()
    # Each console script's module is found in the installed copy (found, not imported: three of them run below).
    probe = ("import clustercam_pl, json, sys; from importlib import metadata, util; d = metadata.distribution('clustercam_pl');"
             "print(json.dumps({'file': clustercam_pl.__file__, 'path': sys.path, 'dist': str(d.locate_file('')),"
             "'scripts': {e.name: util.find_spec(e.module).origin for e in d.entry_points if e.group == 'console_scripts'}}))")
    where = json.loads(_run([*py, "-c", probe], user, env).stdout)
    assert Path(where["file"]).is_relative_to(target), where["file"]
    assert Path(where["dist"]) == target
    venv = Path(sys.prefix).resolve()  # the environment may live inside the checkout (make's .venv)
    inside = [p for p in where["path"] if p and Path(p).resolve().is_relative_to(REPO)
              and not Path(p).resolve().is_relative_to(venv)]
    assert not inside, where["path"]
    assert SCRIPTS <= set(where["scripts"]), where["scripts"]
    assert all(Path(origin).is_relative_to(target) for origin in where["scripts"].values()), where["scripts"]
    # Every config of the checkout is installed (what the commands compose: eval, predict, ... as train).
    conf = REPO / "src" / "clustercam_pl" / "conf"
    shipped = {p.relative_to(conf) for p in conf.rglob("*.yaml")}
    assert shipped and shipped == {p.relative_to(target / "clustercam_pl" / "conf")
                                   for p in (target / "clustercam_pl" / "conf").rglob("*.yaml")}

    # Two training steps from the user's own experiment file (--config-dir), through the console script.
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("+experiment=")]
    _run([*py, str(target / "bin" / "clustercam-train"), "--config-dir", str(my_configs(tmp_path)),
          "+experiment=my_run", *tiny, "trainer.max_epochs=1", "data.synthetic.num_train=8",
          "data.synthetic.num_val=2"], user, env)
    (run,) = (user / "outputs" / "my_run").iterdir()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert "bg_high: 0.45" in (run / "config.yaml").read_text()
    info = json.loads((run / "env.json").read_text())
    assert info["clustercam_pl"]["git_commit"] is None  # an installed copy is no checkout
    assert Path(info["clustercam_pl"]["path"]).is_relative_to(target)

    done = _run([*py, str(target / "bin" / "clustercam-prepare"), "--help"], user, env)
    assert "voc" in done.stdout and "coco" in done.stdout
    # `python -m` runs the installed copy too (test_train.py runs `python -m clustercam_pl.train` of the checkout).
    done = _run([*py, "-m", "clustercam_pl.summarize", str(run)], user, env)
    assert "| n | seeds | val/seg_miou |" in done.stdout
