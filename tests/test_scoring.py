"""Scoring while training (``--eval_every``, ``--keep_best``, ``--early_stop``) and ``--epoch
best`` in the commands that read a run: real runs on disk, the FID Inception's stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN, run_here, write_inception_stand_in
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cyclegan import scoring
from cyclegan.checkpoint import list_run_checkpoints, load_run_checkpoint

RUN = (*SMALL_RUN, "--batch_size", "1", "--n_epochs", "4", "--decay_epoch", "2", "--sample_interval", "1000",
       "--logger", "none")


def scores(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if any(k.startswith("eval_") for k in r)]


def final_networks(run: Path) -> dict[str, torch.Tensor]:
    return load_file(list_run_checkpoints(run)[-1] / "networks.safetensors")


@pytest.mark.long
def test_scores_are_logged_at_the_interval_and_leave_training_unchanged(image_folders, tmp_path):
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    plain, scored = tmp_path / "plain", tmp_path / "scored"
    assert run_here("train", "--dataroot", str(image_folders), "--output", str(plain), *RUN).returncode == 0
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(scored), *RUN, "--eval_every", "2",
                      "--eval_every_steps", "3", "--inception", str(inception), "--use_dropout")
    assert result.returncode == 0, result.stderr
    # 4 batches an epoch: steps 3, 6, 9, 12 by steps; epochs 2 and 4 end at steps 8 and 16 (16 is both).
    found = scores(scored)
    assert [r["step"] for r in found] == [3, 6, 8, 9, 12, 15, 16]
    assert all({"eval_fid", "eval_kid", "eval_cycle_l1"} <= set(r) for r in found)
    assert all(r["eval_cycle_l1"] > 0 and r["eval_fid"] > 0 for r in found)
    assert len(list((scored / "eval").glob("real_B_features_*.npy"))) == 1  # computed once, cached
    assert "scores at epoch 2, step 8: fid" in result.stderr
    # Scoring forks the random state and leaves batch norm and dropout alone: the networks trained
    # with it are those trained without it, bit for bit (dropout draws from the same stream).
    again = run_here("train", "--dataroot", str(image_folders), "--output", str(tmp_path / "plain2"), *RUN,
                     "--use_dropout")
    assert again.returncode == 0
    a, b = final_networks(tmp_path / "plain2"), final_networks(scored)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], final_networks(plain)[k]) for k in a)  # dropout mattered: a real check


def test_the_best_checkpoint_is_the_networks_at_its_scoring_and_survives_resume(image_folders, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = ("--eval_every", "1", "--keep_best", "cycle_l1", "--checkpoint_interval", "1")
    assert run_here("train", "--dataroot", str(image_folders), "--output", str(straight), *RUN, *flags).returncode == 0
    found = scores(straight)
    best = min(found, key=lambda r: r["eval_cycle_l1"])
    kept = load_file(straight / "checkpoints" / "best.safetensors")
    at_epoch = load_file(straight / "checkpoints" / f"epoch_{best['epoch']}.safetensors")
    assert kept.keys() == at_epoch.keys() and all(torch.equal(kept[k], at_epoch[k]) for k in kept)
    report = (straight / "report.html").read_text()  # the chart of the scores, the best file named
    assert "id='score-chart'" in report and str(straight / "checkpoints" / "best.safetensors") in report
    state = load_run_checkpoint(list_run_checkpoints(straight)[-1])[1]
    assert state["best"]["value"] == pytest.approx(best["eval_cycle_l1"]) and state["best"]["epoch"] == best["epoch"]
    # Stopped after epoch 2 and resumed: the same best, the same best file, the same networks.
    first = run_here("train", "--dataroot", str(image_folders), "--output", str(split), *RUN, *flags,
                     "--max_steps", "8")
    assert first.returncode == 0, first.stderr
    assert run_here("train", "--resume", "--output", str(split)).returncode == 0
    assert load_run_checkpoint(list_run_checkpoints(split)[-1])[1]["best"] == state["best"]
    resumed_best = load_file(split / "checkpoints" / "best.safetensors")
    assert all(torch.equal(resumed_best[k], kept[k]) for k in kept)
    assert [r["step"] for r in scores(split)] == [r["step"] for r in found]


def test_early_stop_stops_at_the_scoring_that_says_so(image_folders, tmp_path, monkeypatch):
    # A scripted score: better, better, worse, worse -> with --early_stop 2 the run stops at the
    # fourth scoring (step 8 of 4-step epochs, every 2 steps), saving, and says why.
    script = iter([3.0, 2.0, 2.5, 2.2, 1.0, 0.5])
    monkeypatch.setattr(scoring.Scorer, "score", lambda self, nets: {"cycle_l1": next(script)})
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN, "--eval_every_steps",
                      "2", "--keep_best", "cycle_l1", "--early_stop", "2")
    assert result.returncode == 0, result.stderr
    state = load_run_checkpoint(list_run_checkpoints(run)[-1])[1]
    assert state["step"] == 8 and state["best"] == {"metric": "cycle_l1", "value": 2.0, "epoch": 1, "step": 4,
                                                    "since": 2}
    assert "--early_stop 2: cycle_l1 has not improved for 2 scorings" in result.stderr
    assert "stopped early at step 8" in result.stderr and "cyclegan train --resume" in result.stderr
    # The progress line shows the latest score and the best so far once there is one.
    assert "| cycle_l1 2.5 (best 2 at epoch 1)" in result.stderr


def test_epoch_best_in_the_commands_that_read_a_run(image_folders, tmp_path):
    run = tmp_path / "run"
    assert run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN, "--eval_every", "1",
                    "--keep_best", "cycle_l1").returncode == 0
    inputs = image_folders / "test" / "A"
    best = run_here("translate", "--checkpoint", str(run), "--epoch", "best", "--input", str(inputs), "--output",
                    str(tmp_path / "best"))
    direct = run_here("translate", "--checkpoint", str(run / "checkpoints" / "best.safetensors"), "--input",
                      str(inputs), "--output", str(tmp_path / "direct"))
    latest = run_here("translate", "--checkpoint", str(run), "--input", str(inputs), "--output", str(tmp_path / "last"))
    assert best.returncode == direct.returncode == latest.returncode == 0
    for path in sorted((tmp_path / "direct").glob("*.png")):
        assert (tmp_path / "best" / path.name).read_bytes() == path.read_bytes()
    exported = run_here("export", "--checkpoint", str(run), "--epoch", "best", "--format", "torchscript", "--output",
                        str(tmp_path / "g.pt"))
    assert exported.returncode == 0, exported.stderr
    missing = run_here("translate", "--checkpoint", str(run), "--epoch", "7", "--input", str(inputs), "--output",
                       str(tmp_path / "seven"))
    assert missing.returncode == 2 and "saved epochs: 4" in missing.stderr and not (tmp_path / "seven").exists()
    on_a_file = run_here("translate", "--checkpoint", str(run / "checkpoints" / "epoch_4.safetensors"), "--epoch",
                         "best", "--input", str(inputs), "--output", str(tmp_path / "f"))
    assert on_a_file.returncode == 2 and "picks a checkpoint of a run folder" in on_a_file.stderr


@pytest.mark.parametrize("flags, says", [
    (("--eval_every", "1", "--keep_best", "fid"), "cyclegan download inception"),
    (("--keep_best", "kid"), "give --eval_every N"),
    (("--eval_every", "1", "--early_stop", "3"), "name it with --keep_best"),
    (("--eval_every", "1", "--keep_best", "psnr"), "paired truth"),
    (("--eval_every", "1", "--eval_images", "1"), "--eval_images 1"),
    (("--eval_every", "-1",), "--eval_every -1"),
])
def test_scoring_flags_that_cannot_work_are_refused_before_any_work(image_folders, tmp_path, monkeypatch, flags,
                                                                    says):
    monkeypatch.setenv("CYCLEGAN_INCEPTION", str(tmp_path / "nowhere.pt"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN, *flags)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not run.exists()


def test_eval_paired_scores_an_unpaired_model_against_the_truth_of_the_same_name(tmp_path):
    # The demo's held-out pairs: test/B/k.png is the true translation of test/A/k.png.
    run = tmp_path / "run"
    result = run_here("train", "--dataset_name", "demo", "--output", str(run), *RUN, "--n_epochs", "1",
                      "--decay_epoch", "0", "--max_steps", "3", "--eval_every_steps", "3", "--eval_paired",
                      "--eval_images", "6", "--keep_best", "psnr")
    assert result.returncode == 0, result.stderr
    (record,) = scores(run)
    assert {"eval_psnr", "eval_ssim", "eval_l1", "eval_cycle_l1"} <= set(record) and record["eval_psnr"] > 0
    assert "on 6 held-out images" in result.stderr
    data = tmp_path / "data"
    for domain, names in (("A", ("x", "y")), ("B", ("x", "z"))):
        for split in ("train", "test"):
            for name in names:
                (data / split / domain).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (10, 200, 30)).save(data / split / domain / f"{name}.png")
    unmatched = run_here("train", "--dataroot", str(data), "--output", str(tmp_path / "r2"), *RUN, "--eval_every",
                         "1", "--eval_paired")
    assert unmatched.returncode == 2 and "--eval_paired:" in unmatched.stderr and "y.png" in unmatched.stderr


@pytest.mark.parametrize("model, flags, expected", [
    ("pix2pix", ("--netG", "resnet", "--keep_best", "ssim"), {"eval_fid", "eval_kid", "eval_psnr", "eval_ssim",
                                                              "eval_l1"}),
    ("fastcut", ("--nce_layers", "0,4,8,12", "--num_patches", "16", "--keep_best", "kid"), {"eval_fid", "eval_kid"}),
    ("cyclegan", ("--amp", "bf16", "--keep_best", "fid"), {"eval_fid", "eval_kid", "eval_cycle_l1"}),
])
def test_every_model_scores_what_it_has(image_folders, tmp_path, model, flags, expected):
    # pix2pix: FID, KID and the paired truth, no cycle (the test folders pair by name); FastCUT: FID and KID;
    # CycleGAN trained under bfloat16 autocast (scoring runs the float32 networks as they are).
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN, "--model", model,
                      *flags, "--n_epochs", "1", "--decay_epoch", "0", "--eval_every", "1", "--inception",
                      str(inception))
    assert result.returncode == 0, result.stderr
    (record,) = scores(run)
    assert {k for k in record if k.startswith("eval_")} == expected
    assert (run / "checkpoints" / "best.safetensors").is_file()


def test_a_model_with_nothing_to_score_is_refused_before_training(image_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLEGAN_INCEPTION", str(tmp_path / "nowhere.pt"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(tmp_path / "run"), *RUN, "--model",
                      "cut", "--nce_layers", "0,4,8,12", "--num_patches", "16", "--eval_every", "1")
    assert result.returncode == 2 and "nothing to score" in result.stderr and "cyclegan download inception" in \
        result.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_a_resumed_run_never_loses_a_best_file(image_folders, tmp_path):
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    run = tmp_path / "run"
    flags = ("--eval_every", "1", "--inception", str(inception))
    first = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *RUN, *flags, "--keep_best",
                     "cycle_l1", "--max_steps", "8")
    assert first.returncode == 0, first.stderr
    best = run / "checkpoints" / "best.safetensors"
    # A crash after the best file was written and before the run checkpoint: the file holds a
    # better score than the state (here a perfect 0, so no later scoring beats it). The resumed
    # run must take the file's, and keep the file.
    with safe_open(str(best), "pt") as f:
        meta = f.metadata()
    save_file(load_file(best), str(best), metadata={**meta, "best": json.dumps({"metric": "cycle_l1", "value": 0.0}),
                                                    "epoch": "2", "step": "8"})
    kept_bytes = best.read_bytes()
    resumed = run_here("train", "--resume", "--output", str(run), "--max_steps", "12")
    assert resumed.returncode == 0, resumed.stderr
    after = load_run_checkpoint(list_run_checkpoints(run)[-1])[1]["best"]
    assert (after["value"], after["epoch"], after["step"], after["since"]) == (0.0, 2, 8, 1)
    assert best.read_bytes() == kept_bytes
    # Resumed following another score: the cycle_l1 best is set aside under its name, not overwritten.
    again = run_here("train", "--resume", "--output", str(run), "--max_steps", "16", "--keep_best", "fid")
    assert again.returncode == 0, again.stderr
    assert (run / "checkpoints" / "best_cycle_l1.safetensors").is_file()
    assert "best_cycle_l1.safetensors" in again.stderr
    from cyclegan.checkpoint import load_checkpoint

    assert load_checkpoint(best)[1]["best"]["metric"] == "fid"
