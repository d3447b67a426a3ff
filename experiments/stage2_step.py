"""Time one stage-two training step (StageTwoLitModule.training_step + backward + AdamW step) on CPU.

    PYTHONPATH=src python experiments/stage2_step.py --threads 1 --size 448 --batch 2 --steps 2

Random weights and random images / labels (K=20, VOC's); the numbers are the cost of the step, not of
any trained network. Results: experiments/performance.md, "Stage two".
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from clustercam_pl.cam.config import CAMConfig
from clustercam_pl.lit_module import StageTwoLitModule
from clustercam_pl.losses import LossConfig
from clustercam_pl.models import ClusterCAMNet, NetConfig
from clustercam_pl.models.smp_net import SmpConfig, SmpSegNet
from clustercam_pl.optim import OptimConfig, adamw

K = 20


def networks() -> dict[str, torch.nn.Module]:
    return {
        "clustercam vits (DeiT-S)": ClusterCAMNet(NetConfig.preset("vits", num_classes=K)),
        "smp DeepLabV3+ tu-resnet50": SmpSegNet(SmpConfig(K, encoder_name="tu-resnet50")),
        "smp DeepLabV3+ tu-resnet101": SmpSegNet(SmpConfig(K, encoder_name="tu-resnet101")),
    }


def time_step(net: torch.nn.Module, size: int, batch: int, steps: int) -> tuple[list[float], int]:
    module = StageTwoLitModule(net, CAMConfig(), LossConfig(), OptimConfig()).train()
    opt = adamw(module.net, module.optim_cfg, batch)
    g = torch.Generator().manual_seed(0)
    data = {"image": torch.randn(batch, 3, size, size, generator=g),  # (B, 3, S, S)
            "mask": torch.randint(0, K + 1, (batch, size, size), generator=g)}  # (B, S, S)
    times = []
    for _ in range(steps + 1):  # the first is warm-up
        t = time.perf_counter()
        loss = module.training_step(data, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in module.net.parameters())
    return times[1:], params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")
    print("| network | params M | step s (median; all timed) | images/s |\n|---|---|---|---|")
    for name, net in networks().items():
        times, params = time_step(net, args.size, args.batch, args.steps)
        med = statistics.median(times)
        print(f"| {name} | {params / 1e6:.1f} | {med:.2f} ({', '.join(f'{t:.2f}' for t in times)}) | "
              f"{args.batch / med:.3f} |", flush=True)


if __name__ == "__main__":
    main()
