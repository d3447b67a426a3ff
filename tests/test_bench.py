"""The benchmark entry point: it runs, reports sane numbers, and times the real training step.

The equality tests pin what the benchmark's ratios mean: the fast (fused) and the materialising
attention path do the same training step (same pseudo labels, losses and gradients), and that step
is the one `ClusterCAMLitModule.training_step` takes.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from clustercam_pl import bench
from clustercam_pl.cam.config import CAMConfig

# One torch thread: OpenMP threads that share their cores with another process (a second pytest worker,
# any other job) wait on each other at every operation, and a tiny step takes seconds instead of 0.1 s.
FAST = ["--tiny", "--steps", "2", "--warmup", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """`bench.main` sets torch's thread count for the process; put it back for the other tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def assert_positive_finite(result: dict, keys=("step_s", "images_per_s", "peak_mem_mb")) -> None:
    for k in keys:
        assert isinstance(result[k], float) and math.isfinite(result[k]) and result[k] > 0, (k, result[k])


@pytest.mark.parametrize("mode, phases", [("train-step", bench.PHASES), ("cam", ("cam", "par"))])
def test_bench_reports_json(mode, phases, capsys):
    returned = bench.main([mode, *FAST])
    result = last_json(capsys)
    assert result == json.loads(json.dumps(returned))
    assert_positive_finite(result)
    assert (result["mode"], result["size"], result["batch"], result["tiny"]) == (mode, 64, 2, True)
    assert (result["precision"], result["device"], result["attention"]) == ("fp32", "cpu", "fused")
    assert result["page_allocation"] == bench.page_allocation()
    assert len(result["step_s_all"]) == 2
    assert result["step_s"] == pytest.approx(statistics.median(result["step_s_all"]))
    assert set(result["breakdown_s"]) == set(phases)
    assert all(v >= 0 and math.isfinite(v) for v in result["breakdown_s"].values())
    if mode == "train-step":
        assert all(math.isfinite(v) for v in result["loss"].values()) and "seg" in result["loss"]


def test_page_allocation_names_the_torch_and_kernel_settings(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert bench.page_allocation().startswith("THP_MEM_ALLOC_ENABLE=1 kernel_thp=")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    setting = bench.page_allocation()
    assert setting.startswith("THP_MEM_ALLOC_ENABLE=0 kernel_thp=") and setting.split("=")[-1]


def test_bench_bf16_runs_and_matches_fp32(capsys):
    bench.main(["train-step", "--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--precision", "bf16"])
    result = last_json(capsys)
    assert_positive_finite(result)
    assert result["precision"] == "bf16" and all(math.isfinite(v) for v in result["loss"].values())
    # The classification losses under autocast stay close to fp32 on the same weights and batch.
    gen = torch.Generator().manual_seed(5)
    image, label = bench.random_batch(2, 64, 5, torch.device("cpu"), gen)
    nets = [bench.build(num_classes=5, net="tiny", precision=p) for p in ("fp32", "bf16")]
    losses = [bench.train_step(b, image, label) for b in nets]
    for k in ("cls", "patch"):
        torch.testing.assert_close(losses[1][k].float(), losses[0][k], rtol=2e-2, atol=2e-2, msg=k)


@pytest.mark.slow  # two interpreter start-ups (torch + Lightning each)
def test_bench_compare_runs_each_path_in_its_own_process(capsys):
    bench.main(["cam", "--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--compare"])  # cam: the cheaper mode
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    summary = lines[-1]
    assert [r["attention"] for r in lines[:-1]] == ["fused", "materialize"]
    assert_positive_finite(summary, ("step_s", "images_per_s", "peak_mem_mb", "time_ratio", "mem_ratio"))
    assert summary["fast"]["attention"] == "fused" and summary["reference"]["attention"] == "materialize"
    assert summary["time_ratio"] == pytest.approx(summary["fast"]["step_s"] / summary["reference"]["step_s"])


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["train-step", "--steps", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["train-step", "--precision", "fp16"])


def _tiny_pair(cam_cfg: CAMConfig) -> tuple[bench.Bench, bench.Bench]:
    fast = bench.build(num_classes=5, net="tiny", fused=True, cam_cfg=cam_cfg, alpha_init=0.3)
    slow = bench.build(num_classes=5, net="tiny", fused=False, cam_cfg=cam_cfg, alpha_init=0.3)
    slow.net.load_state_dict(fast.net.state_dict())
    for b in (fast, slow):
        b.module.double()
    return fast, slow


def test_fast_and_materialising_paths_take_the_same_training_step():
    """Pseudo labels, the three losses and every gradient agree (float64, eval-mode CAMs, no drop-path)."""
    fast, slow = _tiny_pair(CAMConfig(train_mode=False))
    gen = torch.Generator().manual_seed(3)
    image, label = bench.random_batch(2, 64, 5, torch.device("cpu"), gen)
    image = image.double()
    results, grads, pseudo = [], [], []
    for b in (fast, slow):
        pseudo.append(b.module.segmentation_targets(image, label)[1])  # what the step below trains on
        results.append(bench.train_step(b, image, label))
        grads.append({n: p.grad.clone() for n, p in b.net.named_parameters()})
    rf, rs = results
    assert torch.equal(pseudo[0], pseudo[1])
    assert (pseudo[0] != 255).any()
    for k in ("cls", "patch", "seg", "total"):
        torch.testing.assert_close(rf[k], rs[k], rtol=1e-10, atol=1e-12, msg=k)
    gf, gs = grads
    assert gf.keys() == gs.keys()
    for n in gf:
        torch.testing.assert_close(gf[n], gs[n], rtol=1e-8, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")
    # The optimiser step kept the two networks equal too.
    for (n, pf), ps in zip(fast.net.named_parameters(), slow.net.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, rtol=1e-8, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")


def test_bench_times_the_lightning_modules_own_training_step():
    """The timed step is `ClusterCAMLitModule.training_step` (called once), whose phases the timer sees in order."""
    b = bench.build(num_classes=5, net="tiny", cam_cfg=CAMConfig(train_mode=False))
    calls, returned = [], []
    step = b.module.training_step
    b.module.training_step = lambda batch, idx: calls.append(idx) or returned.append(step(batch, idx)) or returned[-1]
    gen = torch.Generator().manual_seed(4)
    image, label = bench.random_batch(2, 64, 5, torch.device("cpu"), gen)
    timer = bench.PhaseTimer(b.device)
    timer.start()
    result = bench.train_step(b, image, label, timer)
    assert calls == [0]
    assert [name for name, _ in timer.marks[1:]] == list(bench.PHASES)
    assert set(result) == {"cls", "patch", "seg", "total"} and torch.equal(result["total"], returned[0].detach())
    # The timer's module hooks are gone after the step.
    assert not (b.module.par._forward_pre_hooks or b.net._forward_pre_hooks or b.module.criterion._forward_hooks)


def test_bench_console_script_exits_zero(monkeypatch, capsys):
    """A console script exits with what its function returns; `bench.main` returns a dict (exit status 1)."""
    monkeypatch.setattr("sys.argv", ["clustercam-bench", "cam", "--tiny", "--steps", "1", "--warmup", "0", "--threads", "1"])
    assert bench.cli() == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step_s"] > 0
