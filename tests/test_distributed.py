"""Running forward-only commands on N processes: sharding without padding, launch settings and
their errors, a failing process, and the post-processing worker pool against the steps run in the
calling process. The
multi-process commands themselves are tested in test_eval.py and test_export_labels.py."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from clustercam_pl.data.synthetic import SyntheticConfig, SyntheticWSSS
from clustercam_pl.inference.crf import crf_labels, dense_crf, to_uint8_image
from clustercam_pl.inference.pool import StepPool
from clustercam_pl.inference.steps import Sample
from clustercam_pl.inference.steps.crf import CRF
from clustercam_pl.utils.distributed import Launch, Ranks, forward_strategy, launch


@pytest.mark.parametrize("n,world", [(5, 2), (7, 3), (2, 4), (0, 2), (8, 1)])
def test_shards_cover_every_item_exactly_once(n, world):
    shards = [Ranks(rank=r, world_size=world).shard(range(n)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n)) and len(flat) == n  # no padding, no repeats
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_one_process_reductions_are_identities():
    ranks = Ranks()
    t = torch.arange(6).view(2, 3)
    assert ranks.sum(t).tolist() == t.tolist() and ranks.sum(t) is not t
    assert ranks.max(2.5) == 2.5 and ranks.gather({"a": 1}) == [{"a": 1}] and ranks.is_main
    assert launch(Launch(device="cpu"), lambda r, x: (r.world_size, str(r.device), x), 7) == (1, "cpu", 7)


def _computed_by_main(ranks: Ranks) -> list[tuple[str, list[int]]]:
    computed: list[int] = []
    value = ranks.from_main(lambda: computed.append(ranks.rank) or f"rank {ranks.rank}'s")
    return ranks.gather((value, computed))


def test_work_with_one_answer_is_done_by_the_main_process_only():
    """A checkpoint's sha256 in a multi-process command: read once, by the main process (2 forked CPU processes)."""
    assert Ranks().from_main(lambda: 5) == 5
    got = launch(Launch(accelerator="cpu", devices=2, strategy="ddp_fork", device="cpu"), _computed_by_main)
    assert got == [("rank 0's", [0]), ("rank 0's", [])]


def test_launch_settings():
    assert Launch().single and Launch(devices="1").single
    assert not Launch(devices=2).single and not Launch(num_nodes=2).single
    assert forward_strategy("ddp_find_unused_parameters_true") == "ddp"
    assert forward_strategy("ddp_spawn_find_unused_parameters_true") == "ddp_spawn"
    assert Launch(devices=2, device="cpu").accelerator_for_processes() == "cpu"
    assert Launch(devices=2, device="cuda").accelerator_for_processes() == "gpu"
    assert Launch(devices=2, accelerator="gpu").accelerator_for_processes() == "gpu"


def test_launch_settings_errors():
    with pytest.raises(ValueError, match=r"^trainer\.strategy=fsdp is not supported here: every process runs a "
                       r"full copy of the network; use one of \['auto', 'ddp', 'ddp_spawn', 'ddp_fork', "
                       r"'ddp_notebook'\] \(e\.g\. trainer=ddp or trainer=ddp_spawn\)$"):
        Launch(devices=2, strategy="fsdp")
    with pytest.raises(ValueError, match=r"^device=cuda:1 names one device, but trainer\.devices=2 x "
                       r"trainer\.num_nodes=1 asks for several processes: pick the GPUs with trainer\.devices "
                       r"\(e\.g\. trainer\.devices=\[0,1\]\) and device=auto$"):
        Launch(devices=2, device="cuda:1").accelerator_for_processes()
    with pytest.raises(ValueError, match=r"^device=cpu contradicts trainer\.accelerator=gpu: set one of them "
                       r"\(e\.g\. device=auto trainer\.accelerator=gpu\)$"):
        Launch(devices=2, device="cpu", accelerator="gpu").accelerator_for_processes()
    with pytest.raises(ValueError, match=r"^trainer\.num_nodes must be a positive integer, got 0$"):
        Launch(num_nodes=0)
    with pytest.raises(ValueError, match=r"^trainer\.devices must be a positive integer, -1, 'auto' or a list, got 0$"):
        Launch(devices=0)


def test_crf_workers_must_be_a_whole_number():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"^crf_workers=.* must be a whole number >= 0 \(0: post-processing in "
                           r"the main process; crf_workers=null: one per available core\)$"):
            StepPool((CRF(),), bad)


def _jobs(n: int) -> list[tuple[int, Sample]]:
    """Synthetic images with random (softmaxed) class probabilities of their own sizes."""
    cfg = SyntheticConfig(num_classes=4, image_size=48)
    ds = SyntheticWSSS("val", cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        rgb = to_uint8_image(ds[i]["image"])[: 40 + i]  # (h, 48, 3): different heights
        probs = torch.randn(5, rgb.shape[0], rgb.shape[1], generator=g).mul(2).softmax(0).numpy()
        out.append((i, Sample(rgb, probs, key=str(i))))
    return out


@pytest.mark.slow  # starts two worker processes
def test_crf_pool_with_two_workers_equals_inline():
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    jobs = _jobs(6)
    params = CRF(n_iter=5)
    with StepPool((params,), 0) as inline:
        a = list(inline.imap(iter(jobs)))
    with StepPool((params,), 2, max_pending=3) as pool:
        b = list(pool.imap(iter(jobs)))
        c = list(pool.imap(iter(jobs), chunk=4))  # chunks of 4 and 2 images per round trip
    assert [k for k, _ in a] == [k for k, _ in b] == [k for k, _ in c] == list(range(6))  # in order
    for (_, la), (_, lb), (_, lc), (_, sample) in zip(a, b, c, jobs, strict=True):
        assert la.shape == sample.image.shape[:2]
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(la, lc)
        np.testing.assert_array_equal(la, dense_crf(sample.image, sample.probs, params).argmax(0))
    assert not (a[0][1] == jobs[0][1].probs.argmax(0)).all()  # the CRF changed something: the test can fail


def test_inline_pool_raises_what_the_crf_raises():
    pytest.importorskip("pydensecrf.densecrf", reason="optional dependency pydensecrf2 is not installed")
    pool = StepPool((CRF(),), 0)
    fut = pool.submit(Sample(np.zeros((4, 4, 3), np.uint8), np.full((2, 5, 4), 0.5, np.float32)))
    with pytest.raises(ValueError, match=r"probs must be \(C, H, W\) matching the image's \(H, W\) = \(4, 4\)"):
        fut.result()
    assert crf_labels(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32)).shape == (4, 4)


def test_one_process_setting_under_several_external_processes_is_refused(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "eval")
    with pytest.raises(ValueError, match=r"^SLURM started 4 tasks but trainer\.devices x trainer\.num_nodes is 1: "
                       r"every task would do the whole job\. Set trainer\.devices=<tasks per node> "
                       r"trainer\.num_nodes=<nodes> \(e\.g\. trainer=ddp\), or hydra\.launcher\.tasks_per_node=1$"):
        launch(Launch(device="cpu"), lambda r: r)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation runs one process
    assert launch(Launch(device="cpu"), lambda r: r.world_size) == 1
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"^WORLD_SIZE=2 \(torchrun\?\) but .* \(e\.g\. trainer=ddp trainer\.devices=2\)$"):
        launch(Launch(device="cpu"), lambda r: r)


def _rank_1_fails(ranks: Ranks) -> int:
    if ranks.rank == 1:
        raise ValueError("rank 1 cannot read its share")
    ranks.barrier()  # rank 0 waits for rank 1 in a collective (gloo's timeout: 30 min)
    return ranks.rank


def test_a_failing_process_ends_the_others_at_once_with_its_cause(capfd):
    """Issue 24: an exception on one process of a multi-process command ends every process promptly,
    and the output names the cause, never a wait for the collective timeout (2 forked CPU processes)."""
    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"rank 1 cannot read its share|another process of this command failed"):
        launch(Launch(accelerator="cpu", devices=2, strategy="ddp_fork", device="cpu"), _rank_1_fails)
    assert time.monotonic() - t0 < 120  # start-up and teardown; the collective timeout is 1800 s
    err = capfd.readouterr().err
    assert "process 1 of 2 failed, stopping the others: ValueError: rank 1 cannot read its share" in err


def test_data_loader_workers_fit_the_machine(monkeypatch):
    """Issue 24: data.num_workers (8 in conf/data/voc.yaml) is capped at the cores this machine's
    processes share unless num_workers is given, which is used as it is."""
    from omegaconf import OmegaConf

    from clustercam_pl.entry import loader_workers

    cfg = OmegaConf.create({"num_workers": None, "data": {"num_workers": 8}})
    monkeypatch.setattr("clustercam_pl.entry.available_cores", lambda: 2)
    assert loader_workers(cfg, processes_per_machine=1) == 2
    assert loader_workers(cfg, processes_per_machine=4) == 1
    monkeypatch.setattr("clustercam_pl.entry.available_cores", lambda: 64)
    assert loader_workers(cfg, processes_per_machine=2) == 8
    cfg.data.num_workers = 0
    assert loader_workers(cfg, processes_per_machine=1) == 0
    cfg.num_workers = 6
    monkeypatch.setattr("clustercam_pl.entry.available_cores", lambda: 2)
    assert loader_workers(cfg, processes_per_machine=1) == 6
