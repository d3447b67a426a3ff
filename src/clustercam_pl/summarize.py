"""Summarise a sweep: `python -m clustercam_pl.summarize <multirun folder | run folders ...>`.

Prints a Markdown table (one row per setting, seeds grouped, mean ± std of every val/ and test/ metric,
sorted by the optimised metric, the best run's folder), lists pending jobs, broken jobs (a file that
cannot be read, named) and optuna's result, and writes summary.csv and a PNG per swept key beside the
sweep. Exit status 1 on an input error, and when some job is broken (after summarising the others).
The work is in :mod:`clustercam_pl.tasks.sweep`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from clustercam_pl.tasks.sweep import SEED_KEYS, Summary, SweepError, markdown, plot, summarize, write_csv


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clustercam_pl.summarize", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="a Hydra multirun folder, or run folders")
    p.add_argument("--metric", help="sort by this metric (default: the runs' optimized_metric, else val/seg_miou)")
    p.add_argument("--minimize", action="store_true", help="lower is better for --metric")
    p.add_argument("--seed-key", action="append", dest="seed_keys",
                   help=f"keys whose runs are repeats of one setting (default: {', '.join(SEED_KEYS)}); repeatable")
    p.add_argument("--out", type=Path, help="where summary.csv and the PNGs go (default: beside the sweep)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    return p


def main(argv: Sequence[str] | None = None) -> Summary:
    """Summarise, print, write the CSV and the pictures; return the summary."""
    args = _parser().parse_args(argv)
    summary = summarize(args.paths, metric=args.metric, minimize=args.minimize,
                        seed_keys=tuple(args.seed_keys or SEED_KEYS), out_dir=args.out)
    print(markdown(summary, minimize=args.minimize))
    if summary.settings:
        written = [write_csv(summary, summary.out_dir / "summary.csv", minimize=args.minimize)]
        written += [] if args.no_plots else plot(summary)
        print("\nwrote " + ", ".join(str(p) for p in written))
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    """``main`` for the shell: an input error is one message and exit status 1; so is each broken job,
    after the summary of the others."""
    try:
        summary = main(argv)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for run in summary.broken:
        print(f"error: {run.error}", file=sys.stderr)
    return 1 if summary.broken else 0


if __name__ == "__main__":
    sys.exit(cli())
