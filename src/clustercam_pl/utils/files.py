"""Files that are never seen half-written, and output folders that one command run owns.

Every file the framework writes (masks, CAMs, scores, JSON, archives, checkpoints) goes through
:func:`atomic_write`: the bytes go to a hidden partial file ``.<name>.<pid>.part`` beside the target,
are flushed to disk, and the partial is renamed over the target (``os.replace`` is atomic on POSIX).
A reader, a rerun or a crash therefore sees the old file or the new one, never a mix; a killed writer
leaves only its partial, which :func:`remove_partials` deletes once that writer no longer runs. A full
disk or a file-size limit is reported naming the file and the cause, and says that the previous file
is untouched.

:class:`OutputFolder` is the shared start of every batch command (eval, export, predict, refine,
audit): one owner per folder (a lock as training's run folder has), a ``meta.json`` that refuses a
rerun with other settings, and the partials of dead writers cleared, on N processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clustercam_pl.utils.distributed import Ranks

log = logging.getLogger(__name__)

META_NAME = "meta.json"
# How long a lock whose recorded owner is dead may stay held by that owner's forked workers (PyTorch's
# data-loader workers look for their parent every 5 s) before the folder counts as in use.
ORPHAN_WAIT_S = 30.0
# ``.<name>.<pid>.part`` (this version); ``<name>.part`` and ``.<name>.tmp-<pid>`` (earlier versions).
_PARTIAL_RE = re.compile(r"^(?:\.(?P<name>.+)\.(?P<pid>\d+)\.part|.+\.part|\.(?P<ckpt>.+)\.tmp-(?P<ckpt_pid>\d+))$")


class FolderBusyError(RuntimeError):
    """Another live process owns the folder (see :class:`FolderLock`)."""


class WriteError(OSError):
    """A file could not be written for a reason the user can act on (no space, size limit, permissions)."""


def partial_path(path: str | os.PathLike[str], pid: int | None = None) -> Path:
    """Where the process ``pid`` (default: this one) writes ``path`` before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.part")


def _write_error(path: Path, e: OSError) -> OSError:
    """`e` as a message naming the file, the cause and what to do; other errors unchanged."""
    causes = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EFBIG: "the file is larger than the file-size limit of this process or file system (ulimit -f)",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
    }
    if e.errno not in causes:
        return e
    return WriteError(
        e.errno,
        f"could not write {path}: {causes[e.errno]}. The previous {path.name} (if any) is intact and nothing "
        f"else was changed; free space or raise the limit, or write elsewhere, then run the command again",
    )


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """``with atomic_write(p) as f: f.write(...)``: ``p`` appears whole when the block ends, or not at all.

    The binary file object is what PIL's ``save``, ``np.savez``, ``torch.save`` and ``tarfile`` take.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Indented JSON (non-finite floats as ``NaN``, as Python's json writes them)."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_partial(path: Path) -> bool:
    return _PARTIAL_RE.match(path.name) is not None


def remove_partials(folders: Iterable[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Delete the partial files of writers that no longer run (a killed run leaves them behind).

    A partial of a live process (another command writing beside this one) is left alone.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
            m = _PARTIAL_RE.match(path.name)
            if not m or not path.is_file():
                continue
            pid = m.group("pid") or m.group("ckpt_pid")
            if pid is not None and _pid_alive(int(pid)):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d partial file(s) of interrupted writers: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed


def natural_key(text: str | os.PathLike[str]) -> list[Any]:
    """Sort key that orders ``epoch=9`` before ``epoch=10`` and ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
"""Network weight files a config key may name instead of a hub name (model.pretrained, model.smp.encoder_weights)."""


def names_weights_file(value: str | os.PathLike[str]) -> bool:
    """Whether a weights setting names a local file (a weights suffix, or an existing path) rather than a hub name."""
    path = Path(value)
    return path.suffix in WEIGHTS_SUFFIXES or path.exists()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FolderLock:
    """The exclusive ownership of a folder, held from :meth:`acquire` until :meth:`release`.

    The owner holds an exclusive ``flock`` on ``<folder>/<lock_name>``, released by the kernel when
    the process ends in any way (SIGKILL included), and writes its pid, host and start time into the
    file for the message another start prints. A lock file whose lock is free is stale and taken over.
    Where the file system has no ``flock`` (some network mounts) the recorded pid is checked instead.
    ``user`` says who owns such a folder ("training", "predict run") and ``hint`` what to do instead.
    Also a context manager.
    """

    def __init__(self, folder: str | os.PathLike[str], lock_name: str, user: str, hint: str,
                 what: str = "output folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / lock_name
        self.user = user
        self.hint = hint
        self._fd: int | None = None

    error: type[Exception] = FolderBusyError

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Own the folder, taking over a stale lock; FolderBusyError naming the owner if one runs."""
        if self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                state = _try_flock(fd)
                previous = _read_owner(fd)
                if state == "held" and previous and not _owner_running(previous) and time.monotonic() < deadline:
                    # The owner is dead, but processes it forked (data-loader or CRF workers) still hold
                    # the inherited lock for a few seconds, until they notice: wait for them, not refuse.
                    os.close(fd)
                    time.sleep(0.1)
                    continue
                if state == "held" or (state == "unsupported" and _owner_running(previous)):
                    raise self.error(self._busy_message(previous, by_pid=state == "unsupported"))
                if not _same_file(fd, self.path):  # released (unlinked) between our open and lock: retry
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        if previous:
            log.warning(
                "%s %s: took over the lock of pid %s on %s (started %s), which no longer runs",
                self.what, self.folder, previous.get("pid"), previous.get("host"), previous.get("started"),
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
            f"{self.what} {self.folder} is in use by another {self.user} ({where}); {self.hint}.{gone}"
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
        return _pid_alive(int(owner.get("pid", -1)))
    except (TypeError, ValueError):
        return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class OutputFolder:
    """The folder one batch command writes, owned by one run at a time.

    ``claim(ranks)`` on every process: each checks ``meta.json`` against ``meta`` (a rerun with other
    settings is refused, naming the keys that differ, unless ``overwrite``); the main process takes
    the folder's lock (a second run into the same folder is refused while the first runs), writes
    ``meta.json`` and clears partials of dead writers; then all wait for each other. ``release()``
    (or the end of a ``with`` block) gives the folder up.

    ``ignore`` names meta keys that may change between runs (a re-saved checkpoint of the same
    weights, say) without the outputs becoming mixed. ``meta_name``: the meta file's name (a
    command whose layout predates ``meta.json`` keeps its own, e.g. predict_meta.json).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        meta: Mapping[str, Any],
        *,
        command: str,
        overwrite: bool = False,
        ignore: Sequence[str] = (),
        meta_name: str = META_NAME,
    ) -> None:
        self.root = Path(root)
        self.meta_name = meta_name
        self.meta = dict(meta)
        self.command = command
        self.overwrite = overwrite
        self.ignore = tuple(ignore)
        self._lock: Any = None

    @property
    def meta_path(self) -> Path:
        return self.root / self.meta_name

    def check_meta(self) -> None:
        """ValueError when the folder holds outputs made with other settings (and not ``overwrite``)."""
        if self.overwrite or not self.meta_path.is_file():
            return
        try:
            old = json.loads(self.meta_path.read_text())
        except ValueError as e:
            raise ValueError(
                f"{self.meta_path} is not valid JSON ({e}); it records how the outputs beside it were made. "
                "Pass another out_dir=..., or overwrite=true to redo every output there"
            ) from e
        keys = sorted(k for k in set(old) | set(self.meta) if k not in self.ignore and old.get(k) != self.meta.get(k))
        if keys:
            detail = "; ".join(f"{k}: stored {old.get(k)!r}, now {self.meta.get(k)!r}" for k in keys)
            raise ValueError(
                f"{self.root} holds {self.command} outputs made with another checkpoint or other settings ({detail}). "
                "Pass another out_dir=..., or overwrite=true to redo every output there"
            )

    def claim(self, ranks: Ranks | None = None) -> OutputFolder:
        main = ranks is None or ranks.is_main
        self.check_meta()
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(self.root, lock_name=f".{self.command}.lock", user=f"{self.command} run",
                              hint="wait for it to end or stop it, or pass another out_dir=...")
            lock.acquire()
            self._lock = lock
            try:
                write_json(self.meta_path, self.meta)
                remove_partials([self.root])
            except BaseException:
                self.release()
                raise
        if ranks is not None:
            ranks.barrier()
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
