"""clustercam_pl.checkpoint: every kind in (reference, framework of every format, ImageNet), the path
resolver, atomic writes, and clear errors for files that do not fit."""

from __future__ import annotations

import errno
import json
import multiprocessing
import pickle
import random
import resource
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from clustercam_pl.checkpoint import (
    FORMAT,
    AtomicCheckpointIO,
    imagenet_state_dict,
    load_checkpoint,
    load_imagenet_weights,
    load_state_dict_checked,
    ours_to_reference,
    reference_net,
    reference_to_ours,
)
from clustercam_pl.models import ClusterCAMNet
from helpers import compose_config, fork_process, tiny_net


def test_reference_round_trip_with_and_without_wrapper(tmp_path):
    net = tiny_net(4, depth=3, num_heads=4, decoder_dilation=5)  # the dilation shapes cannot tell
    ref = ours_to_reference(net.state_dict())
    variants = {
        "wrapped": {"model": {"module." + k: v for k, v in ref.items()}, "epoch": 3},
        "plain": ref,
    }
    x = torch.randn(1, 3, 64, 48)
    net.eval()
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        loaded = load_checkpoint(tmp_path / f"{name}.pth").net
        assert loaded.cfg.num_heads == 4 and loaded.cfg.depth == 3 and loaded.cfg.num_classes == 4
        torch.testing.assert_close(loaded(x).seg_logits, net(x).seg_logits)


def test_reference_final_norm_is_accepted_and_ignored(parity_dir):
    sd = torch.load(parity_dir / "official_checkpoint.pth", weights_only=True)["model"]
    assert "module.norm.weight" in sd  # the reference saves it; we do not build it
    reference_net(sd)


def test_truncated_checkpoint_names_the_file(tmp_path, parity_dir):
    data = (parity_dir / "official_checkpoint.pth").read_bytes()
    bad = tmp_path / "half.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*half\.pth.*truncated") as err:
        load_checkpoint(bad)
    assert str(err.value) == (
        f"cannot read checkpoint {bad}: it is truncated ({len(data) // 2} bytes; the zip archive has no end "
        f"record): probably an interrupted copy or save. {AGAIN}")


def test_lightning_module_needs_a_framework_checkpoint(parity_dir):
    from clustercam_pl.lit_module import module_from_checkpoint

    path = parity_dir / "official_checkpoint.pth"
    with pytest.raises(ValueError) as err:
        module_from_checkpoint(path)
    assert str(err.value) == (
        f"{path} is a reference checkpoint: it has no training settings to build a ClusterCAMLitModule from; "
        f"use its network: clustercam_pl.checkpoint.load_checkpoint('{path}').net")


def test_checkpoint_for_another_class_count_names_tensor_and_shapes(parity_dir):
    sd = torch.load(parity_dir / "official_checkpoint.pth", weights_only=True)["model"]
    sd = reference_to_ours({k.removeprefix("module."): v for k, v in sd.items()})
    net = ClusterCAMNet(num_classes=20, embed_dim=48, depth=12, num_heads=6, decoder_width=512)
    with pytest.raises(ValueError, match=r"shape mismatch backbone\.cls_token: checkpoint \(1, 3, 48\) vs model \(1, 20, 48\)"):
        load_state_dict_checked(net, sd, "official_checkpoint.pth")


AGAIN = "Copy or download it again, or pass another checkpoint (a run folder gives its checkpoints/last.ckpt)"
CALLS_CODE = ("it holds Python code that would run on load (it would call print). Checkpoints are read with "
              "weights_only=True, which loads tensors and plain values only. Use a checkpoint from a source you "
              "trust, or have the program that wrote this file save plain tensors (torch.save(model.state_dict(), "
              "...)) and pass that file")


class _CallsPrint:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": _CallsPrint()}, p)
    with pytest.raises(ValueError) as err:
        load_checkpoint(p)
    assert str(err.value) == f"refusing to read {p}: {CALLS_CODE}"


def _html(path):
    path.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n")


def _random(path):
    path.write_bytes(random.Random(0).randbytes(4096))  # starts with b"\xcd\x07,\xd8": no zip, no pickle


def _foreign_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("README.txt", "not weights")


def _empty(path):
    path.write_bytes(b"")


def _legacy_cut(path):
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:100])


def _torch_code(path):
    torch.save({"model": _CallsPrint()}, path)


def _pickle_code(path):
    path.write_bytes(pickle.dumps({"x": _CallsPrint()}, protocol=2))


UNREADABLE = {
    "html": (_html, "it is not a PyTorch checkpoint but a web page (it starts with '<!DOCTYPE html>'): a download "
                    "that saved an error or login page"),
    "random": (_random, "it is not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with "
                        "b'\\xcd\\x07,\\xd8\\xbeo\\x9fb')"),
    "foreign_zip": (_foreign_zip, "it is a zip archive but not a PyTorch checkpoint (no data.pkl; it holds README.txt)"),
    "empty": (_empty, "it is empty (0 bytes): an interrupted copy or save"),
    "legacy_cut": (_legacy_cut, "it is truncated (100 bytes; EOFError: no detail): probably an interrupted copy or save"),
    "torch_code": (_torch_code, None),
    "pickle_code": (_pickle_code, None),
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_damaged_files_are_told_apart_from_code(tmp_path, kind):
    """Only a pickle that really calls code is refused as code; a damaged or foreign file is named as such,
    and no message advises weights_only=False (torch's own messages do, for any of these files)."""
    make, what = UNREADABLE[kind]
    path = tmp_path / "model.ckpt"
    make(path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    message = str(err.value)
    if what is None:
        assert message == f"refusing to read {path}: {CALLS_CODE}"
    else:
        assert message == f"cannot read checkpoint {path}: {what}. {AGAIN}"
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def _timm_vit(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    path = tmp_path / "vit.pth"
    torch.save({"model": vit.state_dict()}, path)
    return vit, path


@pytest.mark.parametrize("cluster_blocks", [None, [1]])
def test_imagenet_init_maps_deit_weights_as_the_reference(tmp_path, cluster_blocks):
    vit, path = _timm_vit(tmp_path)
    net = tiny_net(3, cluster_blocks=cluster_blocks)
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


def test_hub_probe_and_offline_download_leave_process_state_alone(monkeypatch):
    """The probe used to set socket.setdefaulttimeout for every socket of the process, and an unreachable
    hub flipped huggingface_hub's offline mode for good."""
    import socket

    import huggingface_hub.constants as hf_constants

    from clustercam_pl.checkpoint.imagenet import _hub_reachable

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.5)
    try:
        _hub_reachable("localhost", timeout=1.0)
        assert socket.getdefaulttimeout() == 7.5
    finally:
        socket.setdefaulttimeout(before)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    seen = []

    def create_model(name, **kwargs):
        seen.append(hf_constants.HF_HUB_OFFLINE)
        raise FileNotFoundError(f"{name} is not in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr("timm.create_model", create_model)
    with pytest.raises(RuntimeError, match=r"pass its path instead"):
        imagenet_state_dict("deit_tiny_patch16_224")
    assert seen == [True]  # offline (cache only) for the download ...
    assert hf_constants.HF_HUB_OFFLINE is False  # ... and only for it


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        imagenet_state_dict(tmp_path / "nope.pth")


# ------------------------------------------------------------------ atomic writes
def _save_versions(path: Path) -> None:
    """Save checkpoints 0, 1, 2... to `path`, 240 MB each: a save takes long enough to be killed mid-way."""
    io, big = AtomicCheckpointIO(), torch.zeros(60_000_000)
    for version in range(1000):
        big[0] = version
        io.save_checkpoint({"version": version, "weights": big}, path)


@pytest.mark.slow  # a process killed mid-save (240 MB checkpoints)
def test_kill_during_save_leaves_previous_checkpoint_readable(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = fork_process(_save_versions, path)  # a process of its own, forked (no interpreter start-up)
    try:
        deadline = time.time() + 60
        while not (path.exists() and list(tmp_path.glob(".last.ckpt.*.part"))):  # a save done, the next under way
            assert proc.is_alive() and time.time() < deadline, "no save in progress seen"
            time.sleep(0.01)
        proc.kill()
        proc.join(30)
    finally:
        proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    assert ckpt["weights"][0] == ckpt["version"] >= 0
    assert ckpt["weights"].numel() == 60_000_000


def test_save_replaces_and_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    for v in range(2):
        io.save_checkpoint({"v": torch.tensor(v)}, tmp_path / "c.ckpt")
    assert int(io.load_checkpoint(tmp_path / "c.ckpt")["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def _save_under_a_size_limit(kind: str, path: Path, result: Any) -> None:
    """In a forked child: a save that outgrows a 200 kB file-size limit; what it raised goes to `result`."""
    import numpy as np

    from clustercam_pl.tasks.export_labels import write_npz

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
    try:
        if kind == "checkpoint":  # the path Lightning's saves take (train.py's plugin)
            AtomicCheckpointIO().save_checkpoint({"version": 2, "weights": torch.ones(1_000_000)}, path)
        else:  # the label export's CAM file
            write_npz(path, cam=np.random.default_rng(0).random((500, 500)))
        result.put(None)
    except Exception as e:
        result.put([type(e).__name__, str(e)])


@pytest.mark.parametrize("kind", ["checkpoint", "npz"])
def test_size_limit_during_a_save_names_file_and_cause_and_keeps_the_old_file(tmp_path, kind):
    """torch.save reported a file-size limit as "PytorchStreamWriter ... unexpected pos" (no file, no cause),
    the label export as "File too large" (no path). The limit is set in a forked child (a process of its own:
    the limit and the ignored SIGXFSZ stay there)."""
    import numpy as np

    from clustercam_pl.tasks.export_labels import write_npz

    path = tmp_path / ("last.ckpt" if kind == "checkpoint" else "cam.npz")
    if kind == "checkpoint":
        AtomicCheckpointIO().save_checkpoint({"version": 1}, path)
    else:
        write_npz(path, cam=np.ones((2, 2)))
    old = path.read_bytes()
    result = multiprocessing.get_context("fork").SimpleQueue()
    child = fork_process(_save_under_a_size_limit, kind, path, result)
    child.join(120)
    assert child.exitcode == 0
    assert result.get() == [
        "WriteError",
        f"[Errno {errno.EFBIG}] could not write {path}: the file is larger than the file-size limit of this process or file system "
        f"(ulimit -f). The previous {path.name} (if any) is intact and nothing else was changed; free space or "
        "raise the limit, or write elsewhere, then run the command again",
    ]
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial left
    if kind == "checkpoint":
        assert AtomicCheckpointIO().load_checkpoint(path) == {"version": 1}


# ------------------------------------------------------------ files written by earlier versions
FIXTURES = Path(__file__).parent / "fixtures"
FORMAT1 = FIXTURES / "format1_synthetic_tiny.ckpt"
FORMAT1_EXPECTED = json.loads((FIXTURES / "format1_synthetic_tiny.json").read_text())


def test_format1_checkpoint_migrates_on_read():
    from clustercam_pl.checkpoint import migrate, read_file

    raw = read_file(FORMAT1)
    assert raw["clustercam"]["format"] == 1 and raw["clustercam"]["net_config"]["cam_layers"] == 2
    new = migrate(raw, str(FORMAT1))
    assert new["clustercam"]["format"] == FORMAT and "p2p_refine" not in new["clustercam"]["net_config"]
    assert new["hyper_parameters"]["cam"]["cam_layers"] == 2 and new["hyper_parameters"]["cam"]["p2p_refine"] is False
    assert raw["clustercam"]["format"] == 1  # the input is not changed
    loaded = load_checkpoint(FORMAT1)
    assert loaded.kind == "framework" and loaded.cam["p2p_refine"] is False and loaded.class_names is None
    assert loaded.net.cfg.patch_size == 8 and loaded.net.cfg.depth == 2


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_format1_checkpoint_resumes_training(tmp_path):
    from clustercam_pl.train import train
    from helpers import compose_train

    overrides = ["+experiment=synthetic", "logger=none", "net.embed_dim=16", "net.depth=2", "net.num_heads=2",
                 "cam.cam_layers=2", "net.decoder_width=8", *FORMAT1_EXPECTED["data_overrides"][1:],
                 "data.global_batch_size=4", "data.val_batch_size=2", "cam.par_iters=2", "trainer.max_epochs=3",
                 "trainer.enable_progress_bar=false", "model.seg_start_epoch=1", f"ckpt_path={FORMAT1}"]
    summary = train(compose_train(overrides, output_dir=tmp_path))
    assert summary["epoch"] == 3 and summary["global_step"] == 6  # resumed at step 4, one epoch of 2 steps
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["clustercam"]["format"] == FORMAT and resumed["global_step"] == 6


FORMAT2 = FIXTURES / "format2_synthetic_tiny.ckpt"
FORMAT2_EXPECTED = json.loads((FIXTURES / "format2_synthetic_tiny.json").read_text())


def test_format2_checkpoint_migrates_on_read():
    from clustercam_pl.checkpoint import migrate, read_file

    raw = read_file(FORMAT2)
    assert raw["clustercam"]["format"] == 2 and raw["hyper_parameters"]["net"] == raw["clustercam"]["net_config"]
    new = migrate(raw, str(FORMAT2))
    assert new["clustercam"]["format"] == FORMAT == 3 and "net" not in new["hyper_parameters"]  # stored once
    assert new["clustercam"]["net_config"] == raw["clustercam"]["net_config"]
    assert new["hyper_parameters"]["cam"] == raw["hyper_parameters"]["cam"]
    assert "net" in raw["hyper_parameters"]  # the input is not changed
    loaded = load_checkpoint(FORMAT2)
    assert loaded.kind == "framework" and loaded.cam["cam_layers"] == 2 and loaded.cam["p2p_refine"] is False
    assert loaded.class_names == ["disc/stripes", "square/checker", "triangle/dots", "ring/noise"]
    assert loaded.net.cfg.embed_dim == 16 and loaded.epoch == 2 and loaded.global_step == 4


@pytest.mark.parametrize("path, stored", [(FORMAT1, FORMAT1_EXPECTED), (FORMAT2, FORMAT2_EXPECTED)],
                         ids=["format1", "format2"])
def test_earlier_format_checkpoint_evaluates_and_exports_as_before(path, stored, tmp_path):
    """The numbers the version that wrote the file measured (its .json); the CAM settings (format 1:
    p2p_refine=false, cam_layers=2) come from the file."""
    from hydra import compose

    from clustercam_pl.eval import evaluate
    from clustercam_pl.export_labels import export_pseudo_labels
    from helpers import hydra_config

    data = [*stored["data_overrides"], "device=cpu"]
    with hydra_config():
        ev = compose("eval", overrides=[*data, f"ckpt_path={path}", "eval=ss"])
        ex = compose("export_labels", overrides=[*data, f"ckpt_path={path}", "split=val", "cam.par_iters=2",
                                                 f"out_dir={tmp_path / 'pl'}"])
    for cfg, sub in ((ev, "eval"), (ex, "export")):
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / sub)
    summary = evaluate(ev)
    assert summary["miou"] == pytest.approx(stored["eval_ss_val_miou"], abs=1e-7)
    assert summary["per_class_iou"] == pytest.approx(stored["eval_ss_val_per_class"], abs=1e-7)
    exported = export_pseudo_labels(ex)
    expected = stored["pseudo_labels_val_par_iters2"]
    assert exported["pseudo_miou"] == pytest.approx(expected["pseudo_miou"], abs=1e-7)
    assert exported["cam_miou"] == pytest.approx(expected["cam_miou"], abs=1e-7)


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_format2_checkpoint_resumes_training_and_writes_the_current_format(tmp_path):
    from clustercam_pl.train import train
    from helpers import compose_train

    overrides = ["+experiment=synthetic", "logger=none", "net.embed_dim=16", "net.depth=2", "net.num_heads=2",
                 "cam.cam_layers=2", "net.decoder_width=8", *FORMAT2_EXPECTED["data_overrides"][1:],
                 "data.global_batch_size=4", "data.val_batch_size=2", "cam.par_iters=2", "trainer.max_epochs=3",
                 "trainer.enable_progress_bar=false", "model.seg_start_epoch=1", f"ckpt_path={FORMAT2}"]
    summary = train(compose_train(overrides, output_dir=tmp_path))
    assert summary["epoch"] == 3 and summary["global_step"] == 6  # resumed at step 4, one epoch of 2 steps
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["clustercam"]["format"] == FORMAT and resumed["global_step"] == 6
    assert "net" not in resumed["hyper_parameters"] and resumed["clustercam"]["net_config"]["embed_dim"] == 16


# ------------------------------------------------------------------ one resolver for every command
def test_one_checkpoint_from_a_file_a_run_folder_or_a_glob(tmp_path, caplog):
    from clustercam_pl.checkpoint import find_one_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("step0000050.ckpt", "best-epoch001.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    last = run / "checkpoints" / "last.ckpt"
    assert find_one_checkpoint(str(last)) == last
    with caplog.at_level("INFO", logger="clustercam_pl.checkpoint"):
        assert find_one_checkpoint(str(run)) == last  # a run folder: its last.ckpt
    assert f"ckpt_path={run}: using {last}" in caplog.text
    assert find_one_checkpoint(str(run / "checkpoints" / "step*.ckpt")).name == "step0000050.ckpt"
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ValueError) as err:
        find_one_checkpoint(str(run))
    folder = run / "checkpoints"
    assert str(err.value) == (f"ckpt_path={run} gives 2 checkpoints ({folder / 'best-epoch001.ckpt'}, "
                              f"{folder / 'step0000050.ckpt'}): pass one file")


def test_export_and_training_take_a_run_folder_as_ckpt_path(tmp_path):
    """`export_labels ckpt_path=<run folder>` said "checkpoint not found" although eval took the folder."""
    from hydra import compose

    from clustercam_pl.entry import resolve_ckpt
    from clustercam_pl.export_labels import export_pseudo_labels
    from helpers import hydra_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(FORMAT1.read_bytes())
    data = [*FORMAT1_EXPECTED["data_overrides"], "device=cpu"]
    cfg = compose_config("export_labels", [*data, f"ckpt_path={run}", "split=val", "cam.par_iters=2",
                                           f"out_dir={tmp_path / 'pl'}", "limit=1"], tmp_path / "export")
    summary = export_pseudo_labels(cfg)
    assert summary["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and summary["computed"] == 1
    with hydra_config():
        train_cfg = compose("train", overrides=[f"ckpt_path={run}"])
    assert resolve_ckpt(train_cfg) == str(run / "checkpoints" / "last.ckpt")
