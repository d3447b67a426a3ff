"""Config helpers shared by the training tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch import Tensor

from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import PRESET_DIR

CONF_DIR = PRESET_DIR.parent  # the configs shipped inside the package

# The one small network of the tests: conf/net/tiny.yaml shrunk to a few thousand weights.
TEST_NET = dict(embed_dim=32, depth=2, num_heads=2, pos_grid=4, decoder_width=8, drop_path_rate=0.0)


def tiny_net(num_classes: int = 4, **fields) -> ClusterCAMNet:
    """`NetConfig.preset("tiny")` at test size; `fields` change any `NetConfig` field."""
    return ClusterCAMNet(NetConfig.preset("tiny", num_classes=num_classes, **(TEST_NET | fields)))

# A few-second synthetic run: tiny net, tiny images, few batches, no loggers.
TINY_OVERRIDES = [
    "+experiment=synthetic",
    "logger=none",
    "net.embed_dim=32",
    "net.depth=2",
    "net.num_heads=2",
    "cam.cam_layers=2",
    "cam.p2p_refine=true",  # the reference's CAM path (the synthetic experiment turns it off)
    "net.decoder_width=16",
    "data.synthetic.image_size=64",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.synthetic.num_test=4",
    "data.global_batch_size=4",
    "data.val_batch_size=2",
    "cam.par_iters=2",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "model.seg_start_epoch=1",
]


@contextmanager
def hydra_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml outside a Hydra run, with paths.output_dir pointed at output_dir."""
    with hydra_config():
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def rel_err(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b||, the parity fixture's definition of a match."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
