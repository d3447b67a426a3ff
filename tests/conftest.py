"""Shared test settings: CPU only, no network, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import logging  # noqa: E402
from types import MappingProxyType  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# make test runs one pytest-xdist worker per core: each worker, and every process a test starts, runs torch
# with one thread (N workers x N threads on N cores would only contend).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The parity fixture lives in the shared folder beside the checkout (CI copies it there too).
FIXTURE_DIR = Path(
    os.environ.get("CLUSTERCAM_PARITY_DIR", REPO_ROOT.parent / "shared" / "fixtures" / "official_parity")
)


@pytest.fixture(autouse=True)
def _torch_state():
    """Every test starts with the same seed and the default dtype, and leaves them so."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The reference parity fixture; a missing fixture is a failure, not a skip."""
    ckpt = FIXTURE_DIR / "official_checkpoint.pth"
    exp = FIXTURE_DIR / "expected.pt"
    if not (ckpt.is_file() and exp.is_file()):
        pytest.fail(
            f"parity fixture not found in {FIXTURE_DIR}: expected official_checkpoint.pth and expected.pt. "
            "It ships in shared/fixtures/official_parity beside the checkout; "
            "set CLUSTERCAM_PARITY_DIR to point elsewhere."
        )
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def expected(parity_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(parity_dir / "expected.pt", map_location="cpu", weights_only=True)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny synthetic run, trained once per session for every test that needs a trained run
    (metrics, checkpoints, env.json, eval / predict on real Lightning checkpoints); see
    helpers.TINY_RUN_OVERRIDES. A test that wants other settings trains its own."""
    from clustercam_pl.train import train
    from helpers import TINY_RUN_OVERRIDES, TinyRun, compose_train

    folder = tmp_path_factory.mktemp("tiny_run")
    logger, handler = logging.getLogger("clustercam_pl"), _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        torch.manual_seed(0)
        summary = train(compose_train(TINY_RUN_OVERRIDES, output_dir=folder))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return TinyRun(folder, MappingProxyType(summary), tuple(handler.messages))


@pytest.fixture
def two_forked_processes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The overrides that run a command on 2 CPU processes forked from the test's process
    (`trainer.strategy=ddp_fork`: the multi-process path without starting new interpreters). The
    `trainer=ddp` script launcher, which re-runs the command line, keeps its command-line tests:
    test_train.py::test_ddp_two_cpu_processes, test_eval.py::test_two_process_eval_and_export_equal_one_process
    and test_eval_resume.py's two-process test. One torch thread here and in the forks (OMP_NUM_THREADS,
    which Lightning's launcher honours), so one and two processes round floats alike; the MASTER_PORT the
    launcher sets in this process is taken back afterwards."""
    port = os.environ.get("MASTER_PORT")
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield ["trainer=ddp", "trainer.strategy=ddp_fork", "trainer.accelerator=cpu", "trainer.devices=2"]
    torch.set_num_threads(threads)
    if port is None:
        os.environ.pop("MASTER_PORT", None)
    else:
        os.environ["MASTER_PORT"] = port


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first (in file order), so that under pytest-xdist the long ones start early and the
    short ones fill the workers' ends instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
