"""Reference checkpoints in, ImageNet weights in, and clear errors for files that do not fit."""

from __future__ import annotations

import time

import pytest
import torch

from clustercam_pl.models import ClusterCAMNet, from_official_checkpoint, load_imagenet_weights
from clustercam_pl.models.weights import imagenet_state_dict, ours_to_reference


def test_reference_round_trip_with_and_without_wrapper(tmp_path):
    net = ClusterCAMNet(num_classes=4, embed_dim=32, depth=3, num_heads=4, pos_grid=4, decoder_width=8, cam_layers=2)
    ref = ours_to_reference(net.state_dict())
    variants = {
        "wrapped": {"model": {"module." + k: v for k, v in ref.items()}, "epoch": 3},
        "plain": ref,
    }
    x = torch.randn(1, 3, 64, 48)
    net.eval()
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        loaded = from_official_checkpoint(tmp_path / f"{name}.pth").eval()
        assert loaded.backbone.num_heads == 4 and loaded.backbone.depth == 3 and loaded.num_classes == 4
        torch.testing.assert_close(loaded(x).seg_logits, net(x).seg_logits)


def test_reference_final_norm_is_accepted_and_ignored(parity_dir):
    sd = torch.load(parity_dir / "official_checkpoint.pth", weights_only=True)["model"]
    assert "module.norm.weight" in sd  # the reference saves it; we do not build it
    from_official_checkpoint(sd)


def test_truncated_checkpoint_names_the_file(tmp_path, parity_dir):
    data = (parity_dir / "official_checkpoint.pth").read_bytes()
    bad = tmp_path / "half.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*half\.pth.*truncated"):
        from_official_checkpoint(bad)


def test_checkpoint_for_another_class_count_names_tensor_and_shapes(parity_dir):
    from clustercam_pl.models.weights import load_state_dict_checked, reference_to_ours

    sd = torch.load(parity_dir / "official_checkpoint.pth", weights_only=True)["model"]
    sd = reference_to_ours({k.removeprefix("module."): v for k, v in sd.items()})
    net = ClusterCAMNet(num_classes=20, embed_dim=48, depth=12, num_heads=6, decoder_width=512)
    with pytest.raises(ValueError, match=r"shape mismatch backbone\.cls_token: checkpoint \(1, 3, 48\) vs model \(1, 20, 48\)"):
        load_state_dict_checked(net, sd, "official_checkpoint.pth")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, p)
    with pytest.raises(ValueError, match="weights_only=True"):
        from_official_checkpoint(p)


def _timm_vit(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    path = tmp_path / "vit.pth"
    torch.save({"model": vit.state_dict()}, path)
    return vit, path


@pytest.mark.parametrize("cluster_blocks", [None, [1]])
def test_imagenet_init_maps_deit_weights_as_the_reference(tmp_path, cluster_blocks):
    vit, path = _timm_vit(tmp_path)
    net = ClusterCAMNet(num_classes=3, embed_dim=32, depth=2, num_heads=2, pos_grid=4, decoder_width=8, cam_layers=2,
                        cluster_blocks=cluster_blocks)
    load_imagenet_weights(net, path)
    v = vit.state_dict()
    bb = net.backbone
    torch.testing.assert_close(bb.cls_token, v["cls_token"].expand(1, 3, 32))
    assert bb.pos_embed.shape == (1, 3 + 16, 32)  # 2x2 grid resampled to 4x4
    torch.testing.assert_close(bb.pos_embed[:, :3], v["pos_embed"][:, :1].expand(1, 3, 32))
    blk1 = bb.blocks[1].st_attn
    for ln in (blk1.ln_pat, blk1.ln_pat2, blk1.ln_cls, blk1.ln_st):
        torch.testing.assert_close(ln.weight, v["blocks.1.norm1.weight"])
    torch.testing.assert_close(blk1.qkv_stsa.weight, v["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(blk1.proj_cls.bias, v["blocks.1.attn.proj.bias"])
    torch.testing.assert_close(bb.blocks[0].mlp.fc2.weight, v["blocks.0.mlp.fc2.weight"])
    if cluster_blocks == [1]:
        torch.testing.assert_close(bb.blocks[0].attn.qkv.weight, v["blocks.0.attn.qkv.weight"])


def test_imagenet_init_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    vit, _ = _timm_vit(tmp_path)
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    assert set(imagenet_state_dict(tmp_path / "vit.safetensors")) == set(vit.state_dict())


def test_offline_hub_name_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"pass its path instead"):
        imagenet_state_dict("deit_tiny_patch16_224")
    assert time.perf_counter() - t < 20


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        imagenet_state_dict(tmp_path / "nope.pth")
