"""Multi-process training with real torchrun subprocesses on the CPU (gloo): every rank holds the
same weights after every step, equal to one process on the same global batch; runs resume across
process counts; a failing rank ends the whole job, the rank left behind says it lost it, and one
killed by a signal leaves its Python stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_here, write_images, write_inception_stand_in

from cyclegan.checkpoint import list_run_checkpoints, load_run_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")

WRAPPER = '''
import os, sys, torch
import cyclegan.train as T
from cyclegan.distributed import unwrap
real, count = T.run_step, [0]
rank, dump, fail_at = int(os.environ.get("RANK", "0")), os.environ.get("DUMP_DIR"), int(os.environ.get("FAIL_AT", "0"))
abort_at, exit_at = int(os.environ.get("ABORT_AT", "0")), int(os.environ.get("EXIT_AT", "0"))

def step(config, nets, *args, **kwargs):
    losses = real(config, nets, *args, **kwargs)
    count[0] += 1
    if dump:
        torch.save({n: torch.cat([p.detach().flatten() for p in unwrap(m).parameters()]) for n, m in nets.items()},
                   f"{dump}/rank{rank}_step{count[0]}.pt")
    if fail_at and rank == 1 and count[0] == fail_at:
        raise RuntimeError("rank 1 fails on purpose")
    if abort_at and rank == 1 and count[0] == abort_at:
        os.abort()  # as a C++ library's std::terminate ends a process
    if exit_at and rank == 1 and count[0] == exit_at:
        os._exit(0)  # gone without a word (and torchrun, seeing status 0, leaves rank 0 running)
    return losses

T.run_step = step
sys.exit(T.main(sys.argv[1:]))
'''

pytestmark = pytest.mark.long  # each test launches torchrun, some of them several times

FLAGS = ("--img_height", "32", "--img_width", "32", "--n_residual_blocks", "1", "--ngf", "8", "--ndf", "8",
         "--n_cpu", "0", "--seed", "3", "--pool_size", "0", "--sample_interval", "1000")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_images(root / "train" / "A", 8, seed=1)
    write_images(root / "train" / "B", 8, seed=2)
    return root


def launch(tmp_path: Path, nproc: int, *args: str, env: dict | None = None, timeout: float = 240,
           torchrun: tuple[str, ...] = ()):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", *torchrun, str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_processes_match_one_process_on_the_global_batch(data, tmp_path):
    # No norm layers here: a convolution bias followed by instance norm has a gradient of exactly
    # zero in theory and of rounding noise in practice, which Adam's first steps turn into +-lr
    # (seen: the only differences, ~140 of 32k weights, all such biases). Without them every
    # weight's gradient is real and the runs agree to fp32 rounding.
    common = ("--dataroot", str(data), *FLAGS, "--n_epochs", "2", "--decay_epoch", "1", "--norm", "none")
    two, one = tmp_path / "dump2", tmp_path / "dump1"
    two.mkdir()
    one.mkdir()
    r2 = launch(tmp_path, 2, *common, "--output", str(tmp_path / "run2"), "--batch_size", "2",
                env={"DUMP_DIR": str(two)})
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "global batch 4" in r2.stderr
    assert "Warning" not in r2.stderr, r2.stderr[-3000:]  # e.g. torch 2.13's on DDP's broadcast_buffers
    r1 = launch(tmp_path, 1, *common, "--output", str(tmp_path / "run1"), "--batch_size", "4",
                env={"DUMP_DIR": str(one)})
    assert r1.returncode == 0, r1.stderr[-3000:]
    steps = 4  # 8 images, global batch 4, 2 epochs
    for s in range(1, steps + 1):
        rank0 = torch.load(two / f"rank0_step{s}.pt")
        rank1 = torch.load(two / f"rank1_step{s}.pt")
        single = torch.load(one / f"rank0_step{s}.pt")
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (s, name)  # every rank, every step
            assert torch.allclose(rank0[name], single[name], rtol=1e-5, atol=1e-6), (s, name)
    assert not (one / "rank0_step5.pt").exists()
    # Only rank 0 wrote the run folder; its checkpoints hold plain (unwrapped) weights.
    states, _ = load_run_checkpoint(list_run_checkpoints(tmp_path / "run2")[-1])
    assert "model.1.weight" in states["G_AB"]
    # ... and its metrics, TensorBoard events and report: one writer, each step logged once.
    assert len(list((tmp_path / "run2" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    steps = [json.loads(line)["step"] for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]  # the last step of each epoch (2 steps an epoch)
    assert (tmp_path / "run2" / "report.html").is_file()


@pytest.mark.parametrize("model, flags, networks", [
    ("fastcut", ("--nce_layers", "0,4,8,12", "--num_patches", "16"), {"G_AB", "D_B", "F"}),
    ("pix2pix", ("--netG", "resnet"), {"G_AB", "D_B"}),
], ids=["fastcut", "pix2pix"])
def test_one_generator_models_under_torchrun_keep_every_rank_equal_at_every_step(data, tmp_path, model, flags,
                                                                                 networks):
    # FastCUT: each rank samples its own patch locations and flips; pix2pix: its own dropout masks
    # and batch-norm statistics. The gradients are averaged (and rank 0's buffers broadcast), so
    # the ranks stay equal, but a single process on the global batch would draw others.
    dump = tmp_path / "dump"
    dump.mkdir()
    result = launch(tmp_path, 2, "--dataroot", str(data), *FLAGS, "--model", model, *flags, "--n_epochs", "1",
                    "--decay_epoch", "0", "--batch_size", "2", "--output", str(tmp_path / "run"),
                    env={"DUMP_DIR": str(dump)})
    assert result.returncode == 0, result.stderr[-3000:]
    for s in (1, 2):
        rank0, rank1 = torch.load(dump / f"rank0_step{s}.pt"), torch.load(dump / f"rank1_step{s}.pt")
        assert set(rank0) == networks
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (s, name)
    states, _ = load_run_checkpoint(list_run_checkpoints(tmp_path / "run")[-1])
    assert set(states) == networks


def test_scoring_under_torchrun_scores_once_and_keeps_the_ranks_together(data, tmp_path):
    # Rank 0 scores while rank 1 waits; the best generators are kept once; every rank still
    # equals the other at every step (scoring leaves the training streams alone).
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    dump = tmp_path / "dump"
    dump.mkdir()
    run = tmp_path / "run"
    result = launch(tmp_path, 2, "--dataroot", str(data), *FLAGS, "--n_epochs", "2", "--decay_epoch", "1",
                    "--batch_size", "2", "--output", str(run), "--eval_every", "1", "--eval_images", "4",
                    "--keep_best", "kid", "--inception", str(inception), env={"DUMP_DIR": str(dump)})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_kid" in r] == [2, 4]  # once per epoch, not once per rank
    assert (run / "checkpoints" / "best.safetensors").is_file()
    for s in range(1, 5):
        rank0, rank1 = torch.load(dump / f"rank0_step{s}.pt"), torch.load(dump / f"rank1_step{s}.pt")
        assert all(torch.equal(rank0[name], rank1[name]) for name in rank0), s


def test_resume_across_process_counts(data, tmp_path):
    common = ("--dataroot", str(data), *FLAGS, "--n_epochs", "4", "--decay_epoch", "2", "--batch_size", "2")
    run = tmp_path / "run"
    first = launch(tmp_path, 2, *common, "--output", str(run), "--max_steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == 3
    on_one = run_here("train", "--resume", "--output", str(run), "--max_steps", "5")  # one plain process
    assert on_one.returncode == 0, on_one.stderr[-3000:]
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == 5
    back_on_two = launch(tmp_path, 2, "--resume", "--output", str(run), "--max_steps", "7")
    assert back_on_two.returncode == 0, back_on_two.stderr[-3000:]
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == 7


def test_a_failing_rank_ends_the_job_within_seconds(data, tmp_path):
    start = time.monotonic()
    result = launch(tmp_path, 2, "--dataroot", str(data), *FLAGS, "--output", str(tmp_path / "run"),
                    "--n_epochs", "50", "--decay_epoch", "25", "--batch_size", "1", env={"FAIL_AT": "2"}, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "ERROR [rank 1] internal error (RuntimeError: rank 1 fails on purpose)" in result.stderr  # whose line it is
    assert elapsed < 60, elapsed  # a hang would run into the 120 s timeout (50 epochs take minutes)


def test_a_rank_killed_by_a_signal_leaves_its_python_stack(data, tmp_path):
    # Each rank's standard error in its own file (torchrun --log-dir --redirects): on the shared
    # one, rank 0's lines can land between the pieces faulthandler writes.
    result = launch(tmp_path, 2, "--dataroot", str(data), *FLAGS, "--output", str(tmp_path / "run"),
                    "--n_epochs", "50", "--decay_epoch", "25", "--batch_size", "1", env={"ABORT_AT": "2"}, timeout=120,
                    torchrun=("--log-dir", str(tmp_path / "logs"), "--redirects", "2"))
    assert result.returncode != 0
    assert "SIGABRT" in result.stderr, result.stderr[-3000:]  # torchrun saw rank 1 killed by the signal
    (rank1,) = [p for p in (tmp_path / "logs").rglob("stderr.log") if p.parent.name == "1"]
    err = rank1.read_text()
    assert "Fatal Python error: Aborted" in err, err[-3000:]
    stack = err.split("Fatal Python error: Aborted")[1]
    assert "wrapper.py" in stack and "in step" in stack and "cyclegan/train.py" in stack, stack[:3000]


def test_the_rank_left_behind_says_it_lost_another_not_that_cyclegan_has_a_bug(data, tmp_path):
    result = launch(tmp_path, 2, "--dataroot", str(data), *FLAGS, "--output", str(tmp_path / "run"),
                    "--n_epochs", "50", "--decay_epoch", "25", "--batch_size", "1", env={"EXIT_AT": "2"}, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "ERROR [rank 0] lost another process of this 2-process job (gloo: " in errors[0], \
        result.stderr[-3000:]
    assert "bug in cyclegan" not in result.stderr


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_and_saves(data, tmp_path):
    import signal

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "cyclegan.train", "--dataroot", str(data),
         "--output", str(run), *FLAGS, "--n_epochs", "100", "--decay_epoch", "50", "--batch_size", "1"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    end = time.monotonic() + 120
    while not list_run_checkpoints(run) and time.monotonic() < end:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stops = [line.split("at step ")[1].split(";")[0] for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]  # both ranks, the same step
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == int(stops[0])


def test_joining_a_job_without_a_standard_error_to_print_stacks_to_still_works(monkeypatch):
    import io

    import torch.distributed as dist

    from cyclegan import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # joined already: no process group here
    for stderr in (io.StringIO(), None):  # a notebook's stream without a file descriptor; none at all
        monkeypatch.setattr(sys, "stderr", stderr)
        env, device = distributed.init_distributed(torch.device("cpu"))
        assert (env.rank, env.world_size, device) == (1, 2, torch.device("cpu"))
