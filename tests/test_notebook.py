"""The tour notebook: committed without outputs, and it runs end to end with a tiny budget."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

from helpers import TINY_NET_OVERRIDES

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "clustercam_tour.ipynb"
TIMEOUT_S = 300

# A run of a few seconds: the tiny net made smaller, 64-pixel images, two short epochs; one thread
# (two threads on two shared cores thrash when other jobs run).
TINY_ENV = {
    "OMP_NUM_THREADS": "1",
    "CLUSTERCAM_NOTEBOOK_EPOCHS": "2",
    "CLUSTERCAM_NOTEBOOK_NUM_TRAIN": "16",
    "CLUSTERCAM_NOTEBOOK_OVERRIDES": " ".join([
        *TINY_NET_OVERRIDES,
        "data.synthetic.image_size=64",
        "data.synthetic.num_val=4",
        "data.global_batch_size=4",
        "data.val_batch_size=2",
        "cam.par_iters=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]),
}


def test_committed_notebook_is_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{NOTEBOOK.name}: cells {dirty} have outputs; run `python tools/strip_notebook.py`"


@contextmanager
def _kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], NotebookNode]]:
    """A kernel of this interpreter, started with TINY_ENV from notebooks/ as Jupyter would, and a function
    that runs the whole notebook in it with some more environment. Each run starts from `%reset -f`, an
    empty namespace as in a new kernel, without a new kernel's imports (seconds of CPU each)."""
    from nbclient import NotebookClient

    # A `python3` kernel spec for sys.executable, first on JUPYTER_PATH: the kernel is this venv's
    # Python even where a user-level spec of that name points elsewhere.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (clustercam_pl tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for key, value in TINY_ENV.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    client = NotebookClient(nbformat.v4.new_notebook(), timeout=TIMEOUT_S, startup_timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})

    def run(env: dict[str, str]) -> NotebookNode:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.environ.update({env!r})"))
        client.nb = nb
        client.execute(cleanup_kc=False)  # raises CellExecutionError on the first failing cell
        return nb

    with client.setup_kernel():  # shuts the kernel down at the end
        yield run


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == kind or kind in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT_S)
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "out"
    t0 = time.monotonic()
    with _kernel(monkeypatch, tmp_path) as run_notebook:
        nb = run_notebook({"CLUSTERCAM_NOTEBOOK_OUTPUT": str(out)})
        assert time.monotonic() - t0 < TIMEOUT_S
        assert not _outputs(nb, "error")
        # Metrics curve, panels, per-class maps, cluster assignment.
        assert len(_outputs(nb, "image/png")) >= 4
        runs = [p.parent for p in out.glob("*/metrics.json")]
        assert len(runs) == 1, f"expected one run folder under {out}, got {runs}"
        metrics = json.loads((runs[0] / "metrics.json").read_text())
        assert metrics["global_step"] == 2 * 16 // 4
        ckpts = sorted((runs[0] / "checkpoints").glob("best-*.ckpt"))
        assert ckpts

        # The other branch: show a given checkpoint (with its run's config.yaml) without training.
        nb = run_notebook({"CLUSTERCAM_NOTEBOOK_OUTPUT": str(tmp_path / "unused"),
                           "CLUSTERCAM_NOTEBOOK_CKPT": str(ckpts[0])})
    assert len(_outputs(nb, "image/png")) >= 4
    assert not (tmp_path / "unused").exists(), "loading a checkpoint must not start a run folder"
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert f"model: {ckpts[0]}" in text
