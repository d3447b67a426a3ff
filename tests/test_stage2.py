"""Stage two: training on fixed label maps (data.label_dir) with the ClusterCAM network."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose
from omegaconf import open_dict
from PIL import Image
from scipy import ndimage

from clustercam_pl import checkpoint as ckpt_io
from clustercam_pl.checkpoint import load_checkpoint
from clustercam_pl.data.datamodule import WSSSDataModule
from clustercam_pl.data.fixed_labels import LabelDirError
from clustercam_pl.data.imageio import write_index_png
from clustercam_pl.data.synthetic import SyntheticConfig, class_names, make_sample
from clustercam_pl.eval import evaluate
from clustercam_pl.export_labels import export_pseudo_labels
from clustercam_pl.models.smp_net import SmpConfig, SmpSegNet
from clustercam_pl.predict import run_predict
from clustercam_pl.train import train
from helpers import (
    TINY_NET_OVERRIDES,
    compose_config,
    compose_eval,
    compose_train,
    hydra_config,
    one_training_step,
    save_framework_checkpoint,
)

SYN = {"num_classes": 4, "image_size": 64, "num_train": 8, "num_val": 4, "num_test": 2}


def write_labels(folder: Path, n: int, syn: dict, seed: int = 0, swap: float = 0.0) -> Path:
    """The synthetic train masks of data seed ``seed`` as label PNGs; ``swap``: that share of the objects
    (connected regions of one class) labelled as another class, drawn from ``seed`` too."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = SyntheticConfig.from_dict(syn)
    K = syn["num_classes"]
    rng = np.random.default_rng(seed)
    for i in range(n):
        _, mask = make_sample(cfg, seed, "train", i)  # (S, S) uint8
        mask = mask.copy()
        objects = []  # (S, S) bool each: the connected regions of one class, listed before any is changed
        for c in np.unique(mask[mask > 0]):
            regions, count = ndimage.label(mask == c)  # (S, S): 0, then 1..count
            objects += [regions == r for r in range(1, count + 1)]
        for region in objects:
            if swap and rng.random() < swap:
                mask[region] = (int(mask[region][0]) - 1 + rng.integers(1, K)) % K + 1  # another of 1..K
        write_index_png(folder / f"synthetic_train_{i:06d}.png", mask)
    return folder


def datamodule(label_dir: Path) -> WSSSDataModule:
    return WSSSDataModule("synthetic", global_batch_size=2, train_transform="none", synthetic=SYN,
                          label_dir=str(label_dir))


def test_label_dir_items_carry_the_labels(tmp_path):
    dm = datamodule(write_labels(tmp_path / "labels", SYN["num_train"], SYN))
    dm.setup("fit")
    item = dm.train_dataset[3]
    _, mask = make_sample(SyntheticConfig.from_dict(SYN), 0, "train", 3)
    assert item["image_id"] == "synthetic_train_000003"
    assert item["image"].shape == (3, 64, 64) and (item["mask"].numpy() == mask).all()


def test_label_dir_not_matching_the_split_is_refused_naming_the_files(tmp_path):
    labels = write_labels(tmp_path / "labels", SYN["num_train"], SYN)
    (labels / "synthetic_train_000001.png").unlink()
    write_index_png(labels / "synthetic_train_000002.png", np.zeros((32, 64), np.uint8))
    write_index_png(labels / "synthetic_train_000005.png", np.full((64, 64), 9, np.uint8))
    with pytest.raises(LabelDirError) as err:
        datamodule(labels).setup("fit")
    msg = str(err.value)
    assert "3 of 8 image(s)" in msg
    assert f"{labels / 'synthetic_train_000001.png'}" in msg and "missing label" in msg
    assert "synthetic_train_000002.png" in msg and "label is (32, 64), its image is (64, 64)" in msg
    assert "synthetic_train_000005.png" in msg and "values [9] outside 0..4 and 255" in msg
    assert "python -m clustercam_pl.export_labels" in msg
    with pytest.raises(LabelDirError, match="is not a folder"):
        datamodule(tmp_path / "nowhere").setup("fit")


# The smp network at test size: DeepLabV3+ with timm's tiny test ResNet (random) and a narrow decoder.
SMP = "model.smp={arch: DeepLabV3Plus, encoder_name: tu-test_resnet, encoder_weights: null, extra: {decoder_channels: 16}}"

STAGE2 = ["+experiment=synthetic_stage2", "logger=none", *TINY_NET_OVERRIDES, "data.synthetic.image_size=64",
          "data.synthetic.num_val=8", "data.val_batch_size=4", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false"]


@pytest.mark.slow  # two trainings of 24 steps: 5-13 s on the 2 cores when idle, up to 170 s when shared
def test_true_labels_train_a_better_network_than_noisy_ones(tmp_path):
    """The tiny smp network, trained on the true masks and on the same masks with 80 % of the objects given
    another class, scores clearly higher with the true ones: the labels of data.label_dir are what it learns."""
    n, seed = 16, 0
    with hydra_config():
        data_cfg = compose("train", overrides=["+experiment=synthetic_stage2"]).data.synthetic
    gen = {**dict(data_cfg), "num_train": n}
    common = [*STAGE2, SMP, "callbacks=none", f"seed={seed}", f"data.synthetic.num_train={n}",
              "data.synthetic.num_val=16", "data.global_batch_size=8", "data.val_batch_size=8",
              "trainer.max_epochs=12", "trainer.check_val_every_n_epoch=12", "trainer.num_sanity_val_steps=0",
              "optim.lr=1e-2", "optim.warmup_epochs=0"]  # validation once, at the end
    scores = {}
    for name, swap in (("true", 0.0), ("noisy", 0.8)):
        labels = write_labels(tmp_path / name, n, gen, seed=seed, swap=swap)
        summary = train(compose_train([*common, f"data.label_dir={labels}"], output_dir=tmp_path / f"run_{name}"))
        assert summary["global_step"] == 24
        scores[name] = summary["val/seg_miou"]
    # Measured with this code on this CPU, val mIoU true / noisy (margin) by seed: 0: 0.453 / 0.181 (0.27),
    # 1: 0.690 / 0.189 (0.50), 2: 0.567 / 0.173 (0.39), 3: 0.581 / 0.184 (0.40), 4: 0.459 / 0.283 (0.18).
    # At 16 steps seed 4 cleared only 0.08; the tiny ClusterCAM network does not separate in such a
    # budget (32 steps: 0.21 / 0.17).
    assert scores["true"] > scores["noisy"] + 0.10, scores


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """The tiny stage-one run's pseudo labels of its train split (export_labels)."""
    out = tmp_path_factory.mktemp("export")
    export_pseudo_labels(compose_config("export_labels", [
        "data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_train=16", "cam.par_iters=2",
        "device=cpu", f"ckpt_path={tiny_run.last}", f"out_dir={out / 'labels_train'}", "split=train"], out / "export_run"))
    return out / "labels_train" / "labels"


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
@pytest.mark.parametrize("network", ["clustercam", "smp"])
def test_stage_two_from_exported_stage_one_labels_trains_evaluates_predicts(network, tiny_run, exported, tmp_path):
    run = tmp_path / "stage2"
    init = [SMP] if network == "smp" else [f"model.init_from={tiny_run.last}"]
    summary = train(compose_train([*STAGE2, "data.synthetic.num_train=16", "data.global_batch_size=4",
                                   "trainer.max_epochs=1", f"data.label_dir={exported}", *init], output_dir=run))
    assert summary["global_step"] == 4 and 0.0 <= summary["val/seg_miou"] <= 1.0
    ckpt = run / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(ckpt)
    assert type(loaded.net).__name__ == ("SmpSegNet" if network == "smp" else "ClusterCAMNet")
    assert loaded.hparams["stage"] == 2 and loaded.class_names == list(class_names(4))
    result = evaluate(compose_eval(["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_val=8",
                                    "eval=ss", "device=cpu", f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert result["miou"] == pytest.approx(summary["val/seg_miou"], abs=1e-6)  # eval = in-training validation
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = make_sample(SyntheticConfig.from_dict(SYN), 0, "test", 0)[0]  # (64, 64, 3)
    Image.fromarray(np.ascontiguousarray(image[:50, :61])).save(inputs / "a.png")  # a side smp must pad
    with hydra_config():
        pcfg = compose("predict", overrides=["device=cpu", "progress=false", f"ckpt_path={ckpt}", f"input={inputs}",
                                             f"out_dir={tmp_path / 'pred'}", "eval=ss"])
    out = run_predict(pcfg)
    assert out["predicted"] == 1 and out["class_names"] == list(class_names(4))
    if network == "smp":
        with hydra_config():
            pcfg = compose("predict", overrides=["device=cpu", "progress=false", f"ckpt_path={ckpt}",
                                                 f"input={inputs}", f"out_dir={tmp_path / 'cams'}", "cams=true"])
        with pytest.raises(ValueError, match="holds a stage-two SmpSegNet, which makes no CAMs; drop cams=true"):
            run_predict(pcfg)
    else:  # the stage-two ClusterCAM network keeps stage one's CAM head: its labels export, and the audit reads them
        from clustercam_pl.audit import run_audit

        data = ["data=synthetic", "data.synthetic.image_size=64", "data.synthetic.num_val=8"]
        with hydra_config():
            xcfg = compose("export_labels", overrides=[*data, "cam.par_iters=2", "device=cpu", f"ckpt_path={ckpt}",
                                                       f"out_dir={tmp_path / 'export'}", "split=val"])
            acfg = compose("audit", overrides=[*data, f"labels={tmp_path / 'export'}", f"out_dir={tmp_path / 'audit'}",
                                               "n_examples=1"])
        with open_dict(xcfg):
            xcfg.paths.output_dir = str(tmp_path / "export_run")
        export_pseudo_labels(xcfg)
        report = run_audit(acfg)  # split: val, from the export's meta.json
        assert report["num_images"] == 8 and 0.0 <= report["sets"][0]["excluded"]["mean"]["iou"] <= 1.0
        assert (tmp_path / "audit" / "cam_curve.png").is_file()  # the exported CAMs were read too


def test_smp_checkpoint_round_trip_and_refusals(tmp_path):
    net = SmpSegNet(SmpConfig(4, encoder_name="tu-test_resnet", extra={"decoder_channels": 16})).eval()
    ckpt = save_framework_checkpoint(net, tmp_path / "smp.ckpt", class_names=class_names(4))
    loaded = load_checkpoint(ckpt)
    x = torch.randn(1, 3, 40, 56)  # (1, 3, H, W): not a multiple of the stride
    with torch.no_grad():
        out = loaded.net(x)
        assert out.seg_logits.shape == (1, 5, 40, 56) and torch.equal(out.seg_logits, net(x).seg_logits)
        probs = out.seg_logits.softmax(1)[:, 1:].amax(dim=(2, 3))  # (1, K)
        assert torch.allclose(out.cls_logits.sigmoid(), probs, atol=1e-5)
    with pytest.raises(ValueError, match="makes no CAMs: export pseudo labels from a ClusterCAM checkpoint"):
        export_pseudo_labels(compose_config("export_labels", [
            "data=synthetic", "data.synthetic.image_size=64", "device=cpu", f"ckpt_path={ckpt}",
            f"out_dir={tmp_path / 'x'}"], tmp_path / "run"))
    other = torch.load(ckpt, weights_only=True)
    other["clustercam"]["network"] = "mask2former"
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"clustercam.network='mask2former' is not a network this clustercam_pl"):
        load_checkpoint(tmp_path / "other.ckpt")


# ------------------------------------------------------------------ smp encoder weights from a local file
def tiny_smp(seed: int, num_classes: int = 4) -> SmpSegNet:
    """The smp network at test size (as SMP), its random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return SmpSegNet(SmpConfig(num_classes, encoder_name="tu-test_resnet", extra={"decoder_channels": 16}))


def test_smp_encoder_weights_from_local_files_fill_the_encoder_only(tmp_path):
    """The layouts a user has on disk: the encoder's state dict (.pth), a timm classifier's with its head
    (.safetensors, as timm's hub ships them), a whole SmpSegNet's; none of them reaches the decoder."""
    import timm
    from safetensors.torch import save_file

    source = tiny_smp(1)
    classifier = timm.create_model("test_resnet")  # random init, with the fc head the encoder lacks
    torch.save(source.model.encoder.state_dict(), tmp_path / "encoder.pth")
    save_file(classifier.state_dict(), tmp_path / "timm.safetensors")
    torch.save({"model": tiny_smp(2).state_dict()}, tmp_path / "whole.pt")
    expected = {"encoder.pth": {"model." + k: v for k, v in source.model.encoder.model.state_dict().items()},
                "timm.safetensors": {"model." + k: v for k, v in classifier.state_dict().items()},
                "whole.pt": tiny_smp(2).model.encoder.state_dict()}
    for name, want in expected.items():
        net = tiny_smp(0)
        decoder = {k: v.clone() for k, v in net.model.decoder.state_dict().items()}
        ckpt_io.load_smp_encoder_weights(net, tmp_path / name)
        got = net.model.encoder.state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items() if k in got), name
        assert not torch.equal(got["model.conv1.0.weight"], tiny_smp(0).model.encoder.state_dict()["model.conv1.0.weight"])
        assert all(torch.equal(net.model.decoder.state_dict()[k], v) for k, v in decoder.items()), name


def test_smp_encoder_weights_that_do_not_fit_or_are_damaged_are_refused_naming_the_file(tmp_path):
    import timm

    other = tmp_path / "efficientnet.pth"  # a real file of another architecture
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    n_own = len(tiny_smp(0).model.encoder.state_dict())
    with pytest.raises(ValueError) as err:
        ckpt_io.load_smp_encoder_weights(tiny_smp(0), other)
    msg = str(err.value)
    assert f"encoder weights {other} do not fit the tu-test_resnet encoder ({n_own} tensors)" in msg
    assert re.search(r"\d+ missing from the file \(e\.g\. \['model\.conv1", msg), msg
    assert re.search(r"\d+ in the file but not in the encoder \(e\.g\. \['model\.", msg), msg
    assert "encoder_name='tu-test_resnet', encoder_weights='imagenet').encoder.state_dict(), 'encoder.pth')" in msg

    sd = tiny_smp(1).model.encoder.state_dict()
    sd["model.conv1.0.weight"] = sd["model.conv1.0.weight"][:, :2]  # (C, 2, k, k): another shape
    del sd["model.layer1.0.conv1.weight"]
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(ValueError, match=r"1 missing from the file \(e\.g\. \['model\.layer1\.0\.conv1\.weight'\]\); "
                                         r"1 of another shape \(e\.g\. \['model\.conv1\.0\.weight: file \(\d+, 2,"):
        ckpt_io.load_smp_encoder_weights(tiny_smp(0), tmp_path / "edited.pth")

    torch.save(tiny_smp(1).model.encoder.state_dict(), tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:5000])
    from safetensors.torch import save_file

    save_file(tiny_smp(1).model.encoder.state_dict(), tmp_path / "cut.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:5000])
    for name, pattern in (("cut.pth", "truncated"), ("cut.safetensors", "damaged or not a safetensors file")):
        with pytest.raises(ValueError, match=f"cannot read .*{name}: .*{pattern}") as err:
            ckpt_io.load_smp_encoder_weights(tiny_smp(0), tmp_path / name)
        assert "weights_only=False" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found: .*nowhere.pth"):
        ckpt_io.load_smp_encoder_weights(tiny_smp(0), tmp_path / "nowhere.pth")


def test_smp_encoder_weights_file_in_the_config_initialises_training(tmp_path):
    """model.smp.encoder_weights=<file>: smp is not asked for it (no hub), the first training step starts
    from the file's encoder, and the checkpoint's network rebuilds without it."""
    source = tiny_smp(1)
    weights = tmp_path / "encoder.pth"
    torch.save(source.model.encoder.state_dict(), weights)
    smp = SMP.replace("encoder_weights: null", f"encoder_weights: '{weights}'")
    labels = write_labels(tmp_path / "labels", 2, {**SYN, "num_train": 2})
    module, loss = one_training_step(compose_train([*STAGE2, f"data.label_dir={labels}", "data.global_batch_size=2",
                                                    "data.synthetic.num_train=2", smp], output_dir=tmp_path / "run"))
    assert module.net.cfg.encoder_file == str(weights) and module.net.cfg.hub_weights is None
    assert torch.isfinite(loss)
    start = source.model.encoder.state_dict()["model.layer1.0.conv1.weight"]
    assert torch.equal(module.net.model.encoder.state_dict()["model.layer1.0.conv1.weight"], start)
    assert SmpConfig(4, encoder_weights="imagenet").hub_weights == "imagenet"


@pytest.mark.slow  # end to end: predict, then two audits
def test_audit_judges_stage_two_predictions_and_its_label_folder(tmp_path):
    """`clustercam_pl.audit` on what stage two makes and reads: a stage-two network's predictions of a split
    (predict over the split's images saved by id) and a label folder as data.label_dir takes it."""
    from hydra.utils import instantiate

    from clustercam_pl.audit import run_audit
    from clustercam_pl.tasks.audit import void_confmat
    from label_fixtures import truth

    data = ["data=synthetic", "data.synthetic.num_classes=3", "data.synthetic.image_size=48",
            "data.synthetic.num_train=3", "data.synthetic.num_val=3"]
    with hydra_config():
        pred_cfg = compose("audit", overrides=[*data, f"labels={tmp_path / 'pred'}", "split=val",
                                               f"out_dir={tmp_path / 'audit_pred'}", "n_examples=1"])
        label_cfg = compose("audit", overrides=[*data, f"labels={tmp_path / 'labels'}", "split=train", "n_examples=1"])
    dm = instantiate(pred_cfg.data, _convert_="all")
    val, train_split = truth(dm, "val"), truth(dm, "train")
    (tmp_path / "in").mkdir()
    for image_id, (image, _) in val.items():
        Image.fromarray(image).save(tmp_path / "in" / f"{image_id}.png")
    net = tiny_smp(0, num_classes=3).eval()
    ckpt = save_framework_checkpoint(net, tmp_path / "stage2.ckpt", class_names=class_names(3))
    with hydra_config():
        pcfg = compose("predict", overrides=["device=cpu", "progress=false", f"ckpt_path={ckpt}", "eval=ss",
                                             f"input={tmp_path / 'in'}", f"out_dir={tmp_path / 'pred'}"])
    assert run_predict(pcfg)["predicted"] == 3
    report = run_audit(pred_cfg)
    cm = sum(void_confmat(np.asarray(Image.open(tmp_path / "pred" / f"{i}.png")), m, 4) for i, (_, m) in val.items())
    iou = [cm[c, c] / (cm[c, :4].sum() + cm[:, c].sum() - cm[c, c]) for c in range(4) if cm[c].sum() + cm[:, c].sum()]
    assert report["num_images"] == 3 and report["sets"][0]["excluded"]["mean"]["iou"] == pytest.approx(np.mean(iou))

    labels = tmp_path / "labels"  # the train masks as stage two's labels, one image's object made void
    for image_id, (_, mask) in train_split.items():
        write_index_png(labels / f"{image_id}.png", mask)
    image_id, (_, mask) = next(iter(train_split.items()))
    write_index_png(labels / f"{image_id}.png", np.where(mask > 0, 255, mask).astype(np.uint8))
    report = run_audit(label_cfg)  # out_dir: <labels>/audit, inside the label folder
    assert report["num_images"] == 3 and report["sets"][0]["excluded"]["mean"]["iou"] == pytest.approx(1.0)
    assert report["sets"][0]["excluded"]["mean"]["coverage"] < 1.0
    assert (labels / "audit" / "examples.png").is_file()
    with open_dict(label_cfg):
        label_cfg.overwrite = True
    assert run_audit(label_cfg)["num_images"] == 3  # a rerun does not take its own figures for labels


def test_smp_hub_weights_offline_say_how_to_pass_a_file(tmp_path, monkeypatch):
    """A hub name without network (huggingface_hub's offline mode, an empty cache) fails at once, saying
    how to make and pass a local file instead."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(RuntimeError, match=r"could not get the resnet18 encoder's 'imagenet' weights from the hub "
                                           r"\(LocalEntryNotFoundError\).*model\.smp\.encoder_weights=/path/to/encoder\.pth"):
        SmpSegNet(SmpConfig(4, encoder_name="resnet18", encoder_weights="imagenet"))


@pytest.mark.slow  # goes over the stage-two search config: six compositions each
@pytest.mark.parametrize("experiment", ["synthetic_stage2", "voc_stage2"])
def test_stage_two_sweeps_compose(experiment, tmp_path):
    """The optuna search for stage two composes over a stage-two experiment, searches only keys a stage-two
    run reads (no CAM / clustering knobs), and a trial's overrides compose; a basic multirun of a stage-two
    experiment composes with the sweep's values."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # how `-m a=1,2 b=3,4` is split
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from clustercam_pl.entry import check_config

    base = [f"+experiment={experiment}", "data.label_dir=labels", "model.init_from=null"]
    with hydra_config():
        cfg = compose("train", overrides=["hparams_search=optuna_stage2", *base], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert cfg.optimized_metric == "val/seg_miou" and sweeper.study_name == "clustercam_stage2"
    assert set(sweeper.params) == {"optim.lr", "optim.weight_decay", "optim.warmup_epochs"}
    assert not any(k.startswith(("net.", "cam.")) for k in sweeper.params)
    trial = []  # one trial's overrides: the first value of each searched range
    for parsed in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()]):
        first = next(iter(parsed.sweep_iterator())) if parsed.is_discrete_sweep() else parsed.value().start
        trial.append(f"{parsed.key_or_group}={first}")
    job = compose_train([*base, *trial], output_dir=tmp_path)
    check_config(job)
    assert job.optim.lr == pytest.approx(1e-5) and job.model._target_.endswith("StageTwoLitModule")

    swept = OverridesParser.create().parse_overrides([*base, "optim.lr=3e-4,1e-3", "optim.weight_decay=0,0.05"])
    jobs = BasicSweeper.split_arguments(swept, None)[0]
    composed = [compose_train(job, output_dir=tmp_path / str(i)) for i, job in enumerate(jobs)]
    assert sorted((c.optim.lr, c.optim.weight_decay) for c in composed) == [(3e-4, 0), (3e-4, 0.05), (1e-3, 0),
                                                                             (1e-3, 0.05)]
    assert {c.task_name for c in composed} == {experiment}
