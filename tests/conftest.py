"""Shared test settings: CPU only, no network, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
