"""The package layout is the data flow, and imports only ever point down it.

utils / data -> models -> checkpoint -> cam -> losses / metrics / optim -> inference -> lit_module ->
callbacks / visualize -> tasks (the commands' library halves) -> entry points. Nothing below the entry
points imports Hydra or OmegaConf, and no import points up, not even inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import clustercam_pl

PKG = Path(clustercam_pl.__file__).parent
ENTRY_POINTS = {"train", "eval", "export_labels", "prepare", "bench", "summarize", "entry", "predict", "audit", "refine"}

# Each module's layer (lower = closer to the data); a module may import from its own layer or below.
LAYERS: dict[str, int] = {
    "conf": 0, "utils": 0, "data": 0,
    "models": 1,
    "checkpoint": 2,
    "cam": 3,
    "losses": 4, "metrics": 4, "optim": 4,
    "inference": 5,
    "lit_module": 6,
    "callbacks": 7, "visualize": 7,
    "tasks": 8,
    **dict.fromkeys(ENTRY_POINTS, 9),
}


def _unit(path: Path) -> str:
    """The layer unit of a module: its subpackage (data, models, cam) or its own name."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks count as top level
            nodes.extend(node.body)
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "clustercam_pl":
                names |= {f"clustercam_pl.{a.name}" for a in node.names}
    return names


def _package_imports(path: Path, top_level_only: bool) -> set[str]:
    return {n.split(".")[1] for n in _imports(path, top_level_only) if n.startswith("clustercam_pl.")}


def _modules() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG]


def test_every_module_has_a_layer():
    units = {_unit(p) for p in _modules()}
    assert units <= set(LAYERS), f"modules without a layer in this test: {sorted(units - set(LAYERS))}"


def _upward(unit: str, path: Path) -> list[str]:
    found = []
    for top_level in (True, False):
        for target in _package_imports(path, top_level):
            if target in LAYERS and LAYERS[target] > LAYERS[unit]:
                found.append(f"{path.name} -> {target}")
    return sorted(set(found))


def test_imports_point_down_the_layers():
    upward = [u for path in _modules() for u in _upward(_unit(path), path)]
    assert not upward, f"imports pointing up the data flow: {sorted(set(upward))}"


def test_the_old_inference_to_lit_module_arrow_is_caught(tmp_path):
    """Before the split, inference.py imported lit_module; the rule flags exactly that."""
    old = tmp_path / "inference.py"
    old.write_text("from clustercam_pl.lit_module import net_from_checkpoint\n")
    assert _upward("inference", old) == ["inference.py -> lit_module"]
    lazy = tmp_path / "clustercam.py"
    lazy.write_text("def f():\n    from clustercam_pl.lit_module import x\n")
    assert _upward("models", lazy) == ["clustercam.py -> lit_module"]


def test_no_hydra_below_entry_points():
    offenders = [
        str(p.relative_to(PKG)) for p in _modules()
        if _unit(p) not in ENTRY_POINTS and {n.split(".")[0] for n in _imports(p, False)} & {"hydra", "omegaconf"}
    ]
    assert not offenders, f"Hydra/OmegaConf imported below the entry points: {offenders}"
