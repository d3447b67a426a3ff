"""Checkpoint files: finding them, reading them safely, writing them atomically.

Every file is read with `torch.load(..., weights_only=True)`, so a checkpoint someone sent cannot run
code. A file that does not load is diagnosed from its bytes: a pickle that would call code is refused
as such; an empty, truncated or foreign file (an HTML error page a download saved, a zip of something
else) is named as what it is, with what to do, and never with advice to load it unsafely.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from clustercam_pl.utils.files import atomic_write, natural_key

log = logging.getLogger(__name__)

SUFFIXES = (".ckpt", ".pth", ".pt")
AGAIN = ("Copy or download it again, or pass another checkpoint (a run folder gives its "
         "checkpoints/last.ckpt)")
"""What to do about a checkpoint file that is damaged or not a checkpoint."""


# ------------------------------------------------------------------------------------ find
def find_checkpoints(spec: str | os.PathLike | Sequence[str | os.PathLike], key: str = "ckpt_path") -> list[Path]:
    """Checkpoint files from a path, a list of paths, a glob pattern or a folder (in name order).

    A folder gives its `*.ckpt/*.pth/*.pt` files, or those of its `checkpoints/` subfolder (a run
    folder). `key` is the config key the errors name.
    """
    if spec is None or (isinstance(spec, str) and spec in ("", "???")):
        raise ValueError(f"{key} is not set: pass {key}=<file|[a,b]|glob|folder>")
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not items:
        raise ValueError(f"{key} is an empty list")
    found: list[Path] = []
    for item in items:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            files = sorted((f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file()),
                           key=lambda f: natural_key(f.name))
            if not files and (p / "checkpoints").is_dir():
                files = find_checkpoints(p / "checkpoints", key)
            if not files:
                raise FileNotFoundError(f"{key}={text}: folder has no {'/'.join(SUFFIXES)} files")
            found += files
        elif glob.has_magic(text):
            files = sorted((Path(f) for f in glob.glob(text) if Path(f).is_file()), key=lambda f: natural_key(str(f)))
            if not files:
                raise FileNotFoundError(f"{key}={text}: the pattern matches no file")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{key}={text} does not exist")
    unique: dict[str, Path] = {}
    for f in found:
        unique.setdefault(str(f.resolve()), f)
    return list(unique.values())


def find_one_checkpoint(spec: str | os.PathLike | Sequence[str | os.PathLike], key: str = "ckpt_path") -> Path:
    """The one checkpoint a command that uses a single network reads, in the forms `find_checkpoints` takes.

    Several matches (a run folder) give its `last.ckpt` if there is one; otherwise the choice is refused
    with the candidates named. The pick is logged.
    """
    files = find_checkpoints(spec, key)
    if len(files) == 1:
        pick = files[0]
    else:
        last = [f for f in files if f.name == "last.ckpt"]
        if len(last) != 1:
            names = ", ".join(str(f) for f in files[:6]) + (" ..." if len(files) > 6 else "")
            raise ValueError(f"{key}={spec} gives {len(files)} checkpoints ({names}): pass one file")
        pick = last[0]
    if str(pick) != os.fspath(spec):
        log.info("%s=%s: using %s", key, spec, pick)
    return pick


# ------------------------------------------------------------------------------------ read
def read_file(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` with errors that name the file, say what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every failure is diagnosed below, torch's error kept as the cause
        raise _unreadable(path, e) from e


def _unreadable(path: Path, error: Exception) -> ValueError:
    """Why `path` did not load: a pickle that calls code, or a file that is damaged or not a checkpoint.

    Judged from the file's own bytes first: torch's messages for foreign files suggest
    `weights_only=False`, which is wrong advice for a file that is merely not a checkpoint.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    structure = _structure(path, head)
    called = re.search(r"Unsupported global: GLOBAL ([\w.]+) was not an allowed global", str(error))
    if called and structure in ("torch zip", "pickle"):
        return ValueError(
            f"refusing to read {path}: it holds Python code that would run on load (it would call "
            f"{called.group(1)}). Checkpoints are read with weights_only=True, which loads tensors and plain "
            "values only. Use a checkpoint from a source you trust, or have the program that wrote this "
            "file save plain tensors (torch.save(model.state_dict(), ...)) and pass that file"
        )
    if size == 0:
        what = "it is empty (0 bytes): an interrupted copy or save"
    elif structure == "cut zip":
        what = (f"it is truncated ({size} bytes; the zip archive has no end record): probably an "
                "interrupted copy or save")
    elif structure == "foreign zip":
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        listing = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        what = f"it is a zip archive but not a PyTorch checkpoint (no data.pkl; it holds {listing or 'nothing'})"
    elif structure == "html":
        what = ("it is not a PyTorch checkpoint but a web page (it starts with "
                f"{head.lstrip()[:15].decode('ascii', 'replace')!r}): a download that saved an error or login page")
    elif structure == "other":
        what = f"it is not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with {head[:8]!r})"
    elif _truncated_pickle(error):
        what = f"it is truncated ({size} bytes; {_reason(error)}): probably an interrupted copy or save"
    else:
        what = f"it is damaged or not a PyTorch checkpoint ({_reason(error)}); it may be truncated"
    return ValueError(f"cannot read checkpoint {path}: {what}. {AGAIN}")


def _structure(path: Path, head: bytes) -> str:
    """What the bytes are: "torch zip", "foreign zip", "cut zip", "pickle", "html" or "other"."""
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "cut zip"
        try:
            with zipfile.ZipFile(path) as z:
                has_data = any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return "cut zip"
        return "torch zip" if has_data else "foreign zip"
    if head.startswith(b"\x80"):  # pickle PROTO opcode: torch's legacy format and plain pickles
        return "pickle"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    return "other"


def _truncated_pickle(error: Exception) -> bool:
    text = str(error)
    return isinstance(error, EOFError) or "unexpected EOF" in text or "truncated" in text


def _reason(error: Exception) -> str:
    """The short cause of a load failure, without torch's advice to load unsafely."""
    text = str(error)
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    first = detail.group(1) if detail else (text.strip().splitlines() or ["no detail"])[0]
    if "weights_only" in first:  # torch's advice to load unsafely is never passed on
        first = "not readable as weights"
    return f"{type(error).__name__}: {first[:160]}"


# ----------------------------------------------------------------------------------- write
class _Recorder:
    """A binary file that remembers the OSError of a failed write.

    `torch.save` turns a failed write into "PytorchStreamWriter ... unexpected pos" without the cause;
    with it, a full disk or a file-size limit is reported as such.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through `atomic_write`: the target is never half-written (a later training start
    removes the partial file of a process killed mid-save). A full disk or a size limit raises
    `utils.files.WriteError` naming the file and the cause; the previous file is left intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        out = _Recorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError as e:
            if out.error is None:
                raise
            raise out.error from e  # atomic_write names the file and the cause


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves (`save_atomic`) and `weights_only` loads (`read_file`).

    A kill during a save leaves the previous checkpoint intact (rename is atomic on POSIX).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_file(path)
