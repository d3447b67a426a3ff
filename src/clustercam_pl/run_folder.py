"""What a training start checks in its run folder: ownership, leftovers of dead writers, permissions.

A run folder belongs to one training at a time. Two trainings on the same folder would write their
checkpoints side by side (``last.ckpt``, ``last-v1.ckpt``), race on ``metrics.json`` and interleave
rows of different headers in ``csv/metrics.csv``. The owner holds ``<run folder>/train.lock``: an
exclusive ``flock`` on the open file, released by the kernel when the process ends in any way
(SIGKILL included), and the owner's pid, host and start time in the file, for the message another
start prints. A lock file whose lock is free is stale (its process is gone) and is taken over.

Where the file system has no ``flock`` (some network mounts), the pid is checked instead: a lock of a
process that no longer runs on this host is taken over, one of another host is refused, with the
command to remove it by hand.

Under DDP only global rank 0 calls this: the lock of the run is the lock of its rank 0.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


class RunFolderError(RuntimeError):
    """The run folder cannot be used by this training (another owns it, or it is not writable)."""


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """Where a writer with ``pid`` (default: this process) writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` files (see :func:`temporary_path`) whose writer no longer runs.

    A kill during a checkpoint save leaves one behind, up to a full checkpoint in size. Returns the
    removed paths.
    """
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _TMP_RE.match(path.name)
            if m and path.is_file() and not pid_alive(int(m.group("pid"))):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of killed checkpoint writers: %s",
                 len(removed), ", ".join(str(p) for p in removed))
    return removed


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


class RunFolderLock:
    """The exclusive ownership of a run folder, held from :meth:`acquire` until :meth:`release`.

    Also a context manager (``with RunFolderLock(folder):``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Own the folder, taking over a stale lock; RunFolderError naming the owner if one runs."""
        if self._fd is not None:
            return
        check_writable(self.folder)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                state = _try_flock(fd)
                previous = _read_owner(fd)
                if state == "held" or (state == "unsupported" and _owner_running(previous)):
                    raise RunFolderError(self._busy_message(previous, by_pid=state == "unsupported"))
                if not _same_file(fd, self.path):  # released (unlinked) between our open and lock: retry
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        if previous:
            log.warning(
                "run folder %s: took over the lock of pid %s on %s (started %s), which no longer runs",
                self.folder, previous.get("pid"), previous.get("host"), previous.get("started"),
            )
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the folder up: remove the lock file, then drop the lock (closing the file)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def _busy_message(self, owner: dict, by_pid: bool) -> str:
        """Who owns the folder and what to do; `by_pid`: judged from the recorded pid (no flock here),
        so the owner may be gone without this process being able to tell."""
        if owner:
            where = f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"
        else:
            where = "a process that is starting right now"
        gone = f" If that process is gone, remove the lock with: rm {self.path}" if by_pid else ""
        return (
            f"run folder {self.folder} is in use by another training ({where}); wait for it to end or stop "
            f"it, or train into another folder with hydra.run.dir=NEW_FOLDER.{gone}"
        )


def _try_flock(fd: int) -> str:
    """"ours" (the lock is taken), "held" (by another open of the file) or "unsupported" (no flock here)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return "unsupported"
        raise
    return "ours"


def _read_owner(fd: int) -> dict:
    """The owner recorded in an open lock file ({} when empty or unreadable)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _owner_running(owner: dict) -> bool:
    """Without flock: whether the recorded owner may still run (its pid is alive here, or it is on
    another host, where this process cannot tell)."""
    if not owner:
        return True  # created but not yet written: its owner is writing it right now
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        return pid_alive(int(owner.get("pid", -1)))
    except (TypeError, ValueError):
        return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
        remove_dead_temporaries(dirs)
    except BaseException:
        lock.release()
        raise
    return lock
