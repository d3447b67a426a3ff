"""Running a command (evaluation, export, prediction) on N processes the way training does.

Training gets its processes from Lightning's Trainer (`trainer.devices x trainer.num_nodes`, DDP on
GPUs, gloo on the CPU, SLURM tasks through the submitit launcher). Commands that only run the
network forward use Lightning Fabric with the same settings, so they launch and join processes in
the same ways (the `ddp` script launcher re-runs the command line once per extra device, Hydra-aware;
`ddp_spawn` spawns; under SLURM or torchrun the processes exist already) without a LightningModule.

A command written against `Ranks` works on one process and on many:
* `ranks.shard(items)`: this process's share, every item in exactly one share, no padding (unlike
  the DistributedSampler, which repeats items to make the shares equal);
* `ranks.sum(tensor)` / `ranks.max(value)` / `ranks.gather(obj)`: results reduced across processes
  (a confusion matrix is summed, never a mean of per-process mIoUs);
* `ranks.is_main`: the one process that prints and writes shared files; `ranks.barrier()` orders
  writes (e.g. every process writes its PNGs, then the main process packs them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from clustercam_pl.utils.device import resolve_device

T = TypeVar("T")

# Strategies that run a full copy of the network in every process (DDP's launchers). The
# find_unused_parameters variants of training mean nothing without a backward pass.
LAUNCH_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
_UNUSED_SUFFIXES = ("_find_unused_parameters_true", "_find_unused_parameters_false")


def forward_strategy(strategy: str) -> str:
    """The launcher part of a training strategy name (`ddp_find_unused_parameters_true` -> `ddp`)."""
    name = str(strategy)
    for suffix in _UNUSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name not in LAUNCH_STRATEGIES:
        raise ValueError(
            f"trainer.strategy={strategy} is not supported here: every process runs a full copy of the "
            f"network; use one of {list(LAUNCH_STRATEGIES)} (e.g. trainer=ddp or trainer=ddp_spawn)"
        )
    return name


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one command (the single process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine (CPU workers are shared among them)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's items: every `world_size`-th from `rank` (balanced; each item exactly once)."""
        return list(items)[self.rank :: self.world_size]

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the processes (integer counts stay exact); a copy on `tensor.device`."""
        if not self.distributed:
            return tensor.clone()
        t = tensor.detach().to(self._comm_device()).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def max(self, value: float) -> float:
        """The largest `value` of all processes (wall time of a sharded loop: its slowest share)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_main(self, compute: Callable[[], T]) -> T:
        """`compute()` run by the main process only, its result on every process: for work with one answer
        for all (a checkpoint's sha256: one read of the file instead of one per process)."""
        if not self.distributed:
            return compute()
        return self.gather(compute() if self.is_main else None)[0]


@dataclass(frozen=True)
class Launch:
    """How many processes a command runs on, and how they start: the `trainer` config group's
    `accelerator`, `devices`, `num_nodes` and `strategy` (their meaning is Lightning's), plus the
    `device` a single process uses."""

    accelerator: str = "auto"
    devices: int | str | tuple[int, ...] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.num_nodes, int) or isinstance(self.num_nodes, bool) or self.num_nodes < 1:
            raise ValueError(f"trainer.num_nodes must be a positive integer, got {self.num_nodes!r}")
        devices = self.devices
        if isinstance(devices, bool) or (isinstance(devices, int) and devices < 1 and devices != -1):
            raise ValueError(f"trainer.devices must be a positive integer, -1, 'auto' or a list, got {devices!r}")
        forward_strategy(self.strategy)

    @property
    def single(self) -> bool:
        """One process on one device: nothing to launch (`device` says which)."""
        one = self.devices == 1 or str(self.devices) == "1"
        return one and self.num_nodes == 1

    def accelerator_for_processes(self) -> str:
        """`accelerator`, or (when it is auto) the kind `device` names; a single-device `device` refused."""
        dev = str(self.device)
        if dev == "auto":
            return self.accelerator
        if ":" in dev:
            raise ValueError(
                f"device={dev} names one device, but trainer.devices={self.devices} x trainer.num_nodes="
                f"{self.num_nodes} asks for several processes: pick the GPUs with trainer.devices (e.g. "
                "trainer.devices=[0,1]) and device=auto"
            )
        kind = {"cpu": "cpu", "cuda": "gpu"}.get(dev)
        if kind is None:
            raise ValueError(f"device={dev} is not cpu, cuda or auto")
        if self.accelerator not in ("auto", kind) and not (kind == "gpu" and self.accelerator == "cuda"):
            raise ValueError(
                f"device={dev} contradicts trainer.accelerator={self.accelerator}: set one of them "
                f"(e.g. device=auto trainer.accelerator={self.accelerator})"
            )
        return kind


def check_no_external_processes() -> None:
    """A one-process setting started as several processes (SLURM tasks, torchrun) would run the whole
    command in each: refuse, naming the settings that match."""
    slurm = os.environ.get("SLURM_NTASKS", "1")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if slurm.isdigit() and int(slurm) > 1 and not interactive:
        raise ValueError(
            f"SLURM started {slurm} tasks but trainer.devices x trainer.num_nodes is 1: every task would "
            "do the whole job. Set trainer.devices=<tasks per node> trainer.num_nodes=<nodes> (e.g. "
            "trainer=ddp), or hydra.launcher.tasks_per_node=1"
        )
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ValueError(
            f"WORLD_SIZE={world} (torchrun?) but trainer.devices x trainer.num_nodes is 1: set "
            f"trainer.devices to the processes per node (e.g. trainer=ddp trainer.devices={world})"
        )


def launch(settings: Launch, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(ranks, *args, **kwargs)` on every process of `settings`; return the main process's result.

    One process: called here with `Ranks(device=resolve_device(settings.device))`. Several: Lightning
    Fabric launches them (`fn` and its arguments must pickle for `ddp_spawn`), sets up the process
    group (NCCL on GPUs, gloo on the CPU), and every process calls `fn`; all of them return after
    a final barrier, so the main process returns when every output is written. With the `ddp`
    script launcher each process returns its own result (the same, where `fn` reduces what it reports).
    """
    if settings.single:
        check_no_external_processes()
        return fn(Ranks(device=resolve_device(settings.device)), *args, **kwargs)
    from lightning.fabric import Fabric

    devices = list(settings.devices) if isinstance(settings.devices, tuple | list) else settings.devices
    fabric = Fabric(accelerator=settings.accelerator_for_processes(), devices=devices,
                    num_nodes=settings.num_nodes, strategy=forward_strategy(settings.strategy))
    return fabric.launch(_run_rank, fn, *args, **kwargs)


def _run_rank(fabric: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    ranks = Ranks(rank=fabric.global_rank, world_size=fabric.world_size,
                  local_world_size=int(getattr(fabric.strategy, "num_processes", 1)), device=fabric.device)
    try:
        result = fn(ranks, *args, **kwargs)
        ranks.barrier()
    except BaseException as e:
        raise _stop_all(ranks, e) from e
    return result


_PEER_GONE = ("closed by peer", "Connection reset", "Broken pipe", "Socket Timeout")


def _stop_all(ranks: Ranks, error: BaseException) -> BaseException:
    """After `error` in this process: say so on stderr, and close this process's connections so that
    the others, waiting in a collective, fail now instead of at the collective timeout (30 min).

    Returns the error to raise: `error` itself, or, when it only says that another process went
    away, a RuntimeError that points to that process's message.
    """
    where = f"process {ranks.rank} of {ranks.world_size}"
    text = f"{type(error).__name__}: {error}"
    peer_gone = isinstance(error, RuntimeError) and any(s in str(error) for s in _PEER_GONE)
    if peer_gone:
        out: BaseException = RuntimeError(
            f"{where} stopped: another process of this command failed (see its 'failed, stopping the others' "
            f"line; here: {text})"
        )
    else:
        out = error
        print(f"{where} failed, stopping the others: {text}", file=sys.stderr, flush=True)
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        dist.destroy_process_group()  # the others' reads on our connections end at once
    return out
