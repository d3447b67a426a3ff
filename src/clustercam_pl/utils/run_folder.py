"""What a training start checks in its run folder: ownership, leftovers of dead writers, permissions.

A run folder belongs to one training at a time. Two trainings on the same folder would write their
checkpoints side by side (``last.ckpt``, ``last-v1.ckpt``), race on ``metrics.json`` and interleave
rows of different headers in ``csv/metrics.csv``. The owner holds ``<run folder>/train.lock`` (a
:class:`~clustercam_pl.utils.files.FolderLock`, the lock every command's output folder has), taken
before anything is written into the folder.

Under DDP only global rank 0 calls this: the lock of the run is the lock of its rank 0.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from clustercam_pl.utils.files import FolderBusyError, FolderLock, remove_partials

LOCK_NAME = "train.lock"


class RunFolderError(FolderBusyError):
    """The run folder cannot be used by this training (another owns it, or it is not writable)."""


class RunFolderLock(FolderLock):
    """The lock of a training's run folder."""

    error = RunFolderError

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        hint = "wait for it to end or stop it, or train into another folder with hydra.run.dir=NEW_FOLDER"
        super().__init__(folder, LOCK_NAME, user="training", hint=hint, what="run folder")

    def acquire(self) -> None:
        check_writable(self.folder)
        super().acquire()


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a file into it; RunFolderError naming it otherwise.

    A real write, not ``os.access``: that misses read-only mounts, ACLs and full disks.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RunFolderError(
            f"cannot write into {folder} ({e.strerror or e}): a training needs its run folder and its "
            "checkpoint folder writable; fix the permissions, or train into another folder with "
            "hydra.run.dir=NEW_FOLDER"
        ) from e


def claim_run_folder(
    folder: str | os.PathLike[str], checkpoint_dirs: Iterable[str | os.PathLike[str]]
) -> RunFolderLock:
    """At the start of a training (rank 0): own ``folder``, check that it and the checkpoint folders
    are writable, and remove checkpoint temporaries of dead writers. Returns the held lock."""
    lock = RunFolderLock(folder)
    lock.acquire()
    try:
        dirs = [Path(d) for d in checkpoint_dirs]
        for d in dirs:
            check_writable(d)
        remove_partials(dirs, recursive=False)
    except BaseException:
        lock.release()
        raise
    return lock
