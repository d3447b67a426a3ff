"""Dense CRF post-processing of segmentation probabilities (VOC evaluation).

The reference's ``seg/tool/imutils.crf_inference_inf`` (DCVL-WSSS/ClusterCAM): a fully connected
CRF (pydensecrf) with unaries ``-log p`` (clipped at 1e-5), a Gaussian smoothness kernel and a
bilateral appearance kernel, run for a fixed number of mean-field iterations.

The CRF is CPU work of about a second per VOC image; `CRFPool` runs it in worker processes while
the caller keeps running the network, so it does not serialise a GPU run. torch is imported inside
the functions that need it, so a worker process starts with numpy and pydensecrf only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

K = TypeVar("K")

CRF_MISSING = (
    "this protocol uses the dense CRF, which needs the optional dependency pydensecrf2: "
    "pip install 'clustercam_pl[crf]' (or pick a protocol without CRF: eval=ss, ms or ms_flip)"
)


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are the reference's (``seg/tool/imutils.crf_inference_inf``)."""

    n_iter: int = 10
    gauss_sxy: float = 4
    gauss_compat: float = 3
    bilat_sxy: float = 83
    bilat_srgb: float = 5
    bilat_compat: float = 3

    def __post_init__(self) -> None:
        if self.n_iter < 0:
            raise ValueError(f"eval.crf.n_iter must be >= 0, got {self.n_iter}")
        for key in ("gauss_sxy", "bilat_sxy", "bilat_srgb"):
            if getattr(self, key) <= 0:
                raise ValueError(f"eval.crf.{key} must be > 0, got {getattr(self, key)}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def require_crf() -> None:
    """Fail at once (before any checkpoint is read) when pydensecrf is missing, naming the extra."""
    try:
        import pydensecrf.densecrf  # noqa: F401
        import pydensecrf.utils  # noqa: F401
    except ImportError as e:
        raise ImportError(CRF_MISSING) from e


def dense_crf(image_uint8: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, H, W) on the RGB image ``image_uint8`` (H, W, 3).

    Returns the CRF marginals (C, H, W) as float32; take ``argmax(0)`` for the label map.
    pydensecrf is imported here so the package works without it.
    """
    p = params or CRFParams()
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError(CRF_MISSING) from err

    if image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
        raise ValueError(f"image_uint8 must be (H, W, 3), got shape {image_uint8.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image_uint8.shape[:2]:
        raise ValueError(
            f"probs must be (C, H, W) matching the image's (H, W) = {image_uint8.shape[:2]}, "
            f"got {probs.shape}"
        )
    n_labels, h, w = probs.shape
    # pydensecrf wants C-contiguous uint8 RGB and float32 unaries; it keeps a pointer to the image.
    image = np.ascontiguousarray(image_uint8, dtype=np.uint8)
    unary = np.ascontiguousarray(unary_from_softmax(np.asarray(probs, dtype=np.float32)))  # (C, H * W)

    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=p.gauss_sxy, compat=p.gauss_compat)
    crf.addPairwiseBilateral(sxy=p.bilat_sxy, srgb=p.bilat_srgb, rgbim=image, compat=p.bilat_compat)
    marginals = crf.inference(p.n_iter)
    return np.asarray(marginals, dtype=np.float32).reshape(n_labels, h, w)


def to_uint8_image(
    image: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3) RGB, rounded and clamped (never wrapped).
    `mean` / `std`: the normalisation (None: ImageNet's, `data.transforms`).

    Rounding (not truncation) gives back the exact pixels of the decoded file: normalising and
    de-normalising in float32 leaves errors of ~1e-5 levels either way. Clamping keeps an
    out-of-range value at 0 or 255, where the reference's uint8 cast would wrap it around.
    """
    import torch

    from clustercam_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    m = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    levels = ((image.float() * s + m) * 255).round().clamp(0, 255)  # (3, H, W)
    return np.ascontiguousarray(levels.to(torch.uint8).permute(1, 2, 0).cpu().numpy())  # (H, W, 3)


def crf_refine(
    image: Tensor, probs: Tensor, image_size: Tensor | None = None, params: CRFParams | None = None
) -> Tensor:
    """CRF marginals (B, C, H, W) of ``probs`` (B, C, H, W) on the images (B, 3, H, W), per image.

    Each image is cropped to its ``image_size`` (padding is not part of the image); the padding of
    the result is 0. Runs on the CPU (pydensecrf); the result comes back on ``probs.device``.
    """
    import torch

    B, C, H, W = probs.shape
    out = torch.zeros_like(probs, dtype=torch.float32)  # (B, C, H, W)
    for i in range(B):
        h, w = (int(image_size[i, 0]), int(image_size[i, 1])) if image_size is not None else (H, W)
        rgb = to_uint8_image(image[i, :, :h, :w])  # (h, w, 3)
        p = probs[i, :, :h, :w].float().cpu().numpy()  # (C, h, w)
        out[i, :, :h, :w] = torch.from_numpy(dense_crf(rgb, p, params)).to(probs.device)
    return out


# ------------------------------------------------------------------------------------ worker pool
def crf_labels(image_uint8: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Label map (H, W) int64: the argmax of `dense_crf`'s marginals (what a worker sends back)."""
    return dense_crf(image_uint8, probs, params).argmax(0)


def _crf_labels_many(images: list[np.ndarray], probs: list[np.ndarray], params: CRFParams | None) -> list[np.ndarray]:
    """`crf_labels` of several images: one worker round trip for a chunk of small images."""
    return [crf_labels(i, p, params) for i, p in zip(images, probs, strict=True)]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_crf_workers(processes_per_machine: int = 1) -> int:
    """The available cores shared among the processes of one machine (at least one worker each)."""
    return max(1, available_cores() // max(int(processes_per_machine), 1))


class CRFPool:
    """Dense CRF in `workers` worker processes (0: in the calling process), results in submission order.

    `imap(jobs)` pulls (key, image (H, W, 3) uint8, probs (C, H, W)) items lazily from an iterator, so
    the network's forward pass for the next batch runs while workers refine the previous ones; at
    most `max_pending` jobs are in flight (bounded memory). Workers start on first use or `start()`.
    Both paths compute `crf_labels`, so the labels do not depend on `workers`.
    """

    def __init__(self, params: CRFParams | None, workers: int, max_pending: int | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(
                f"crf_workers={workers!r} must be a whole number >= 0 (0: CRF in the main process; "
                "crf_workers=null: one per available core)"
            )
        self.params = params
        self.workers = workers
        self.max_pending = max_pending if max_pending is not None else max(2 * workers, 1)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork on Linux: a worker starts at once (spawn and forkserver re-import the command's
            # main module, e.g. clustercam_pl.eval with torch and Hydra, ~5 s per worker). Workers
            # run numpy and pydensecrf only, never torch, CUDA or OpenMP, so the threads and CUDA
            # state of the forked process are never touched (as in DataLoader workers).
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._executor

    def start(self) -> CRFPool:
        """Start the workers now (e.g. while checkpoints load) instead of at the first job."""
        if self.workers:
            pool = self._pool()
            for _ in range(self.workers):
                pool.submit(os.getpid)
        return self

    def submit(self, image_uint8: np.ndarray, probs: np.ndarray) -> Future[np.ndarray]:
        """The label map (H, W) of one image, as a future (already done when `workers` is 0)."""
        if self.workers == 0:
            done: Future[np.ndarray] = Future()
            try:
                done.set_result(crf_labels(image_uint8, probs, self.params))
            except Exception as e:  # raised by result(), as a worker's would be
                done.set_exception(e)
            return done
        return self._pool().submit(crf_labels, image_uint8, probs, self.params)

    def imap(
        self, jobs: Iterable[tuple[K, np.ndarray, np.ndarray]], chunk: int = 1
    ) -> Iterator[tuple[K, np.ndarray]]:
        """(key, label map (H, W)) for every (key, image, probs) of `jobs`, in the order of `jobs`.

        `chunk` consecutive jobs travel to a worker together (fewer round trips for small images).
        `max_pending` counts images: (2 x workers + 1) x chunk keeps every worker busy while the
        caller prepares the next chunk (what evaluation passes).
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be >= 1")
        pending: deque[tuple[list[K], Future[list[np.ndarray]]]] = deque()
        in_flight = 0

        def submit(keys: list[K], images: list[np.ndarray], probs: list[np.ndarray]) -> None:
            nonlocal in_flight
            if self.workers == 0:
                fut: Future[list[np.ndarray]] = Future()
                fut.set_result(_crf_labels_many(images, probs, self.params))
            else:
                fut = self._pool().submit(_crf_labels_many, images, probs, self.params)
            pending.append((keys, fut))
            in_flight += len(keys)

        def ready() -> Iterator[tuple[K, np.ndarray]]:
            nonlocal in_flight
            while pending and (in_flight >= self.max_pending or pending[0][1].done()):
                keys, fut = pending.popleft()
                in_flight -= len(keys)
                yield from zip(keys, fut.result(), strict=True)

        keys: list[K] = []
        images: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for key, image, p in jobs:
            keys.append(key)
            images.append(image)
            probs.append(p)
            if len(keys) == chunk:
                submit(keys, images, probs)
                keys, images, probs = [], [], []
                yield from ready()
        if keys:
            submit(keys, images, probs)
        while pending:
            keys, fut = pending.popleft()
            yield from zip(keys, fut.result(), strict=True)
