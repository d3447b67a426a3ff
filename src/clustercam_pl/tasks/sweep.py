"""Reading a sweep: one row per setting (seeds grouped), mean ± std of every metric, CSV and pictures.

A Hydra multirun leaves one folder per job with ``.hydra/overrides.yaml`` (what the job was told) and,
once it finished, ``metrics.json``. The keys whose values differ between jobs are the swept keys;
jobs that differ only in ``seed`` are repeats of one setting, so their metrics are averaged and the
spread over seeds is the error bar. A job whose files cannot be read (a truncated ``metrics.json``) is
listed as broken with the file and the reason; the others are summarised. Entry point:
``python -m clustercam_pl.summarize``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clustercam_pl.utils.files import natural_key

SEED_KEYS = ("seed",)
METRIC_PREFIXES = ("val/", "test/")
DEFAULT_METRIC = "val/seg_miou"  # conf/train.yaml optimized_metric
OPTUNA_RESULTS = "optimization_results.yaml"


class SweepError(ValueError):
    """Input a summary cannot be made from; the message names the file or option."""


def parse_override(text: str) -> tuple[str, str]:
    """``+net.cluster_grid=[2,2]`` -> ``("net.cluster_grid", "[2,2]")``: the key without +/++/~, the value as
    written."""
    key, sep, value = text.partition("=")
    if not sep:  # "~key" deletes a key
        return key.lstrip("~+"), "<deleted>"
    return key.lstrip("~+"), value


@dataclass
class Run:
    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, float] | None  # None: no metrics.json yet (pending)
    optimized_metric: str | None = None
    command_line: list[str] = field(default_factory=list)  # the overrides as Hydra recorded them
    error: str | None = None  # why one of its files could not be read: left out of the table, listed


@dataclass
class Setting:
    values: dict[str, str]  # swept key (seed excluded) -> value
    runs: list[Run]

    def values_of(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if r.metrics and math.isfinite(r.metrics.get(metric, math.nan))]

    def stats(self, metric: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation (NaN below two values) and count of the finite values."""
        v = self.values_of(metric)
        mean = statistics.fmean(v) if v else math.nan
        std = statistics.stdev(v) if len(v) > 1 else math.nan
        return mean, std, len(v)

    def best(self, metric: str, minimize: bool = False) -> Run | None:
        done = [r for r in self.runs if r.metrics and math.isfinite(r.metrics.get(metric, math.nan))]
        if not done:
            return None
        sign = -1.0 if minimize else 1.0
        return max(done, key=lambda r: sign * r.metrics[metric])


@dataclass
class Summary:
    swept: list[str]  # every key that differs between runs, seed included
    metric: str  # what the rows are sorted by
    metrics: list[str]
    settings: list[Setting]
    pending: list[Run]
    out_dir: Path
    broken: list[Run] = field(default_factory=list)  # runs whose files could not be read (`Run.error`)
    runs: list[Run] = field(default_factory=list)  # all of them, pending included
    seed_keys: tuple[str, ...] = SEED_KEYS
    optuna: dict[Path, dict[str, Any]] = field(default_factory=dict)

    @property
    def setting_keys(self) -> list[str]:
        return [k for k in self.swept if k not in self.seed_keys]


def find_run_folders(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Run folders (with ``.hydra/overrides.yaml``) under the given paths, and the paths that are sweep roots."""
    runs: list[Path] = []
    roots: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise SweepError(f"{p} is not a folder: give a Hydra multirun folder or run folders")
        if (p / ".hydra" / "overrides.yaml").is_file():
            runs.append(p)
            continue
        found = sorted((f.parent.parent for f in p.rglob("overrides.yaml") if f.parent.name == ".hydra"),
                       key=natural_key)
        if not found:
            raise SweepError(
                f"no run folders in {p}: a Hydra multirun folder holds <job>/.hydra/overrides.yaml, "
                "a run folder .hydra/overrides.yaml"
            )
        runs += found
        roots.append(p)
    return list(dict.fromkeys(runs)), roots


_UNREADABLE = (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError)  # json.JSONDecodeError is a ValueError


def _reason(e: Exception) -> str:
    """An exception on one line (YAML's span several), for the table's list and stderr."""
    return " ".join(str(e).split())


def load_run(folder: Path) -> Run:
    """A run folder's overrides, metrics (None while pending) and optimised metric. A file that cannot be
    read (a job killed while writing, a full disk) gives a run with `Run.error` naming it, not an
    exception: one broken job must not hide the others."""
    ofile, cfile = folder / ".hydra" / "overrides.yaml", folder / ".hydra" / "config.yaml"
    mfile = folder / "metrics.json"
    try:
        lines = yaml.safe_load(ofile.read_text()) or []
        if not isinstance(lines, list):
            raise ValueError(f"a list of overrides expected, got {type(lines).__name__}")
    except _UNREADABLE as e:
        return Run(folder=folder, overrides={}, metrics=None, error=f"cannot read {ofile}: {_reason(e)}")
    overrides = dict(parse_override(str(line)) for line in lines)
    run = Run(folder=folder, overrides=overrides, metrics=None, command_line=[str(line) for line in lines])
    try:
        if mfile.is_file():
            data = json.loads(mfile.read_text())
            source = data.get("metrics", data) if isinstance(data, dict) else {}
            run.metrics = {k: float(v) for k, v in source.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
    except _UNREADABLE as e:
        run.error = f"cannot read {mfile}: {_reason(e)}; rerun the job, or delete the file to list the job as pending"
        run.metrics = None
        return run
    try:
        cfg = (yaml.safe_load(cfile.read_text()) or {}) if cfile.is_file() else {}
    except _UNREADABLE as e:
        run.error = f"cannot read {cfile}: {_reason(e)}"
        run.metrics = None
        return run
    run.optimized_metric = cfg.get("optimized_metric") if isinstance(cfg, dict) else None
    return run


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Keys whose value is not the same in every run (missing counts as a value), in command-line order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def summarize(
    paths: Sequence[Path | str],
    metric: str | None = None,
    minimize: bool = False,
    seed_keys: Sequence[str] = SEED_KEYS,
    out_dir: Path | None = None,
) -> Summary:
    """Group the runs under ``paths`` by setting and sort the settings by ``metric`` (default: the runs' own
    ``optimized_metric``, else val/seg_miou)."""
    folders, roots = find_run_folders(Path(p) for p in paths)
    runs = [load_run(f) for f in folders]
    broken = [r for r in runs if r.error is not None]
    readable = [r for r in runs if r.error is None]
    done = [r for r in readable if r.metrics is not None]
    pending = [r for r in readable if r.metrics is None]
    swept = swept_keys(readable)
    seed_keys = tuple(seed_keys)
    found = sorted({k for r in done for k in r.metrics if k.startswith(METRIC_PREFIXES)})
    if metric is None:
        metric = next((r.optimized_metric for r in done if r.optimized_metric), DEFAULT_METRIC)
    if done and metric not in found:
        choices = ", ".join(f"--metric {m}" for m in found) or "(no val/ or test/ metrics)"
        raise SweepError(f"metric {metric!r} is in none of the finished runs' metrics.json; choose one of: {choices}")
    metrics = [metric, *(m for m in found if m != metric)] if done else []

    groups: dict[tuple[str | None, ...], Setting] = {}
    setting_keys = [k for k in swept if k not in seed_keys]
    for r in readable:
        key = tuple(r.overrides.get(k) for k in setting_keys)
        groups.setdefault(key, Setting({k: r.overrides.get(k, "—") for k in setting_keys}, []))
        groups[key].runs.append(r)
    sign = 1.0 if minimize else -1.0
    finished = (s for s in groups.values() if any(r.metrics is not None for r in s.runs))
    settings = sorted(finished, key=lambda s: (math.isnan(s.stats(metric)[0]), sign * _nan_to_zero(s.stats(metric)[0])))
    if out_dir is None:  # beside the sweep: the multirun folder, else the folder the given runs share
        one_root = len(paths) == 1 and roots
        out_dir = roots[0] if one_root else Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    optuna = {}
    for root in roots:
        if (root / OPTUNA_RESULTS).is_file():
            optuna[root / OPTUNA_RESULTS] = yaml.safe_load((root / OPTUNA_RESULTS).read_text()) or {}
    return Summary(swept=swept, metric=metric, metrics=metrics, settings=settings, pending=pending,
                   out_dir=Path(out_dir), broken=broken, runs=runs, seed_keys=seed_keys, optuna=optuna)


def _nan_to_zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "—"
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def _where(run: Run | None, base: Path) -> str:
    if run is None:
        return "—"
    try:
        return str(run.folder.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(run.folder)


def _seeds(s: Setting, seed_keys: Sequence[str]) -> str:
    seeds = [r.overrides.get(k) for r in s.runs if r.metrics is not None for k in seed_keys if k in r.overrides]
    return ",".join(seeds) or "—"


def markdown(summary: Summary, minimize: bool = False) -> str:
    """The table (plus pending jobs and optuna's result) as Markdown."""
    head = [*summary.setting_keys, "n", "seeds", *summary.metrics, "best run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary.settings:
        n = sum(r.metrics is not None for r in s.runs)
        cells = [s.values[k] for k in summary.setting_keys] + [str(n), _seeds(s, summary.seed_keys)]
        cells += [_cell(*s.stats(m)) for m in summary.metrics]
        cells.append(_where(s.best(summary.metric, minimize), summary.out_dir))
        lines.append("| " + " | ".join(cells) + " |")
    total = len(summary.runs)
    out = [f"{len(summary.settings)} setting(s) from {total} run(s), sorted by {summary.metric} "
           f"({'lowest' if minimize else 'highest'} first); mean ± sample std over seeds", "", *lines]
    if summary.pending:
        out += ["", f"pending ({len(summary.pending)} of {total}: no metrics.json yet: running, queued or failed, "
                    "see the job's .log):"]
        out += [f"- {_where(r, summary.out_dir)}: " + " ".join(r.command_line)
                for r in summary.pending]
    if summary.broken:
        out += ["", f"broken ({len(summary.broken)} of {total}: a file could not be read; left out of the table):"]
        out += [f"- {_where(r, summary.out_dir)}: {r.error}" for r in summary.broken]
    for path, result in summary.optuna.items():
        out += ["", f"optuna ({path}):", "```yaml", yaml.safe_dump(result, sort_keys=False).rstrip(), "```"]
    return "\n".join(out)


def write_csv(summary: Summary, path: Path, minimize: bool = False) -> Path:
    """One row per setting: swept values, n, seeds, then mean and std of every metric, then the best run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        stats = [f"{m} {s}" for m in summary.metrics for s in ("mean", "std")]
        w.writerow([*summary.setting_keys, "n", "seeds", *stats, "best_run"])
        for s in summary.settings:
            row: list[Any] = [s.values[k] for k in summary.setting_keys]
            row += [sum(r.metrics is not None for r in s.runs), _seeds(s, summary.seed_keys)]
            for m in summary.metrics:
                mean, std, _ = s.stats(m)
                row += [repr(mean), repr(std)]
            best = s.best(summary.metric, minimize)
            w.writerow([*row, str(best.folder) if best else ""])
    return path


def _axis(values: Iterable[str]) -> tuple[list[str], bool]:
    """Distinct values in plotting order, and whether they are numbers (else categories)."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float), True
    except ValueError:
        return sorted(distinct, key=natural_key), False


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def plot(summary: Summary, out_dir: Path | None = None) -> list[Path]:
    """A PNG per swept key (the sorted-by metric against its values, error bars = std over seeds; one line
    per combination of the other keys) and, for two swept keys, a heat map. Returns the files written."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    out_dir = Path(out_dir or summary.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys, metric = summary.setting_keys, summary.metric
    settings = [s for s in summary.settings if s.values_of(metric)]
    written: list[Path] = []
    if not settings:
        return written
    for key in keys:
        xs, numeric = _axis(s.values[key] for s in settings)
        others = [k for k in keys if k != key]
        series: dict[tuple[str, ...], list[Setting]] = {}
        for s in settings:
            series.setdefault(tuple(s.values[k] for k in others), []).append(s)
        fig = Figure(figsize=(5.5, 3.6), dpi=120, layout="constrained")
        ax = fig.subplots()
        for other, group in series.items():
            group = sorted(group, key=lambda s: xs.index(s.values[key]))
            pos = [float(s.values[key]) if numeric else xs.index(s.values[key]) for s in group]
            st = [s.stats(metric) for s in group]
            label = ", ".join(f"{k}={v}" for k, v in zip(others, other, strict=True)) or None
            ax.errorbar(pos, [m for m, _, _ in st], yerr=[0.0 if math.isnan(d) else d for _, d, _ in st],
                        marker="o", capsize=4, label=label)
            for p, (m, _, n) in zip(pos, st, strict=True):
                ax.annotate(f"n={n}", (p, m), textcoords="offset points", xytext=(6, 4), fontsize=7)
        if not numeric:
            ax.set_xticks(range(len(xs)), xs)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {key} (mean ± std over seeds)", fontsize=9)
        if len(series) > 1 and len(series) <= 12:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        path = out_dir / f"summary_{_safe(key)}.png"
        fig.savefig(path)
        written.append(path)
    if len(keys) == 2:
        written.append(_heatmap(settings, keys, metric, out_dir / f"summary_{_safe(keys[0])}_x_{_safe(keys[1])}.png"))
    return written


def _heatmap(settings: list[Setting], keys: list[str], metric: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    rows, _ = _axis(s.values[keys[0]] for s in settings)
    cols, _ = _axis(s.values[keys[1]] for s in settings)
    grid = [[math.nan] * len(cols) for _ in rows]  # (rows, cols) means
    fig = Figure(figsize=(1.6 + 1.3 * len(cols), 1.4 + 0.8 * len(rows)), dpi=120, layout="constrained")
    ax = fig.subplots()
    for s in settings:
        grid[rows.index(s.values[keys[0]])][cols.index(s.values[keys[1]])] = s.stats(metric)[0]
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for s in settings:
        i, j = rows.index(s.values[keys[0]]), cols.index(s.values[keys[1]])
        mean, std, n = s.stats(metric)
        dark = im.norm(mean) < 0.6  # white text on the dark end of viridis, black on the light end
        ax.text(j, i, _cell(mean, std, n).replace(" ± ", "\n± ") + f"\nn={n}", ha="center", va="center",
                fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    ax.set_title(f"{metric} (mean over seeds)", fontsize=9)
    fig.savefig(path)
    return path
