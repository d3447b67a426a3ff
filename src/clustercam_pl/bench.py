"""Benchmark of the ClusterCAM training step and of multi-scale CAM / pseudo-label throughput.

    python -m clustercam_pl.bench train-step [--size 448 --batch 2 --steps 3 --compare]
    python -m clustercam_pl.bench cam [--device cuda --precision bf16]

Random weights and random inputs (no data, no download), the `voc_vits` recipe's shapes (DeiT-S,
K=20, CAMs at 1.0/0.75/1.25 with flips, PAR 10 iterations; `--net` another preset). The timed step is
`ClusterCAMLitModule.training_step` itself in Lightning's order (zero_grad after the forward, then
backward, then the optimiser step), so the numbers answer "how long does one step take".
Progress goes to stderr; the last stdout line is one JSON object. `--compare` runs the fast and the
materialising attention path each in a fresh subprocess, so each process's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.lit_module import ClusterCAMLitModule
from clustercam_pl.losses import LossConfig
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.config import preset_names
from clustercam_pl.optim import OptimConfig, adamw

PHASES = ("cam", "par", "forward", "backward_step")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Seconds per phase of one step.

    On CUDA the marks are events recorded in stream order and read once at the end of the step, so
    the breakdown adds no host-device sync inside the step; on CPU they are plain clock reads.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [("start", self._now())]

    def mark(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def result(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            out[name] = out.get(name, 0.0) + (a.elapsed_time(b) / 1000 if self.cuda else b - a)
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mem_mb(device: torch.device) -> float:
    """Peak allocated device memory on CUDA; the process's peak resident set (a high-water mark) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def page_allocation() -> str:
    """How large CPU tensors get their pages, which moves CPU step times by up to a third.

    PyTorch asks for transparent huge pages when `THP_MEM_ALLOC_ENABLE=1`; the kernel's THP mode
    decides whether it gets them (experiments/performance.md).
    """
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        mode = "unknown"
    torch_thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")
    return f"THP_MEM_ALLOC_ENABLE={int(torch_thp)} kernel_thp={mode}"


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc; NaN elsewhere): the baseline the step's peak sits on."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


# ------------------------------------------------------------------------------------ the step
@dataclass
class Bench:
    """A `ClusterCAMLitModule` as `voc_vits` configures it, its optimiser, device and precision."""

    module: ClusterCAMLitModule
    opt: torch.optim.Optimizer
    device: torch.device
    precision: str = "fp32"

    @property
    def net(self) -> ClusterCAMNet:
        return self.module.net

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build(
    num_classes: int = 20,
    net: str = "vits",
    fused: bool = True,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    compile_net: bool = False,
    cam_cfg: CAMConfig | None = None,
    seed: int = 0,
    **net_overrides: Any,
) -> Bench:
    """The LightningModule with random weights (preset `net` of conf/net), as `voc_vits` trains it."""
    device = torch.device(device)
    torch.manual_seed(seed)
    cfg = NetConfig.preset(net, num_classes=num_classes, fused_attention=fused, **net_overrides)
    cam_cfg = cam_cfg or CAMConfig()  # conf/cam/default.yaml: the VOC reference settings
    module = ClusterCAMLitModule(ClusterCAMNet(cfg), cam_cfg, LossConfig(), OptimConfig(), seg_start_epoch=0)
    module = module.to(device).train()
    opt = adamw(module.net, module.optim_cfg, global_batch=9)  # conf/optim/reference.yaml, batch 9
    if compile_net:
        module.net.compile_parts(dynamic=False)
    return Bench(module, opt, device, precision)


def random_batch(
    batch: int, size: int, num_classes: int, device: torch.device, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """ImageNet-normalised-like images (B, 3, S, S) and multi-hot labels (B, K) with >= 1 class each."""
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.rand(batch, num_classes, generator=generator) < 2.0 / num_classes
    labels[torch.arange(batch), torch.randint(num_classes, (batch,), generator=generator)] = True
    return images.to(device), labels.to(device=device, dtype=torch.float32)


@contextlib.contextmanager
def phases(b: Bench, timer: PhaseTimer | None, losses: dict[str, Tensor] | None = None):
    """Mark the phases of the module's own step on `timer` from PyTorch module hooks, no step changes.

    "cam" when PAR starts (the multi-scale CAM passes are done), "par" when the network's training
    forward starts (the pseudo labels are done), "forward" when the loss is computed. The loss
    terms, detached, go into `losses`. Hooks are removed on exit.
    """
    m = b.module
    handles = []
    if timer is not None:
        handles += [m.par.register_forward_pre_hook(lambda *_: timer.mark("cam")),
                    m.net.register_forward_pre_hook(lambda *_: timer.mark("par")),
                    m.criterion.register_forward_hook(lambda *_: timer.mark("forward"))]
    if losses is not None:
        handles.append(m.criterion.register_forward_hook(
            lambda _m, _in, out: losses.update({k: v.detach() for k, v in out.items()})))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def train_step(
    b: Bench, image: Tensor, cls_label: Tensor, timer: PhaseTimer | None = None
) -> dict[str, Tensor]:
    """One training step after the seg warm-up: `ClusterCAMLitModule.training_step`, backward, AdamW.

    The order is Lightning's automatic optimisation (autocast around `training_step`, `zero_grad`
    after it, backward outside autocast, then `step`), so the previous step's gradients are alive
    during this step's forward, as in training. Returns the detached losses.
    """
    losses: dict[str, Tensor] = {}
    with phases(b, timer, losses), b.autocast():
        loss = b.module.training_step({"image": image, "cls_label": cls_label}, 0)
    b.opt.zero_grad(set_to_none=True)
    loss.backward()
    b.opt.step()
    if timer:
        timer.mark("backward_step")
    return losses


def cam_step(
    b: Bench, image: Tensor, cls_label: Tensor, timer: PhaseTimer | None = None
) -> dict[str, Tensor]:
    """What pseudo-label export does per batch: eval-mode multi-scale CAMs, then PAR pseudo labels."""
    b.module.eval()
    with phases(b, timer), b.autocast():
        pseudo = b.module.segmentation_targets(image, cls_label)[1]
    if timer:
        timer.mark("par")
    return {"pseudo": pseudo}


# --------------------------------------------------------------------------------- measuring
def measure(
    step: Callable[[Bench, Tensor, Tensor, PhaseTimer | None], dict[str, Tensor]],
    b: Bench,
    batches: Sequence[tuple[Tensor, Tensor]],
    warmup: int,
    profile_rows: int = 0,
) -> tuple[list[float], list[float], dict[str, list[float]], dict[str, Tensor]]:
    """Run `warmup` untimed then the rest timed: wall and CPU seconds per step, seconds per phase.

    With `profile_rows`, one more step runs under `torch.profiler` (not timed) and its operator table
    goes to stderr: where the time goes inside the phases.
    """
    timer = PhaseTimer(b.device)
    times: list[float] = []
    cpu_times: list[float] = []
    phases: dict[str, list[float]] = {}
    result: dict[str, Tensor] = {}
    for i, (image, label) in enumerate(batches):
        sync(b.device)
        t0, c0 = time.perf_counter(), time.process_time()
        timer.start()
        result = step(b, image, label, timer)
        sync(b.device)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        split = timer.result()
        tag = "warm-up" if i < warmup else "timed"
        parts = " ".join(f"{k}={v:.3f}" for k, v in split.items())
        log(f"{tag} step {i + 1}/{len(batches)}: {dt:.3f} s (cpu {cpu:.3f} s)  {parts}")
        if i >= warmup:
            times.append(dt)
            cpu_times.append(cpu)
            for k, v in split.items():
                phases.setdefault(k, []).append(v)
    if profile_rows:
        print_profile(step, b, *batches[-1], profile_rows)
    return times, cpu_times, phases, result


def print_profile(
    step: Callable[[Bench, Tensor, Tensor, PhaseTimer | None], dict[str, Tensor]],
    b: Bench,
    image: Tensor,
    label: Tensor,
    rows: int,
) -> None:
    """One step under the PyTorch profiler; the top operators by self time, to stderr."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
    with profile(activities=activities) as prof, record_function("step"):
        step(b, image, label, None)
        sync(b.device)
    key = "self_cuda_time_total" if b.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time; the JSON-ready result of one path in this process."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.compile and device.type == "cpu":
        warnings.warn(
            "--compile on CPU: inductor compiles C++ kernels for every shape, expect minutes", stacklevel=2
        )
    # The LightningModule logs through self.log, which without a Trainer only warns: not news here.
    warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")
    fused = args.attention == "fused"
    b = build(args.classes, args.net, fused, device, args.precision, args.compile)
    gen = torch.Generator().manual_seed(1)
    n = args.warmup + args.steps
    batches = [random_batch(args.batch, args.size, args.classes, device, gen) for _ in range(n)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = current_rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    step = train_step if args.mode == "train-step" else cam_step
    log(f"{args.mode} attention={args.attention} size={args.size} batch={args.batch} device={device} "
        f"precision={args.precision} compile={args.compile} threads={torch.get_num_threads()}")
    times, cpu, phases, result = measure(step, b, batches, args.warmup, args.profile)
    med = statistics.median(times)
    out: dict[str, Any] = {
        "mode": args.mode,
        "attention": args.attention,
        "step_s": med,
        "images_per_s": args.batch / med,
        "peak_mem_mb": peak_mem_mb(device),
        "base_mem_mb": base,
        "step_s_min": min(times),
        "step_s_all": times,
        "step_s_spread": (max(times) - min(times)) / med,
        # Process CPU seconds (all threads): steadier than wall time when other jobs share the cores.
        "step_cpu_s": statistics.median(cpu),
        "step_cpu_s_all": cpu,
        "breakdown_s": {k: statistics.median(v) for k, v in phases.items()},
        "breakdown_s_all": phases,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "precision": args.precision,
        "compile": args.compile,
        "classes": args.classes,
        "tiny": args.tiny,
        "net": args.net,
        "torch": torch.__version__,
        "page_allocation": page_allocation() if device.type == "cpu" else None,
    }
    if "total" in result:
        out["loss"] = {k: float(v) for k, v in result.items() if k != "pseudo"}
    return out


def child_argv(argv: Sequence[str], attention: str) -> list[str]:
    """This run's arguments for one path in a subprocess: without --compare, with --attention."""
    return [a for a in argv if a != "--compare"] + ["--attention", attention]


def run_subprocess(argv: Sequence[str], attention: str) -> dict[str, Any]:
    """One path in a fresh interpreter, so its peak resident memory is its own; its last stdout line."""
    cmd = [sys.executable, "-m", "clustercam_pl.bench", *child_argv(argv, attention)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr streams through
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One path's results from several processes: medians over all their timed steps, the highest peak."""
    out = dict(rounds[0])
    times = [t for r in rounds for t in r["step_s_all"]]
    cpu = [t for r in rounds for t in r["step_cpu_s_all"]]
    med = statistics.median(times)
    out |= {
        "step_s": med,
        "step_s_min": min(times),
        "images_per_s": out["batch"] / med,
        "step_s_all": times,
        "step_s_spread": (max(times) - min(times)) / med,
        "step_cpu_s": statistics.median(cpu),
        "step_cpu_s_all": cpu,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rounds),
        "base_mem_mb": max(r["base_mem_mb"] for r in rounds),
        "breakdown_s": {
            k: statistics.median([t for r in rounds for t in r["breakdown_s_all"][k]])
            for k in out["breakdown_s"]
        },
        "rounds": len(rounds),
    }
    return out


def compare(argv: Sequence[str], rounds: int = 1) -> dict[str, Any]:
    """Fast and materialising path, each in its own process; ratios are fast / reference.

    With several rounds the two paths alternate (fast, reference, fast, ...), so that load from
    other jobs on a shared machine falls on both alike; each path's steps are pooled.
    """
    runs: dict[str, list[dict[str, Any]]] = {"fused": [], "materialize": []}
    for _ in range(rounds):
        for attention, results in runs.items():
            results.append(run_subprocess(argv, attention))
            print(json.dumps(results[-1]), flush=True)
    fast, ref = merge_rounds(runs["fused"]), merge_rounds(runs["materialize"])
    keys = ("mode", "step_s", "step_s_min", "images_per_s", "peak_mem_mb", "size", "batch", "steps", "rounds",
            "threads", "device", "precision", "compile", "classes", "tiny", "net", "page_allocation")
    summary = {k: fast[k] for k in keys}
    summary |= {
        "time_ratio": fast["step_s"] / ref["step_s"],
        "time_ratio_min": fast["step_s_min"] / ref["step_s_min"],  # least disturbed steps of each
        "cpu_time_ratio": fast["step_cpu_s"] / ref["step_cpu_s"],
        "mem_ratio": fast["peak_mem_mb"] / ref["peak_mem_mb"],
        # The step's own memory above the process baseline (model, optimiser, libraries).
        "step_mem_ratio": (fast["peak_mem_mb"] - fast["base_mem_mb"])
        / max(ref["peak_mem_mb"] - ref["base_mem_mb"], 1e-9),
        "fast": fast,
        "reference": ref,
    }
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clustercam_pl.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["train-step", "cam"])
    p.add_argument("--size", type=int, default=None, help="square crop side (448; 64 with --tiny)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone, CAM head and decoder")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--net", default="vits", choices=preset_names(), help="network preset (conf/net)")
    p.add_argument("--tiny", action="store_true", help="--net tiny at 64 px: for tests")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="profile one extra step; print its top ROWS operators to stderr")
    p.add_argument("--compare", action="store_true", help="also the materialising path; each in a subprocess")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --compare: alternate the two paths' processes this many times")
    p.add_argument("--attention", choices=["fused", "materialize"], default="fused", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.net = "tiny"
    if args.size is None:
        args.size = 64 if args.tiny else 448
    if min(args.batch, args.steps, args.threads, args.classes, args.rounds) < 1 or args.warmup < 0:
        p.error("--batch, --steps, --threads, --classes, --rounds must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the result as the last stdout line and returns it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    result = compare(argv, args.rounds) if args.compare else run(args)
    keys = ("step_s", "images_per_s", "peak_mem_mb")
    bad = [k for k in keys if not math.isfinite(result[k]) or result[k] <= 0]
    if bad:
        raise RuntimeError(f"benchmark produced invalid {bad}: {result}")
    print(json.dumps(result), flush=True)
    return result


def cli() -> int:
    """`clustercam-bench`: a console script exits with what its function returns, so 0, not the dict."""
    main()
    return 0


if __name__ == "__main__":
    main()
