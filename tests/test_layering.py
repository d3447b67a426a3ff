"""The package layout is the data flow: nothing below the entry points imports Hydra or OmegaConf."""

from __future__ import annotations

import ast
from pathlib import Path

import clustercam_pl

PKG = Path(clustercam_pl.__file__).parent
ENTRY_POINTS = {"train.py", "eval.py", "pseudo_labels.py", "prepare.py", "bench.py", "entry.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_hydra_below_entry_points():
    offenders = [
        str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
        if p.name not in ENTRY_POINTS and _imports(p) & {"hydra", "omegaconf"}
    ]
    assert not offenders, f"Hydra/OmegaConf imported below the entry points: {offenders}"


def test_models_do_not_import_cam_or_training():
    for p in (PKG / "models").rglob("*.py"):
        src = p.read_text()
        assert "clustercam_pl.cam" not in src and "clustercam_pl.lit_module" not in src, p
