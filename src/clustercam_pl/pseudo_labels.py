"""Moved: `python -m clustercam_pl.export_labels` (this name is kept for earlier scripts)."""

from __future__ import annotations

import warnings

from clustercam_pl.export_labels import export_pseudo_labels, main  # noqa: F401

if __name__ == "__main__":
    warnings.warn("clustercam_pl.pseudo_labels moved to clustercam_pl.export_labels", DeprecationWarning, stacklevel=1)
    main()
