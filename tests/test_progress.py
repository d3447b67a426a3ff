"""CostMeter: the estimate of time and disk after the first images, logged once."""

from __future__ import annotations

import logging

import pytest

from clustercam_pl.utils.progress import CostMeter, human_bytes


def test_estimate_after_the_probe_scales_the_first_images(tmp_path, caplog):
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
    est = meter.estimate()
    assert est["estimate_bytes"] == 10_000 and est["bytes"] == 2000 and est["estimate_s"] > 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("eval: estimate from the first 2 images: ")
    assert lines[0].endswith("for all 10 (" + lines[0].split("(")[1].split(")")[0] + "), 9.8 KiB on disk")


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text
