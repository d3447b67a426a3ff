"""The label-refinement steps: the shared merge, prompts from labels, and SAM / SAM 2 built through their
packages' real architectures with random weights (the official weights cannot be fetched in tests)."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from clustercam_pl.inference.steps import Sample, available, build_step, step_config
from clustercam_pl.inference.steps._merge import merge_masks, merge_partition
from clustercam_pl.inference.steps._segment_anything import apply_prompt_masks, label_prompts

V = 255


def test_partition_vote_takes_a_region_only_above_the_threshold():
    labels = np.array([[1, 1, 1, 0], [1, V, 2, 0]], np.uint8)
    segments = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])  # region 0: 1,1,1,1,void; region 1: 0,2,0
    out = merge_partition(labels, segments, threshold=0.5)
    assert out.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]  # the void pixel filled, the stray 2 voted out
    out = merge_partition(labels, segments, threshold=0.7)  # region 1: class 0 has 2/3, not above 0.7
    assert out.tolist() == [[1, 1, 1, 0], [1, 1, 2, 0]]


def test_mask_merge_smaller_masks_win_and_void_only_masks_change_nothing():
    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 3
    big = np.ones((4, 4), bool)  # mostly background: takes it
    small = np.zeros((4, 4), bool)
    small[1:4, 1:4] = True  # 4 of 9 labelled 3: below 0.5, keeps its labels
    core = np.zeros((4, 4), bool)
    core[1:3, 1:3] = True
    out = merge_masks(labels, np.stack([core, big, small]), threshold=0.5)
    assert out.tolist() == labels.tolist()  # big -> 0 everywhere, then core (smaller) -> 3 again
    void = np.full((4, 4), V, np.uint8)
    assert merge_masks(void, np.stack([big]), 0.5).tolist() == void.tolist()
    assert merge_masks(labels, np.zeros((0, 4, 4), bool), 0.5).tolist() == labels.tolist()
    with pytest.raises(ValueError, match=r"threshold=1.0 must be in \[0, 1\)"):
        merge_masks(labels, np.stack([big]), 1.0)


def test_prompts_are_boxes_and_interior_points_of_components():
    labels = np.zeros((8, 10), np.uint8)
    labels[1:4, 1:6] = 2  # 3 x 5 block
    labels[6:8, 8:10] = 1  # 2 x 2: below min_area 5
    labels[5, 0] = V
    prompts = label_prompts(labels, min_area=5)
    assert len(prompts) == 1 and prompts[0].cls == 2
    assert prompts[0].box.tolist() == [1, 1, 6, 4]  # x0, y0, x1, y1 (exclusive)
    assert prompts[0].point.tolist() == [2, 2]  # the first pixel deepest inside (distance 2)
    sam_mask = np.zeros((8, 10), bool)
    sam_mask[1:4, 1:4] = True
    out = apply_prompt_masks(labels, prompts, [sam_mask], outside="ignore")
    assert (out[1:4, 1:4] == 2).all() and (out[1:4, 4:6] == V).all() and (out[6:8, 8:10] == 1).all()
    assert (apply_prompt_masks(labels, prompts, [sam_mask], outside="background")[1:4, 4:6] == 0).all()


def test_without_background_label_0_is_a_class_that_is_prompted(tmp_path):
    labels = np.zeros((8, 10), np.uint8)  # class 0 everywhere but a 3 x 5 block of class 2
    labels[1:4, 1:6] = 2
    assert [p.cls for p in label_prompts(labels, min_area=5)] == [2]  # 0 is the background: not prompted
    prompts = label_prompts(labels, min_area=5, background=False)
    assert [p.cls for p in prompts] == [0, 2]  # largest first
    assert prompts[0].box.tolist() == [0, 0, 10, 8]
    # "background" as the fill of a component's pixels outside its mask has no meaning without a background
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"")
    step = build_step({"name": "sam", "checkpoint": str(ckpt), "outside": "background"})
    with pytest.raises(ValueError, match=r"^sam: outside=background, but the labels of image 'img' have no background "
                       r"class: pass outside=ignore or outside=keep$"):
        step(Sample(np.zeros((8, 10, 3), np.uint8), None, labels, key="img", background=False))


def test_a_missing_optional_package_names_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # as if scikit-image were not installed
    step = build_step({"name": "superpixel"})
    with pytest.raises(ImportError, match=r"^postprocess step superpixel needs scikit-image: pip install 'clustercam_pl\[refine\]'$"):
        step(Sample(np.zeros((8, 8, 3), np.uint8), None, np.zeros((8, 8), np.uint8), key="x"))


def test_steps_are_found_by_name_and_refuse_bad_settings(tmp_path):
    assert {"superpixel", "segments", "sam", "sam2"} <= set(available())
    step = build_step({"name": "superpixel", "n_segments": 50})
    assert build_step(step_config(step)) == step
    with pytest.raises(ValueError, match="segments needs root="):
        build_step({"name": "segments"})
    with pytest.raises(FileNotFoundError, match=r"sam: checkpoint=.*nope.pt is not a file"):
        build_step({"name": "sam", "checkpoint": str(tmp_path / "nope.pt")})
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"mode='boxes' must be one of \('everything', 'prompts'\)"):
        build_step({"name": "sam2", "checkpoint": str(ckpt), "mode": "boxes"})
    image = np.zeros((8, 8, 3), np.uint8)
    missing = build_step({"name": "segments", "root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"no segments for image 'x'.*missing=keep"):
        missing(Sample(image, None, np.zeros((8, 8), np.uint8), key="x"))


def _image_and_labels(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    labels = np.zeros((size, size), np.uint8)
    labels[8:30, 10:34] = 1
    labels[34:44, 4:20] = 2
    labels[30:34, 10:34] = V
    return image, labels


def _check_modes(step_name: str, checkpoint: Path, **fields) -> dict[str, float]:
    """Both modes on one image: shapes, label values, seconds per image (printed for the report)."""
    image, labels = _image_and_labels()
    seconds = {}
    for mode in ("prompts", "everything"):
        step = build_step({"name": step_name, "checkpoint": str(checkpoint), "mode": mode, "device": "cpu",
                           "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, **fields})
        if not seconds:
            step(Sample(image, None, labels, key="warm"))  # loads the model, once per process for both modes
        t0 = time.perf_counter()
        out = step(Sample(image, None, labels, key="img")).labels
        seconds[mode] = time.perf_counter() - t0
        assert out.shape == labels.shape and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1, 2, V}
    print(f"{step_name} seconds per 48 px image (random weights, this CPU): {seconds}")
    return seconds


def _small_sam(checkpoint: str | None = None):
    """The package's Sam with its real prompt encoder and mask decoder (SAM's sizes) and a ViT image
    encoder of the package at 128 px, depth 2: ViT-B at 1024 px takes ~30 s a forward on 2 CPU cores."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size, patch = 128, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=96, img_size=size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=patch,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
                                      out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    return sam.eval()


@pytest.mark.slow
def test_sam_step_with_the_package_architecture(tmp_path, monkeypatch):
    segment_anything = pytest.importorskip("segment_anything")
    ckpt = tmp_path / "sam_small.pth"
    torch.save(_small_sam().state_dict(), ckpt)
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_test", _small_sam)
    _check_modes("sam", ckpt, model_type="vit_test")
    image, labels = _image_and_labels()
    with pytest.raises(ValueError, match=r"model_type='vit_x' is not one of \['default', 'vit_b', 'vit_h'"):
        build_step({"name": "sam", "checkpoint": str(ckpt), "model_type": "vit_x", "device": "cpu"})(
            Sample(image, None, labels, key="img"))


def _small_sam2_config(tmp_path: Path) -> Path:
    """The package's SAM 2.1 Hiera-T config at a 128 px input (1024 px in the official file)."""
    from clustercam_pl.inference.steps.sam2 import config_path

    text = config_path("sam2.1_hiera_t").read_text()
    assert text.count("image_size: 1024") == 1
    path = tmp_path / "sam2.1_hiera_t_128.yaml"
    path.write_text(text.replace("image_size: 1024", "image_size: 128"))
    return path


@pytest.mark.slow
def test_sam2_step_with_the_package_architecture(tmp_path):
    pytest.importorskip("sam2")
    from clustercam_pl.inference.steps.sam2 import build_sam2

    config = _small_sam2_config(tmp_path)
    ckpt = tmp_path / "sam2_small.pt"
    torch.save({"model": build_sam2(str(config), None, "cpu").state_dict()}, ckpt)
    _check_modes("sam2", ckpt, config=str(config))
    with pytest.raises(ValueError, match=r"config='sam3' is neither a YAML file nor one of .*sam2.1_hiera_t"):
        build_sam2("sam3", None, "cpu")
