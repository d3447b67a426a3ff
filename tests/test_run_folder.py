"""Run-folder ownership at training start: the lock (live owner refused, a killed owner's taken over),
leftover checkpoint temporaries of dead writers, unwritable folders; then the same through `train`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from clustercam_pl.train import train
from clustercam_pl.utils.files import FolderLock, partial_path, remove_partials
from clustercam_pl.utils.run_folder import (
    LOCK_NAME,
    RunFolderError,
    RunFolderLock,
    check_writable,
    claim_run_folder,
)
from helpers import TINY_OVERRIDES, Command, compose_train, fork_process, start_command
from test_train import ENV, REPO

HOLDER = """
import sys, time
from clustercam_pl.utils.run_folder import RunFolderLock
RunFolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def start_cli(args: list[str]) -> Command:
    """`python -m clustercam_pl.train *args` in the background, to interrupt with a signal."""
    return start_command("clustercam_pl.train", args, REPO, ENV)


def _wait_for(path: Path, proc: Command, timeout: float) -> None:
    t = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.output()}")
        if time.time() - t > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.2)


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that owns `folder` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def dead_pid() -> int:
    """A pid no process has: above the kernel's pid_max where it says so (an ended process's pid may be
    reused at once: pid_max is 32768 here, and threads take pids too), else the pid of an ended process."""
    limit = Path("/proc/sys/kernel/pid_max")
    if limit.is_file():
        return int(limit.read_text()) + 1
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def busy_message(folder: Path, owner: dict) -> str:
    return (
        f"run folder {folder} is in use by another training (pid {owner['pid']} on host {owner['host']}, "
        f"started {owner['started']}); wait for it to end or stop it, or train into another folder with "
        "hydra.run.dir=NEW_FOLDER."
    )


def test_a_live_owner_is_refused_by_name(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunFolderError) as e:
            RunFolderLock(tmp_path).acquire()
        assert str(e.value) == busy_message(tmp_path, owner)
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == owner  # the owner's record untouched
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_owner_is_taken_over_and_released(tmp_path, caplog):
    proc = hold_lock(tmp_path)
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # a SIGKILL leaves the file
    with caplog.at_level(logging.WARNING, logger="clustercam_pl.utils.run_folder"), RunFolderLock(tmp_path) as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=rf"\(pid {os.getpid()} on host "):
            RunFolderLock(tmp_path).acquire()  # even this process cannot own it twice
    assert caplog.messages == [
        f"run folder {tmp_path}: took over the lock of pid {proc.pid} on {owner['host']} "
        f"(started {owner['started']}), which no longer runs"
    ]
    assert not (tmp_path / LOCK_NAME).exists()
    with RunFolderLock(tmp_path):  # free again
        pass


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    """File systems without flock (some network mounts): a live pid of this host, or any other host, refuses."""
    import clustercam_pl.utils.files as rf

    monkeypatch.setattr(rf, "_try_flock", lambda fd: "unsupported")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for owner in ({"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"},
                      {"pid": dead_pid(), "host": "elsewhere", "started": "then"}):
            (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
            with pytest.raises(RunFolderError) as e:
                RunFolderLock(tmp_path).acquire()
            assert str(e.value) == (
                busy_message(tmp_path, owner) + f" If that process is gone, remove the lock with: rm {tmp_path / LOCK_NAME}"
            )
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
    with RunFolderLock(tmp_path):  # its process has ended: taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_temporaries_of_dead_writers_are_removed_others_kept(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    dead = partial_path(ckpts / "last.ckpt", dead_pid())
    live = partial_path(ckpts / "best.ckpt")  # this process: a writer that still runs
    for p in (dead, live, ckpts / "last.ckpt", ckpts / ".notes.tmp-x"):
        p.write_bytes(b"x")
    assert dead.name.startswith(".last.ckpt.") and dead.name.endswith(".part")
    with caplog.at_level("INFO", logger="clustercam_pl.utils.files"):
        assert remove_partials([ckpts, tmp_path / "absent"], recursive=False) == [dead]
    assert f"removed 1 partial file(s) of interrupted writers: {dead}" in caplog.text
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([live.name, "last.ckpt", ".notes.tmp-x"])


@contextmanager
def unprivileged():
    """Run as user nobody for a moment when the tests run as root (root writes into any folder)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unwritable_folders_are_named_before_training():
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: user nobody can reach it (tmp_path's parents are 0700)
        Path(tmp).chmod(0o755)
        _check_unwritable(Path(tmp) / "run")


def _check_unwritable(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints").chmod(0o555)
    run.chmod(0o777)
    expected = (
        f"cannot write into {run / 'checkpoints'} (Permission denied): a training needs its run folder and its "
        "checkpoint folder writable; fix the permissions, or train into another folder with hydra.run.dir=NEW_FOLDER"
    )
    with unprivileged(), pytest.raises(RunFolderError) as e:
        claim_run_folder(run, [run / "checkpoints"])
    assert str(e.value) == expected
    assert not (run / LOCK_NAME).exists()  # the refused start gave the folder back
    run.chmod(0o555)
    with unprivileged(), pytest.raises(RunFolderError, match=rf"^cannot write into {run} \(Permission denied\)"):
        check_writable(run)


def test_train_refuses_a_folder_in_use_before_writing_into_it(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        with pytest.raises(RunFolderError) as e:  # with a wandb logger: its run id file is the owner's too
            train(compose_train([*TINY_OVERRIDES, "logger=wandb", "logger.wandb.id=second"], output_dir=tmp_path))
        assert str(e.value) == busy_message(tmp_path, owner)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # nothing written: no config.yaml, no wandb_id.txt
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # trains a run (README, Tests: what is slow)
def test_the_wandb_run_id_is_kept_in_the_run_folder_and_a_resumed_run_continues_it(tmp_path):
    first = compose_train([*TINY_OVERRIDES, "logger=wandb", "trainer.max_steps=1"], output_dir=tmp_path)
    train(first)  # WANDB_MODE=disabled (conftest): a real WandbLogger, nothing sent
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert run_id == first.logger.wandb.id and len(run_id) == 12
    again = compose_train([*TINY_OVERRIDES, "logger=wandb", "trainer.max_steps=2"], output_dir=tmp_path)
    assert train(again)["global_step"] == 2  # resumed from the first run's checkpoint
    assert again.logger.wandb.id == run_id and again.logger.wandb.resume == "allow"
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    import wandb

    assert wandb.run is None  # finished: the next job of a sweep in this process starts its own run


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder` but Hydra's own (.hydra/, the log it appends to): mtime, size, bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


@pytest.mark.slow
def test_second_training_on_a_folder_is_refused_and_a_killed_ones_lock_taken_over(tmp_path, caplog):
    # The first training is a real process (its lock dies with it); the second and third run in this
    # process: what they test is the folder's ownership, which `train` claims as the command line does.
    run = tmp_path / "run"
    over = [*TINY_OVERRIDES, "data.synthetic.num_train=400", "trainer.max_epochs=1",
            "callbacks.step_checkpoint.every_n_train_steps=2"]
    first = start_cli([*over, f"hydra.run.dir={run}"])
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", first, 240)
        first.send_signal(signal.SIGSTOP)  # frozen: its files cannot change while the second tries
        time.sleep(0.5)  # let a save that was under way finish its rename
        before = _files(run)
        owner = json.loads((run / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid
        with pytest.raises(RunFolderError) as e:
            train(compose_train(over, output_dir=run))
        assert str(e.value) == busy_message(run, owner)
        assert _files(run) == before  # config.yaml, checkpoints, csv/metrics.csv: as the first left them
    finally:
        first.send_signal(signal.SIGKILL)
        first.send_signal(signal.SIGCONT)
        first.wait(30)
    # As a kill mid-save leaves it, under a pid no process has (the killed run's own pid may be reused by then).
    leftover = partial_path(run / "checkpoints" / "last.ckpt", dead_pid())
    leftover.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.INFO, logger="clustercam_pl"):
        train(compose_train([*over, "trainer.max_steps=1"], output_dir=run))  # resumes past max_steps: ends at once
    assert f"took over the lock of pid {first.pid} on {owner['host']}" in caplog.text
    assert not leftover.exists()  # the start of the run removed it, and said so (with the first's, if killed mid-save)
    said = next(m for m in caplog.messages if "partial file(s) of interrupted writers" in m)
    assert str(leftover) in said
    assert not (run / LOCK_NAME).exists()


def _owner_with_a_worker(folder: Path) -> None:
    """Take the folder's lock and fork a worker that inherits it and keeps it until `folder/go` appears;
    then end at once, as a SIGKILLed command leaves its data-loader or CRF workers behind."""
    FolderLock(folder, "x.lock", user="test", hint="-").acquire()
    if os.fork() == 0:
        deadline = time.monotonic() + 30
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0)


def test_a_dead_owners_lock_still_held_by_its_workers_is_waited_for(tmp_path, caplog):
    """A killed command's forked workers hold its output folder's lock a few seconds more: a rerun waits
    for them instead of refusing the folder as in use."""
    owner = fork_process(_owner_with_a_worker, tmp_path)
    deadline = time.monotonic() + 30
    while owner.exitcode is None and time.monotonic() < deadline:  # not join(): the worker keeps its sentinel open
        time.sleep(0.01)
    assert owner.exitcode == 0
    lock = FolderLock(tmp_path, "x.lock", user="test", hint="-")
    with caplog.at_level(logging.WARNING, logger="clustercam_pl.utils.files"):
        waiting = threading.Thread(target=lock.acquire)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()  # waiting for the worker (a refusal would have ended the thread)
        (tmp_path / "go").touch()  # the worker exits, and its copy of the lock goes with it
        waiting.join(30)
    assert lock.held and json.loads((tmp_path / "x.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert "took over the lock of pid" in caplog.text
