"""Optional dependencies (the extras of pyproject.toml): imported where they are used, so the package
works without them, and refused with the command that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(module: str, user: str, package: str, extra: str, command: str | None = None) -> ModuleType:
    """``module``, or ImportError "<user> needs <package>: pip install 'clustercam_pl[<extra>]'" (or ``command``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        install = command or f"pip install 'clustercam_pl[{extra}]'"
        raise ImportError(f"{user} needs {package}: {install}") from e
