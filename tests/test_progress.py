"""CostMeter: the estimate of time and disk after the first images, logged once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from clustercam_pl.utils import progress
from clustercam_pl.utils.progress import CostMeter, human_bytes


def test_estimate_after_the_probe_scales_the_first_images(tmp_path, caplog, monkeypatch):
    # The meter's clock, not the machine's (a fast machine made the real estimate round to 0 s): started at
    # 0 s, the first image done at 1 s (start-up and warm-up), the second 0.5 s later.
    clock = iter([0.0, 1.0, 1.5, 2.0])
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    files = []
    for i in range(2):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(b"x" * 1000)
    meter = CostMeter(10, "eval", enabled=True, probe=2)
    with caplog.at_level(logging.INFO, logger="clustercam_pl.progress"):
        meter.update(1, (files[0],))
        assert meter.estimate()["estimate_s"] is None  # not yet: fewer than `probe` images
        meter.update(1, (files[1],))
        meter.update(1)
    meter.close()
    # 1 s for the first image, then the other 9 at the second's 0.5 s each
    assert meter.estimate() == {"estimate_s": 5.5, "estimate_bytes": 10_000, "bytes": 2000}
    assert [r.getMessage() for r in caplog.records] == [
        "eval: estimate from the first 2 images: 5.5 s for all 10 (1.33 images/s), 9.8 KiB on disk"]


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text
