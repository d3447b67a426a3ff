"""Every ViT preset of conf/net against timm itself (issue 14): key mapping, LayerScale, position grids.

The oracle is timm's own model of each preset's architecture, randomly initialised (`pretrained=False`,
no download) and written to a `.pth` file as released weights are: with the cluster module off and
K = 1, ClusterCAM's backbone loaded from that file must compute what timm computes.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from clustercam_pl.checkpoint import (
    UNUSED_IMAGENET_KEYS,
    framework_section,
    imagenet_to_ours,
    load_imagenet_weights,
    read_file,
)
from clustercam_pl.entry import check_config
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import preset_names
from clustercam_pl.train import train
from helpers import TINY_OVERRIDES, compose_train, one_training_step, rel_err

PRESETS = [p for p in preset_names() if p != "tiny"]  # the presets with pretrained weights
PATCH_GRID = 3  # timm models of the parity test are built for a 3x3 patch grid: fast at any width


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    """timm's model of these weights, random init, every 1-D tensor (norms, biases, LayerScale gammas)
    perturbed: timm initialises norms to 1 / 0 and gammas to 1e-5, which would hide a wrong mapping."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def saved(model: torch.nn.Module, tmp_path, name: str = "weights.pth"):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def test_every_preset_names_weights_of_its_own_shape():
    """The presets are the issue's; each names timm weights whose pre-training grid is its pos_grid."""
    assert PRESETS == ["dinov2_vitb14", "dinov2_vits14", "vitb", "vits", "vits_dino8", "vitt"]
    for name in PRESETS:
        cfg = NetConfig.preset(name)
        size = timm.models.get_pretrained_cfg(cfg.weights).input_size[-1]
        assert size // cfg.patch_size == cfg.pos_grid, name  # 14, 28 or 37
    assert NetConfig.preset("tiny").weights is None


# ViT-Ti (5 M parameters) in the fast suite; the ViT-S presets (22 M, ~1 s each on 2 cores) and ViT-B (86 M,
# ~5 s each) in the full suite only.
@pytest.mark.parametrize("preset", [p if p == "vitt" else pytest.param(p, marks=pytest.mark.slow) for p in PRESETS])
def test_backbone_without_clusters_equals_timm(preset, tmp_path):
    """Patch and class tokens after the last block (before timm's final norm) at timm's input size."""
    cfg = NetConfig.preset(preset, num_classes=1, cluster_blocks=[], pos_grid=PATCH_GRID)
    side = PATCH_GRID * cfg.patch_size
    vit = timm_model(cfg.weights, img_size=side)
    net = load_imagenet_weights(ClusterCAMNet(cfg).eval(), saved(vit, tmp_path))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        ours = net.backbone(x)
        ((patches, prefix),) = vit.forward_intermediates(
            x, indices=1, norm=False, intermediates_only=True, return_prefix_tokens=True
        )  # (B, C, h, w), (B, 1, C)
    assert ours.patch_tokens.shape == patches.shape == (2, cfg.embed_dim, PATCH_GRID, PATCH_GRID)
    assert rel_err(ours.patch_tokens, patches) < 1e-5
    assert rel_err(ours.class_tokens, prefix) < 1e-5


def test_cluster_branch_takes_the_reference_init_under_layer_scale(tmp_path):
    """DeiT's rule on DINOv2: norm1 -> the four attention norms, attn -> both branches, ls1 -> both gammas."""
    cfg = NetConfig.preset("dinov2_vits14", num_classes=2, depth=2, cluster_blocks=[1], pos_grid=PATCH_GRID)
    vit = timm_model(cfg.weights, img_size=PATCH_GRID * 14, depth=2)
    v = vit.state_dict()
    net = load_imagenet_weights(ClusterCAMNet(cfg), saved(vit, tmp_path))
    plain, clu = net.backbone.blocks[0], net.backbone.blocks[1]
    assert isinstance(plain.ls_cluster, torch.nn.Identity)  # no cluster branch, no third gamma
    torch.testing.assert_close(plain.ls1.gamma, v["blocks.0.ls1.gamma"])
    torch.testing.assert_close(plain.ls2.gamma, v["blocks.0.ls2.gamma"])
    torch.testing.assert_close(clu.ls1.gamma, v["blocks.1.ls1.gamma"])
    torch.testing.assert_close(clu.ls_cluster.gamma, v["blocks.1.ls1.gamma"])
    assert clu.ls_cluster.gamma.data_ptr() != clu.ls1.gamma.data_ptr()  # two parameters, trained apart
    a = clu.st_attn
    for ln in (a.ln_pat, a.ln_pat2, a.ln_cls, a.ln_st):
        torch.testing.assert_close(ln.bias, v["blocks.1.norm1.bias"])
    torch.testing.assert_close(a.qkv_stsa.weight, v["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(a.proj_cls.bias, v["blocks.1.attn.proj.bias"])


def test_layer_scale_is_off_by_default_and_adds_no_tensors():
    """The reference network's state dict keys (and so its checkpoints) do not change."""
    keys = set(ClusterCAMNet(NetConfig.preset("vits", depth=2)).state_dict())
    assert not [k for k in keys if ".ls" in k]
    ls = set(ClusterCAMNet(NetConfig.preset("vits", depth=2, layer_scale=1e-5)).state_dict()) - keys
    assert ls == {f"backbone.blocks.{i}.{g}.gamma" for i in range(2) for g in ("ls1", "ls2", "ls_cluster")}


@pytest.mark.slow  # two ViT-S networks (timm's and ours)
def test_weights_of_another_architecture_name_their_keys_and_the_fitting_preset():
    vit = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=28)
    net = ClusterCAMNet(NetConfig.preset("vits", patch_size=14, num_classes=1))  # no LayerScale
    with pytest.raises(ValueError) as e:
        imagenet_to_ours(vit.state_dict(), net, "dinov2.pth")
    left = [f"blocks.{i}.ls{j}.gamma" for i in range(5) for j in (1, 2)]
    assert str(e.value) == (
        "dinov2.pth does not fit the network (net has embed_dim=384, depth=12, patch_size=14, layer_scale=None; "
        "these weights fit net=dinov2_vits14):\n"
        f"  neither mapped nor deliberately unused ({list(UNUSED_IMAGENET_KEYS)}): {left} ..."
    )


def test_missing_extra_and_misshapen_tensors_are_errors():
    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    sd = vit.state_dict()
    hint = "no preset of conf/net fits these weights: set the net.* fields to their shapes"
    deeper = ClusterCAMNet(NetConfig.preset("vitt", depth=3, num_classes=1, pos_grid=2))
    with pytest.raises(ValueError) as e:
        imagenet_to_ours(sd, deeper, "w.pth")
    assert str(e.value).startswith(
        f"w.pth does not fit the network (net has embed_dim=192, depth=3, patch_size=16, layer_scale=None; {hint}):\n"
        "  missing in the weights: ['blocks.2.norm2.weight', 'blocks.2.norm2.bias', "
    )
    net = ClusterCAMNet(NetConfig.preset("vitt", depth=2, num_classes=1, pos_grid=2))
    with pytest.raises(ValueError) as e:
        imagenet_to_ours(sd | {"blocks.0.attn.q_norm.weight": torch.ones(64)}, net, "w.pth")
    assert str(e.value).endswith(f"deliberately unused ({list(UNUSED_IMAGENET_KEYS)}): ['blocks.0.attn.q_norm.weight']")
    wide = ClusterCAMNet(NetConfig.preset("vitt", depth=2, num_classes=1, pos_grid=2, mlp_ratio=2.0))
    with pytest.raises(ValueError) as e:
        imagenet_to_ours(sd, wide, "w.pth")
    assert "shape mismatch backbone.blocks.0.mlp.fc1.weight: weights (768, 192) vs model (384, 192)" in str(e.value)
    imagenet_to_ours(sd, net, "w.pth")  # the same weights fit the right shape


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2.lvd142m", "deit_tiny_distilled_patch16_224"])
def test_register_and_distillation_tokens_are_deliberately_unused(name, caplog):
    """Register tokens (positions for patches only: timm's no_embed_class) and DeiT's distillation token."""
    vit = timm.create_model(name, pretrained=False, img_size=2 * 16 if "deit" in name else 2 * 14, depth=1)
    sd = vit.state_dict()
    cfg = NetConfig.preset("dinov2_vits14" if "dinov2" in name else "vitt", depth=1, num_classes=3, pos_grid=2)
    with caplog.at_level(logging.WARNING, logger="clustercam_pl.checkpoint"):
        out = imagenet_to_ours(sd, ClusterCAMNet(cfg), name)
    pos = out["backbone.pos_embed"]  # (1, K + 4, C)
    if "reg" in name:
        assert torch.equal(pos[:, :3], torch.zeros(1, 3, 384))  # timm adds no position to the class token
        torch.testing.assert_close(pos[:, 3:], sd["pos_embed"])
        assert "its 4 register tokens are dropped" in caplog.text
    else:
        torch.testing.assert_close(pos[:, :3], sd["pos_embed"][:, :1].expand(1, 3, 192))
        torch.testing.assert_close(pos[:, 3:], sd["pos_embed"][:, 2:])  # after the class and distillation positions
        assert not caplog.text


@pytest.mark.parametrize("preset,crop", [("dinov2_vits14", 448), ("vits_dino8", 64), ("vitb", 80)])
def test_position_grid_of_pretraining_is_resampled_to_the_crop_as_the_reference(preset, crop, tmp_path):
    """The weights' own grid (37x37, 28x28, 14x14) is kept at load and resampled at each forward,
    bicubic with the reference's `scale_factor=(h + 0.1) / g` (MCTformer `interpolate_pos_encoding`)."""
    cfg = NetConfig.preset(preset, num_classes=2, depth=1)
    vit = timm_model(cfg.weights, depth=1)  # timm's default size: the pre-training grid
    sd = vit.state_dict()
    net = load_imagenet_weights(ClusterCAMNet(cfg).eval(), saved(vit, tmp_path))
    g, C, h = cfg.pos_grid, cfg.embed_dim, crop // cfg.patch_size
    assert torch.equal(net.backbone.pos_embed[:, 2:], sd["pos_embed"][:, 1:])  # no resampling at load
    grid = sd["pos_embed"][:, 1:].reshape(1, g, g, C).permute(0, 3, 1, 2)  # (1, C, g, g)
    n = math.sqrt(sd["pos_embed"].shape[1] - 1)  # the reference's sqrt(N)
    expected = F.interpolate(grid, scale_factor=((h + 0.1) / n, (h + 0.1) / n), mode="bicubic")  # (1, C, h, h)
    got = net.backbone.pos_embed_for(crop, crop, (h, h))  # (1, K + h*h, C)
    assert got.shape == (1, 2 + h * h, C)
    torch.testing.assert_close(got[:, 2:], expected.flatten(2).transpose(1, 2))
    torch.testing.assert_close(got[:, :2], sd["pos_embed"][:, :1].expand(1, 2, C))
    with torch.no_grad():
        assert net.backbone(torch.randn(1, 3, crop, crop)).patch_tokens.shape == (1, C, h, h)


def test_crop_not_a_multiple_of_14_names_the_nearest_sizes(tmp_path):
    cfg = compose_train(["+experiment=voc_dinov2_vits14", "data.crop_size=512"], output_dir=tmp_path)
    with pytest.raises(ValueError) as e:
        check_config(cfg)
    assert str(e.value) == (
        "data.crop_size=512 is not a multiple of net.patch_size=14: the network would see 36x36 patches and their "
        "CAMs would be stretched over 512 pixels, misaligning the pseudo labels with the image; use "
        "data.crop_size=504 or data.crop_size=518"
    )
    for experiment in ("voc_dinov2_vits14", "voc_vitb"):  # 448 fits 14 and 16 px patches
        check_config(compose_train([f"+experiment={experiment}"], output_dir=tmp_path))


def test_any_preset_on_any_experiment_brings_its_weights():
    """`net=<preset>` on a pretrained experiment loads the preset's weights; model.pretrained overrides."""
    assert compose_train(["+experiment=voc_vits", "net=vitb"]).model.pretrained == "deit_base_patch16_224"
    assert compose_train(["+experiment=coco_vits", "net=dinov2_vitb14"]).model.pretrained == (
        "vit_base_patch14_dinov2.lvd142m")
    cfg = compose_train(["+experiment=voc_vitb", "model.pretrained=/w/vit_base_augreg.pth"])
    assert (cfg.net.embed_dim, cfg.model.pretrained) == (768, "/w/vit_base_augreg.pth")
    cfg = compose_train(["+experiment=voc_dinov2_vits14"])
    assert (cfg.net.patch_size, cfg.net.layer_scale, cfg.data.crop_size) == (14, 1e-5, 448)
    assert compose_train(["+experiment=synthetic"]).model.pretrained is None


# Trained end to end: 16 px patches, and LayerScale with 14 px patches. The other presets differ from these
# only in widths, depths and patch sizes: they take one training step from their file.
TRAINED_PRESETS = ("dinov2_vits14", "vits")


def preset_run(preset: str, tmp_path):
    """`net=<preset> model.pretrained=<file>` on the synthetic set: one block of the preset's width / patch /
    LayerScale, initialised from a timm file. Returns the preset, its timm model and the run's config."""
    cfg = NetConfig.preset(preset)
    p = cfg.patch_size
    vit = timm_model(cfg.weights, depth=1)
    weights = saved(vit, tmp_path, "pretrained.pth")
    side = 64 if p == 8 else 4 * p  # 64 px, 56 px for 14 px patches: a 4x4 patch grid (8x8 for 8 px patches)
    dropped = ("net.embed_dim", "net.num_heads", "net.depth", "cam.cam_layers", "data.synthetic.image_size")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(dropped)]
    run = compose_train([
        *overrides, f"net={preset}", f"net.patch_size={p}", f"net.pos_grid={cfg.pos_grid}", "net.depth=1",
        "net.alpha_init=0.5", f"data.synthetic.image_size={side}", "data.synthetic.num_train=8",
        "trainer.max_epochs=1", "cam.cam_layers=1", f"model.pretrained={weights}", "data.num_workers=0",
    ], output_dir=tmp_path / "run")
    return cfg, vit, run


@pytest.mark.slow
@pytest.mark.parametrize("preset", TRAINED_PRESETS)
def test_preset_trains_on_the_synthetic_set(preset, tmp_path):
    """The preset trains two steps and validates; the checkpoint keeps the preset."""
    cfg, vit, run = preset_run(preset, tmp_path)
    p = cfg.patch_size
    summary = train(run)
    assert summary["global_step"] == 2  # 8 images / batch 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["val/pseudo_miou"] <= 1.0
    ckpt = read_file(tmp_path / "run" / "checkpoints" / "last.ckpt")
    stored = ckpt["clustercam"]["net_config"]
    assert (stored["embed_dim"], stored["patch_size"], stored["layer_scale"]) == (cfg.embed_dim, p, cfg.layer_scale)
    trained = ckpt["state_dict"]["net.backbone.blocks.0.mlp.fc1.weight"]
    start = vit.state_dict()["blocks.0.mlp.fc1.weight"]
    assert (trained - start).abs().max() < 5e-3  # two warm-up steps from the file (init std 0.02)


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in TRAINED_PRESETS])
def test_preset_takes_a_training_step_from_its_file(preset, tmp_path):
    """The preset's network is built at its width / patch / LayerScale, starts from the file, and one
    training step (CAMs, PAR, decoder) gives finite gradients to every weight."""
    cfg, vit, run = preset_run(preset, tmp_path)
    module, loss = one_training_step(run)
    stored = framework_section(module.net, None)["net_config"]
    assert (stored["embed_dim"], stored["patch_size"], stored["layer_scale"]) == (
        cfg.embed_dim, cfg.patch_size, cfg.layer_scale)
    assert torch.equal(module.net.backbone.blocks[0].mlp.fc1.weight, vit.state_dict()["blocks.0.mlp.fc1.weight"])
    assert torch.isfinite(loss) and loss > 0
    unused = [n for n, w in module.named_parameters() if w.requires_grad and w.grad is None]
    assert not unused, f"{preset}: no gradient reached {unused}"
    for n, w in module.named_parameters():
        assert w.grad is None or torch.isfinite(w.grad).all(), n


def test_reference_layout_round_trip_keeps_layer_scale():
    """A LayerScale network written in the reference layout is read back with its gammas."""
    from clustercam_pl.checkpoint import ours_to_reference, reference_net
    from helpers import tiny_net

    net = tiny_net(3, layer_scale=0.1, cluster_blocks=[1]).eval()
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "gamma"):
                m.gamma.uniform_(0.5, 1.5)
    back = reference_net(ours_to_reference(net.state_dict()), cluster_grid=list(net.cfg.cluster_grid))
    assert back.cfg.layer_scale is not None
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
