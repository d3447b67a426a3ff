"""Console-script shims for entry points whose `main` returns something that is not an exit status.

A console script exits with whatever its function returns; `bench.main` returns the result dict,
which `sys.exit` would print to stderr as an error with status 1.
"""

from __future__ import annotations


def bench() -> int:
    """`clustercam-bench`: run `python -m clustercam_pl.bench` and exit 0 (errors raise, as there)."""
    from clustercam_pl.bench import main

    main()
    return 0
