"""Post-processing steps in worker processes, alongside the network.

A step such as the dense CRF is CPU work of about a second per VOC image; `StepPool` runs
`inference.steps.run_steps` on `Sample`s in worker processes while the caller keeps running the
network on the next batch, so it does not serialise a GPU run. Workers receive numpy arrays and
the steps' frozen settings only (never torch tensors or CUDA state).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from clustercam_pl.inference.steps import Sample, Step, run_steps

K = TypeVar("K")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(processes_per_machine: int = 1) -> int:
    """The available cores shared among the processes of one machine (at least one worker each)."""
    return max(1, available_cores() // max(int(processes_per_machine), 1))


def _run_many(steps: Sequence[Step], samples: list[Sample]) -> list[np.ndarray]:
    """`run_steps` of several samples: one worker round trip for a chunk of small images."""
    return [run_steps(steps, s) for s in samples]


class StepPool:
    """`steps` in `workers` worker processes (0: in the calling process), results in submission order.

    `imap(jobs)` pulls (key, Sample) items lazily from an iterator, so the network's forward pass for
    the next batch runs while workers post-process the previous ones; at most `max_pending` samples
    are in flight (bounded memory). Workers start on first use or `start()`. Both paths compute
    `run_steps`, so the labels do not depend on `workers`.
    """

    def __init__(self, steps: Sequence[Step], workers: int, max_pending: int | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(
                f"crf_workers={workers!r} must be a whole number >= 0 (0: post-processing in the main "
                "process; crf_workers=null: one per available core)"
            )
        self.steps = tuple(steps)
        self.workers = workers
        self.max_pending = max_pending if max_pending is not None else max(2 * workers, 1)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> StepPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork on Linux: a worker starts at once (spawn and forkserver re-import the command's
            # main module, e.g. clustercam_pl.eval with torch and Hydra, ~5 s per worker). Workers
            # run numpy and the steps' libraries only, never torch, CUDA or OpenMP, so the threads and
            # CUDA state of the forked process are never touched (as in DataLoader workers).
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._executor

    def start(self) -> StepPool:
        """Start the workers now (e.g. while checkpoints load) instead of at the first job."""
        if self.workers and self.steps:
            pool = self._pool()
            for _ in range(self.workers):
                pool.submit(os.getpid)
        return self

    def _submit(self, samples: list[Sample]) -> Future[list[np.ndarray]]:
        if self.workers == 0:
            done: Future[list[np.ndarray]] = Future()
            try:
                done.set_result(_run_many(self.steps, samples))
            except Exception as e:  # raised by result(), as a worker's would be
                done.set_exception(e)
            return done
        return self._pool().submit(_run_many, self.steps, samples)

    def submit(self, sample: Sample) -> Future[np.ndarray]:
        """The label map (H, W) uint8 of one sample, as a future (already done when `workers` is 0)."""
        out: Future[np.ndarray] = Future()
        inner = self._submit([sample])

        def _done(f: Future[list[np.ndarray]]) -> None:
            e = f.exception()
            out.set_exception(e) if e is not None else out.set_result(f.result()[0])

        inner.add_done_callback(_done)
        return out

    def imap(self, jobs: Iterable[tuple[K, Sample]], chunk: int = 1) -> Iterator[tuple[K, np.ndarray]]:
        """(key, label map (H, W) uint8) for every (key, sample) of `jobs`, in the order of `jobs`.

        `chunk` consecutive jobs travel to a worker together (fewer round trips for small images).
        `max_pending` counts images: (2 x workers + 1) x chunk keeps every worker busy while the
        caller prepares the next chunk (what evaluation passes).
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be >= 1")
        pending: deque[tuple[list[K], Future[list[np.ndarray]]]] = deque()
        in_flight = 0

        def ready() -> Iterator[tuple[K, np.ndarray]]:
            nonlocal in_flight
            while pending and (in_flight >= self.max_pending or pending[0][1].done()):
                keys, fut = pending.popleft()
                in_flight -= len(keys)
                yield from zip(keys, fut.result(), strict=True)

        keys: list[K] = []
        samples: list[Sample] = []
        for key, sample in jobs:
            keys.append(key)
            samples.append(sample)
            if len(keys) == chunk:
                pending.append((keys, self._submit(samples)))
                in_flight += len(keys)
                keys, samples = [], []
                yield from ready()
        if keys:
            pending.append((keys, self._submit(samples)))
        while pending:
            keys, fut = pending.popleft()
            yield from zip(keys, fut.result(), strict=True)
