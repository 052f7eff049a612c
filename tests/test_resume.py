"""Never lose a run: exact resume, SIGKILL at any moment, graceful stop on SIGTERM, damaged and
malicious checkpoints, a full disk, divergence, and bad images in both modes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, run_here, write_images
from PIL import Image
from safetensors.torch import load_file

from cyclegan import checkpoint as ckpt_module
from cyclegan import perf
from cyclegan import train as train_module
from cyclegan.checkpoint import list_run_checkpoints, load_latest_run_checkpoint, load_run_checkpoint
from cyclegan.errors import CycleGANError

RUN = (*SMALL_RUN, "--batch_size", "1", "--n_epochs", "3", "--decay_epoch", "1", "--sample_interval", "1000")


def final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    last = list_run_checkpoints(run)[-1]
    return load_file(last / "networks.safetensors"), torch.load(last / "state.pt", weights_only=True)


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


CUT = ("--nce_layers", "0,4,8,12", "--num_patches", "16")


@pytest.mark.parametrize("extra", [(), ("--gan_mode", "wgangp", "--pool_size", "0", "--use_dropout"),
                                   ("--amp", "fp16", "--channels_last", "on", "--ngf", "8", "--ndf", "8"),
                                   ("--model", "fastcut", *CUT), ("--model", "pix2pix", "--netG", "resnet")],
                         ids=["reference", "wgangp-dropout", "fp16-channels_last", "fastcut", "pix2pix"])
def test_stop_and_resume_is_bit_identical_to_a_straight_run(image_folders, tmp_path, extra):
    # 4 batches an epoch, 12 steps; the learning rate halves at epoch 3, after the resume point.
    # The second case draws random numbers in the step itself (dropout, the penalty's mixing), and
    # so do FastCUT (the sampled patch locations and the flips; its networks include the
    # projection head F, and its optimizers F's: CUT's are the same) and pix2pix (dropout, batch norm).
    straight = tmp_path / "straight"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(straight), *RUN, *extra)
    assert result.returncode == 0, result.stderr
    split = tmp_path / "split"
    first = run_here("train", "--dataroot", str(image_folders), "--output", str(split), *RUN, *extra,
                    "--max_steps", "6", "--n_cpu", "2")
    assert first.returncode == 0, first.stderr
    assert "stopped at --max_steps 6" in first.stderr and "--resume" in first.stderr
    assert [p.name for p in list_run_checkpoints(split)][-1] == "step_000000006"
    at_stop = load_run_checkpoint(list_run_checkpoints(split)[-1])[1]
    assert at_stop["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(0.0002)
    second = run_here("train", "--resume", "--output", str(split), "--n_cpu", "2")
    assert second.returncode == 0, second.stderr
    assert "epoch 2 of 3, step 6" in second.stderr

    nets_a, state_a = final_state(straight)
    nets_b, state_b = final_state(split)
    assert state_a["step"] == state_b["step"] == 12
    assert_same_tensors(nets_a, nets_b, "networks")
    assert_same_tensors(state_a["optimizers"], state_b["optimizers"], "optimizers")
    assert_same_tensors(state_a["buffers"], state_b["buffers"], "replay buffers")
    assert_same_tensors(state_a["rng"]["torch"], state_b["rng"]["torch"], "torch RNG")
    assert_same_tensors(state_a["scaler"], state_b["scaler"], "gradient scaler")
    assert (state_a["scaler"] is not None) == ("fp16" in extra)
    # The schedule crossed the resume point: full rate at step 6, half in epoch 3, zero after it.
    assert state_a["optimizers"]["G"]["param_groups"][0]["lr"] == 0.0
    if "cut" in extra or "fastcut" in extra:
        assert {k.split(".")[0] for k in nets_a} == {"G_AB", "D_B", "F"} and set(state_a["optimizers"]) == {
            "G", "D_B", "F"}
    if "pix2pix" in extra:  # batch norm's running statistics are in the networks' state too
        assert {k.split(".")[0] for k in nets_a} == {"G_AB", "D_B"} and any("running_mean" in k for k in nets_a)


def test_a_resumed_run_keeps_the_precision_auto_chose_when_it_started(image_folders, tmp_path, monkeypatch):
    """--amp auto chooses once, when a run starts: resumed where auto would choose bf16 (a CPU with
    native bf16, or a version whose auto takes it), the run goes on in float32 as it began, bit
    for bit as a straight run; --amp given on resume switches."""
    def cpu(native):
        monkeypatch.setattr(perf, "cpu_native_bf16", lambda cpuinfo=perf.CPUINFO: native)

    cpu(None)
    straight = tmp_path / "straight"
    assert run_here("train", "--dataroot", str(image_folders), "--output", str(straight), *RUN).returncode == 0
    split = tmp_path / "split"
    first = run_here("train", "--dataroot", str(image_folders), "--output", str(split), *RUN, "--max_steps", "6")
    assert first.returncode == 0, first.stderr
    switched = tmp_path / "switched"
    shutil.copytree(split, switched)

    cpu("AMX")
    second = run_here("train", "--resume", "--output", str(split))
    assert second.returncode == 0, second.stderr
    assert "amp off (auto: float32, as the run started (its amp_used; --amp bf16 switches))" in second.stderr
    assert json.loads((split / "config.json").read_text())["amp_used"] == "off"
    nets_a, state_a = final_state(straight)
    nets_b, state_b = final_state(split)
    assert state_a["step"] == state_b["step"] == 12
    assert_same_tensors(nets_a, nets_b, "networks")
    assert_same_tensors(state_a["optimizers"], state_b["optimizers"], "optimizers")

    third = run_here("train", "--resume", "--output", str(switched), "--amp", "bf16", "--max_steps", "7")
    assert third.returncode == 0, third.stderr
    assert "on resume: --amp bf16 (the run had auto)" in third.stderr
    assert json.loads((switched / "config.json").read_text())["amp_used"] == "bf16"


def test_keep_checkpoints_and_save_every_steps(image_folders, tmp_path):
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN,
                     "--save_every_steps", "3", "--keep_checkpoints", "2")
    assert result.returncode == 0, result.stderr
    # saves at steps 3, 4 (epoch end), 6, 8, 9, 12: the newest two stay
    assert [p.name for p in list_run_checkpoints(run)] == ["step_000000009", "step_000000012"]


def start_training(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cyclegan", "train", "--dataroot", str(data), "--output", str(run), *SMALL_RUN,
         "--batch_size", "1", "--n_epochs", "200", "--decay_epoch", "100", "--sample_interval", "100000",
         "--save_every_steps", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.long
def test_sigkill_at_any_moment_never_loses_more_than_the_save_interval(image_folders, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(0)
    last_step = 0
    for attempt in range(4):
        extra = ("--resume",) if attempt else ()
        proc = start_training(image_folders, run, *extra)
        try:
            # Wait until this process has saved at least once past the last step seen.
            assert wait_for(lambda: any(int(p.name[5:]) > last_step for p in list_run_checkpoints(run))), \
                proc.stderr.read() if proc.poll() is not None else "no checkpoint written"
            if attempt % 2 == 0:  # kill in the middle of writing a checkpoint
                folder = run / "checkpoints" / "resume"
                wait_for(lambda: any(p.name.endswith(".tmp") for p in folder.iterdir()))
            else:
                time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        saved = list_run_checkpoints(run)
        assert saved, "no checkpoint left"
        _, state = load_run_checkpoint(saved[-1])  # the newest is whole
        assert state["step"] >= last_step
        last_step = state["step"]
    assert last_step > 0
    # And a resumed run carries on from the newest checkpoint.
    result = run_here("train", "--resume", "--output", str(run), "--max_steps", str(last_step + 2))
    assert result.returncode == 0, result.stderr
    assert f"step {last_step})" in result.stderr
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == last_step + 2
    leftovers = [p.name for p in (run / "checkpoints" / "resume").iterdir() if p.name.startswith(".")]
    assert not leftovers  # temp folders of killed saves are cleaned up on the next start


def test_sigterm_saves_and_exits_143_then_resume_continues(image_folders, tmp_path):
    run = tmp_path / "run"
    proc = start_training(image_folders, run)
    assert wait_for(lambda: len(list_run_checkpoints(run)) > 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "cyclegan train --resume --output" in err
    step = load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"]
    again = run_here("train", "--resume", "--output", str(run), "--max_steps", str(step + 1))
    assert again.returncode == 0, again.stderr
    assert load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["step"] == step + 1


def test_a_second_signal_stops_at_once(image_folders, tmp_path):
    run = tmp_path / "run"
    proc = start_training(image_folders, run, "--save_every_steps", "0")
    assert wait_for(lambda: (run / "config.json").exists())
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    for line in proc.stderr:  # the first one is handled: training will stop after this step
        if "SIGTERM received" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # killed by the signal itself, not a graceful 143


def two_checkpoints(data: Path, run: Path) -> list[Path]:
    result = run_here("train", "--dataroot", str(data), "--output", str(run), *RUN, "--max_steps", "3",
                     "--save_every_steps", "1")
    assert result.returncode == 0, result.stderr
    return list_run_checkpoints(run)


class Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


DAMAGES = ("truncate networks", "garbage state", "pickle with code", "empty state")


def damage_checkpoint(folder: Path, damage: str, marker: Path) -> None:
    if damage == "truncate networks":
        data = (folder / "networks.safetensors").read_bytes()
        (folder / "networks.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "garbage state":
        (folder / "state.pt").write_bytes(os.urandom(4096))
    elif damage == "empty state":
        (folder / "state.pt").write_bytes(b"")
    else:
        Exploit.marker = str(marker)
        with open(folder / "state.pt", "wb") as f:
            pickle.dump({"step": Exploit()}, f, protocol=2)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(image_folders, tmp_path):
    # One run; each kind of damage on a copy of it: refused by name, the previous one found in
    # its place (what --resume does, in-process); then --resume for real on the pickle case.
    run = tmp_path / "run"
    two_checkpoints(image_folders, run)
    marker = tmp_path / "pwned"
    for damage in DAMAGES:
        copy = tmp_path / damage.replace(" ", "_")
        shutil.copytree(run, copy)
        saved = list_run_checkpoints(copy)
        newest, previous = saved[-1], saved[-2]
        damage_checkpoint(newest, damage, marker)
        with pytest.raises(CycleGANError, match=newest.name):
            load_run_checkpoint(newest)
        warnings: list[str] = []
        found, _, state = load_latest_run_checkpoint(copy, warn=lambda *a: warnings.append(a[0] % a[1:]),
                                                     set_aside_damaged=False)
        assert found == previous and state["step"] == int(previous.name.removeprefix("step_")), damage
        assert any(newest.name in w for w in warnings), (damage, warnings)
    result = run_here("train", "--resume", "--output", str(tmp_path / "pickle_with_code"), "--max_steps", "4")
    assert result.returncode == 0, result.stderr
    assert "is damaged" in result.stderr and "older checkpoint" in result.stderr
    assert "starting from" in result.stderr and "step_000000002" in result.stderr
    assert not marker.exists()
    # A damaged checkpoint named explicitly is refused, not silently replaced.
    explicit = run_here("train", "--resume", str(run / "checkpoints" / "resume" / "nope"))
    assert explicit.returncode == 2 and "does not exist" in explicit.stderr


def test_a_full_disk_leaves_the_previous_checkpoint_intact(image_folders, tmp_path, monkeypatch):
    run = tmp_path / "run"
    saved = two_checkpoints(image_folders, run)
    before = {p.name: (p / "networks.safetensors").read_bytes() for p in saved}

    real_write = ckpt_module._write_file

    def full_disk(path, data):
        real_write(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module, "_write_file", full_disk)
    code = train_module.main(["--resume", "--output", str(run), "--max_steps", "5", "--n_cpu", "0"])
    assert code == 2
    after = list_run_checkpoints(run)
    assert {p.name: (p / "networks.safetensors").read_bytes() for p in after} == before
    assert not [p for p in (run / "checkpoints" / "resume").iterdir() if p.name.startswith(".")]
    load_run_checkpoint(after[-1])


def test_resume_reports_changed_flags_and_refuses_other_networks(image_folders, tmp_path, caplog):
    run = tmp_path / "run"
    two_checkpoints(image_folders, run)
    changed = run_here("train", "--resume", "--output", str(run), "--n_epochs", "4", "--max_steps", "4")
    assert changed.returncode == 0, changed.stderr
    assert "on resume: --n_epochs 4 (the run had 3)" in changed.stderr
    refused = run_here("train", "--resume", "--output", str(run), "--ngf", "8", "--norm", "batch", "--netD", "basic")
    assert refused.returncode == 2
    assert "--ngf 8 (checkpoint: 16)" in refused.stderr and "--norm batch (checkpoint: instance)" in refused.stderr


def lr_and_betas(run: Path) -> tuple[float, tuple]:
    group = load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["optimizers"]["G"]["param_groups"][0]
    return group["lr"], tuple(group["betas"])


def test_flags_changed_on_resume_take_effect(image_folders, tmp_path):
    run = tmp_path / "run"
    two_checkpoints(image_folders, run)
    result = run_here("train", "--resume", "--output", str(run), "--lr", "0.0001", "--b1", "0.9", "--max_steps", "4")
    assert result.returncode == 0, result.stderr
    assert lr_and_betas(run) == (pytest.approx(0.0001), (0.9, 0.999))


def test_a_finished_run_can_be_extended(image_folders, tmp_path):
    run = tmp_path / "run"
    common = ("--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--batch_size", "4")
    assert run_here("train", *common, "--n_epochs", "1", "--decay_epoch", "0").returncode == 0
    assert lr_and_betas(run)[0] == 0.0  # the schedule ended
    again = run_here("train", "--resume", "--output", str(run))
    assert again.returncode == 0 and "already finished" in again.stderr
    longer = run_here("train", "--resume", "--output", str(run), "--n_epochs", "4", "--decay_epoch", "2")
    assert longer.returncode == 0, longer.stderr
    states = [load_run_checkpoint(p)[1] for p in list_run_checkpoints(run)]
    # epochs 2, 3 at the full rate again, epoch 4 at half; the last state holds the rate after epoch 4: 0
    assert [s["step"] for s in states] == [2, 3, 4]
    assert [s["optimizers"]["G"]["param_groups"][0]["lr"] for s in states] == pytest.approx([0.0002, 0.0001, 0.0])


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(image_folders, tmp_path):
    run = tmp_path / "run"
    saved = two_checkpoints(image_folders, run)  # steps 1, 2, 3
    result = run_here("train", "--resume", str(saved[0]), "--max_steps", "2", "--keep_checkpoints", "1")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in list_run_checkpoints(run)] == ["step_000000002"]
    assert load_run_checkpoint(list_run_checkpoints(run)[0])[1]["step"] == 2
    aside = sorted(p.name for p in (run / "checkpoints" / "resume").iterdir() if "abandoned" in p.name)
    assert aside == ["step_000000002.abandoned", "step_000000003.abandoned"]
    as_run_folder = run_here("train", "--resume", str(run), "--max_steps", "3")
    assert as_run_folder.returncode == 0, as_run_folder.stderr
    networks_only = run_here("train", "--resume", str(run / "checkpoints" / "epoch_1.safetensors"))
    assert networks_only.returncode == 2


@pytest.mark.parametrize("model,term", [("cyclegan", "cycle"), ("cut", "nce")])
def test_a_non_finite_loss_stops_the_run_naming_the_term_and_the_files(image_folders, tmp_path, monkeypatch, model,
                                                                        term):
    run = tmp_path / "run"
    real_step = train_module.run_step
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            losses[term] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(train_module, "run_step", exploding)
    extra = ("--model", model, *CUT) if model != "cyclegan" else ()
    code = train_module.main(["--dataroot", str(image_folders), "--output", str(run), *RUN, *extra,
                              "--save_every_steps", "1"])
    assert code == 3
    report = (run / "diverged_batch.txt").read_text()
    assert report.startswith(f"step 3, epoch 1, batch 3: loss {term} is not finite")
    assert "A " + str(image_folders / "train" / "A") in report and "B " + str(image_folders / "train" / "B") in report
    assert [p.name for p in list_run_checkpoints(run)] == ["step_000000001", "step_000000002"]


# --- Bad images ----------------------------------------------------------------------------------


def make_bad_images(folder: Path) -> dict[str, Path]:
    bad = {}
    bad["zero-byte"] = folder / "zero.png"
    bad["zero-byte"].write_bytes(b"")
    bad["not an image"] = folder / "notes.jpg"
    bad["not an image"].write_text("shopping list: eggs, milk")
    bad["garbage"] = folder / "garbage.webp"
    bad["garbage"].write_bytes(os.urandom(3000))
    bad["truncated"] = folder / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad["truncated"])
    bad["truncated"].write_bytes(bad["truncated"].read_bytes()[:500])
    bad["decompression bomb"] = folder / "bomb.png"
    Image.new("1", (10000, 10000)).save(bad["decompression bomb"])  # 100 M pixels, a few kB on disk
    bad["smaller than the crop"] = folder / "tiny.png"
    Image.new("RGB", (20, 20), (9, 9, 9)).save(bad["smaller than the crop"])
    return bad


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_every_kind_of_bad_image_in_both_modes(tmp_path, mode):
    data = tmp_path / "data"
    write_images(data / "train" / "A", 3, seed=1)
    write_images(data / "train" / "B", 3, seed=2)
    bad = make_bad_images(data / "train" / "A")
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(data), "--output", str(run), *SMALL_RUN, "--n_epochs", "1",
                     "--decay_epoch", "0", "--batch_size", "3", "--bad_images", mode)
    reasons = {"zero-byte": "empty file", "not an image": "not an image", "garbage": "not an image",
               "truncated": "truncated", "decompression bomb": "decompression-bomb", "smaller than the crop":
               "smaller than the crop"}
    for kind, path in bad.items():
        line = next((ln for ln in result.stderr.splitlines() if str(path) in ln), None)
        assert line is not None, kind
        assert reasons[kind] in line, (kind, line)
    if mode == "error":
        assert result.returncode == 2
        assert "6 of 12 image files cannot be used" in result.stderr and "--bad_images skip" in result.stderr
        assert not run.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert "leaving out 6 of 12 image files" in result.stderr
        assert "(3 images in A, 3 in B)" in result.stderr
        assert (run / "checkpoints" / "epoch_1.safetensors").is_file()
