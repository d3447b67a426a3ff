"""Checkpoints are written atomically: a kill in the middle of a save leaves the previous one readable."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import torch

from clustercam_pl.callbacks import AtomicCheckpointIO

WRITER = textwrap.dedent("""
    import sys, torch
    from clustercam_pl.callbacks import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    big = torch.zeros(60_000_000)  # 240 MB: each save takes long enough to be killed mid-way
    for version in range(1000):
        big[0] = version
        io.save_checkpoint({"version": version, "weights": big}, path)
        print(version, flush=True)
""")


def test_kill_during_save_leaves_previous_checkpoint_readable(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"  # first checkpoint complete
        deadline = time.time() + 60
        while not list(tmp_path.glob(".last.ckpt.tmp-*")):  # the next save is under way
            assert time.time() < deadline, "no save in progress seen"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    assert ckpt["weights"][0] == ckpt["version"] >= 0
    assert ckpt["weights"].numel() == 60_000_000


def test_save_replaces_and_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    for v in range(2):
        io.save_checkpoint({"v": torch.tensor(v)}, tmp_path / "c.ckpt")
    assert int(io.load_checkpoint(tmp_path / "c.ckpt")["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]
