"""CUT and FastCUT (``--model cut|fastcut``): the PatchNCE loss against a hand computation, the
patch sampling, the encoder features, the step, and every command on a CUT run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN, assert_same_losses_and_weights, run_here

from cyclegan.checkpoint import load_checkpoint
from cyclegan.inference import load_generator
from cyclegan.losses import patch_nce_loss
from cyclegan.models import PatchSampleMLP, encode_features, encoder, feature_channels
from cyclegan.options import parse_config, validate
from cyclegan.registry import build_networks
from cyclegan.serve import Translator
from cyclegan.step import NCESettings, build_optimizers, cut_train_step, nce_loss

CUT_SMALL = ("--nce_layers", "0,4,8,12", "--num_patches", "16")


def unit_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def test_patch_nce_loss_is_the_hand_computed_cross_entropy():
    batch, patches, dim, tau = 2, 3, 4, 0.07
    q, k = unit_rows(batch * patches, dim, seed=1), unit_rows(batch * patches, dim, seed=2)
    got = patch_nce_loss(q, k, batch, tau)
    assert got.shape == (batch * patches,)
    for b in range(batch):
        for i in range(patches):
            row = b * patches + i
            positive = math.exp(float(q[row] @ k[row]) / tau)
            # The negatives: the other locations of the same image only, and the removed diagonal.
            negatives = sum(math.exp(float(q[row] @ k[b * patches + j]) / tau) for j in range(patches) if j != i)
            negatives += math.exp(-10.0 / tau)
            expected = -math.log(positive / (positive + negatives))
            assert float(got[row]) == pytest.approx(expected, rel=1e-9), (b, i)


def test_patch_nce_loss_takes_negatives_from_the_same_image_and_no_gradient_through_the_keys():
    batch, patches, dim = 2, 5, 8
    q = unit_rows(batch * patches, dim, seed=3).requires_grad_(True)
    k = unit_rows(batch * patches, dim, seed=4).requires_grad_(True)
    loss = patch_nce_loss(q, k, batch)
    other = k.detach().clone()
    other[patches:] = unit_rows(patches, dim, seed=5)  # image 1's keys change
    changed = patch_nce_loss(q.detach(), other, batch)
    assert torch.equal(changed[:patches], loss.detach()[:patches])
    assert not torch.allclose(changed[patches:], loss.detach()[patches:])
    loss.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None
    # Matching queries and keys (q = k) are easy: a lower loss than unrelated ones.
    assert patch_nce_loss(k.detach(), k.detach(), batch).mean() < loss.detach().mean()


def test_patch_sampling_takes_the_same_locations_for_the_input_and_the_output():
    torch.manual_seed(0)
    F = PatchSampleMLP([3, 8], nc=16)
    feats_k = [torch.randn(2, 3, 10, 10), torch.randn(2, 8, 5, 5)]
    feats_q = [torch.randn(2, 3, 10, 10), torch.randn(2, 8, 5, 5)]
    out_k, ids = F(feats_k, num_patches=12)
    out_q, ids_q = F(feats_q, num_patches=12, patch_ids=ids)
    assert [len(i) for i in ids] == [12, 12] and all(torch.equal(a, b) for a, b in zip(ids, ids_q))
    assert len(set(ids[0].tolist())) == 12  # distinct locations
    assert [o.shape for o in out_q] == [(24, 16), (24, 16)]
    for feat, out, index, mlp in zip(feats_q, out_q, ids, F.mlps):
        rows = feat.permute(0, 2, 3, 1).flatten(1, 2)[:, index].flatten(0, 1)  # image-major
        expected = mlp(rows)
        torch.testing.assert_close(out, expected / expected.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(24))
    # More patches than locations: all of them.
    _, all_ids = F([torch.randn(1, 3, 2, 2), torch.randn(1, 8, 2, 2)], num_patches=256)
    assert sorted(all_ids[0].tolist()) == [0, 1, 2, 3]


class RecordingMLP(PatchSampleMLP):
    def forward(self, feats, num_patches, patch_ids=None):
        out, ids = super().forward(feats, num_patches, patch_ids)
        self.calls.append((patch_ids, ids))
        return out, ids


def small_config(*flags: str):
    config, _, _ = parse_config(["--ngf", "8", "--ndf", "8", "--n_residual_blocks", "1", "--img_height", "32",
                                 "--img_width", "32", *CUT_SMALL, *flags])
    validate(config)
    return config


def test_nce_loss_compares_output_and_input_at_the_same_locations_and_unflips():
    config = small_config("--model", "cut")
    torch.manual_seed(0)
    G = build_networks(config)["G_AB"]
    F = RecordingMLP(feature_channels(G, (0, 4, 8, 12), 3), nc=16)
    F.calls = []
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    settings = NCESettings.of(config)
    same = nce_loss(G, F, x, x, settings)
    (keys_call, query_call) = F.calls
    assert keys_call[0] is None and query_call[0] is keys_call[1]  # the input's locations, reused
    # Identical input and output: every positive pair matches exactly, far below a random output's loss.
    other = nce_loss(G, F, x, torch.rand(2, 3, 32, 32) * 2 - 1, settings)
    assert same < other
    # The output of a flipped input, flipped back: the same features as the plain one.
    flipped = nce_loss(G, F, x, x.flip(3), settings, flipped=True)
    assert flipped < other
    feats = encode_features(G, x, (0, 4, 8, 12))
    layers = list(encoder(G))
    y = x
    for i, layer in enumerate(layers[:13]):
        y = layer(y)
        if i in (0, 4, 8, 12):
            torch.testing.assert_close(feats[(0, 4, 8, 12).index(i)], y)
    assert [f.shape[1] for f in feats] == [3, 16, 32, 32]


@pytest.mark.parametrize("model", ["cut", "fastcut"])
def test_the_cut_step_updates_g_d_and_f_and_returns_its_terms(model):
    config = small_config("--model", model)
    torch.manual_seed(0)
    nets = build_networks(config)
    assert set(nets) == {"G_AB", "D_B", "F"}
    opts = build_optimizers(nets, config)
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in nets.items()}
    real_A, real_B = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    losses = cut_train_step(nets, opts, real_A, real_B, NCESettings.of(config))
    expected = {"D", "D_B", "G", "adv", "nce"} | ({"nce_identity"} if model == "cut" else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    nce = (losses["nce"] + losses["nce_identity"]) / 2 if model == "cut" else losses["nce"]
    torch.testing.assert_close(losses["G"], losses["adv"] + nce)
    if model == "fastcut":  # lambda_NCE 10: ten times a per-patch loss near log(16 patches)
        assert losses["nce"] > 5 * math.log(16)
    for name, net in nets.items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters())]
        assert all(changed), f"{name}: {changed.count(False)} parameters not updated"
    assert all(p.requires_grad for p in nets["D_B"].parameters())


def test_model_presets_and_refusals():
    cut = small_config("--model", "cut")
    assert (cut.lambda_NCE, cut.nce_idt, cut.flip_equivariance, cut.netD, cut.pool_size, cut.init_type) == \
        (1.0, True, False, "basic", 0, "xavier")
    assert (cut.n_epochs, cut.decay_epoch) == (400, 199)  # the official 200 + 200 (test_official_cut.py)
    fast = small_config("--model", "fastcut", "--n_epochs", "4", "--decay_epoch", "2", "--nce_T", "0.1")
    assert (fast.lambda_NCE, fast.nce_idt, fast.flip_equivariance, fast.nce_T, fast.n_epochs) == (10.0, False, True,
                                                                                                   0.1, 4)
    assert small_config("--model", "cut", "--nce_idt", "false").nce_idt is False
    assert small_config().model == "cyclegan" and small_config().pool_size == 50
    from cyclegan.errors import CycleGANError

    with pytest.raises(CycleGANError, match="--nce_layers 0,4,8,12,16: layer 16 is beyond"):
        small_config("--model", "cut", "--nce_layers", "0,4,8,12,16")
    with pytest.raises(CycleGANError, match="use --netG resnet .*not unet_128"):
        small_config("--model", "cut", "--netG", "unet_128", "--img_height", "128", "--img_width", "128")
    with pytest.raises(CycleGANError, match="--nce_idt true needs both domains"):
        small_config("--model", "cut", "--output_nc", "1", "--lambda_id", "0")


def test_cut_end_to_end_train_translate_export_sample_and_the_missing_direction(image_folders, tmp_path):
    run = tmp_path / "cut"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, *CUT_SMALL,
                     "--model", "cut", "--n_epochs", "2", "--decay_epoch", "1", "--sample_interval", "4")
    assert result.returncode == 0, result.stderr
    assert "nce" in result.stderr and "nce_identity" in result.stderr
    states, meta = load_checkpoint(run / "checkpoints" / "epoch_2.safetensors")
    assert set(states) == {"G_AB", "D_B", "F"} and meta["config"]["model"] == "cut"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"nce", "nce_identity", "adv", "D_B"} <= set(records[-1]) and "cycle" not in records[-1]
    assert len(list((run / "samples").glob("*.png"))) == 2  # batches 0 and 4
    assert (run / "report.html").is_file()
    out = tmp_path / "out"
    translated = run_here("translate", "--checkpoint", str(run), "--input", str(image_folders / "test" / "A"),
                         "--output", str(out))
    assert translated.returncode == 0, translated.stderr
    assert len(list(out.glob("*.png"))) == 2
    refused = run_here("translate", "--checkpoint", str(run), "--direction", "BtoA", "--input",
                      str(image_folders / "test" / "A"), "--output", str(tmp_path / "none"))
    assert refused.returncode != 0 and "--model cut run, which translates AtoB only" in refused.stderr
    assert not (tmp_path / "none").exists()
    exported = run_here("export", "--checkpoint", str(run), "--format", "torchscript", "--output",
                       str(tmp_path / "g.pt"))
    assert exported.returncode == 0, exported.stderr
    # serve's translator offers the one direction there is.
    translator = Translator(str(run), torch.device("cpu"), max_pixels=10**6)
    assert list(translator.generators) == ["AtoB"]
    image, written = translator(str(sorted((image_folders / "test" / "A").glob("*.png"))[0]), "AtoB")
    assert image.size == (40, 36) and Path(written).is_file()
    gen = load_generator(run)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    torch.testing.assert_close(scripted(x), gen(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["blocks", "full"])
def test_activation_checkpointing_leaves_the_cut_step_bit_identical(mode):
    from cyclegan.memory import recompute_activations

    config = small_config("--model", "cut")
    results = []
    for checkpointing in ("off", mode):
        torch.manual_seed(0)
        nets = build_networks(config)
        recompute_activations(nets["G_AB"], checkpointing)
        opts = build_optimizers(nets, config)
        real_A, real_B = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
        losses = [cut_train_step(nets, opts, real_A, real_B, NCESettings.of(config)) for _ in range(2)]
        results.append((losses, {n: net.state_dict() for n, net in nets.items()}))
    assert_same_losses_and_weights(*results)


def test_the_cut_step_under_bfloat16_autocast():
    config = small_config("--model", "fastcut")
    torch.manual_seed(0)
    nets = build_networks(config)
    opts = build_optimizers(nets, config)
    real_A, real_B = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    losses = cut_train_step(nets, opts, real_A, real_B, NCESettings.of(config), amp_dtype=torch.bfloat16)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.mark.long
@pytest.mark.parametrize("model", ["cut"])  # FastCUT's loss is the same with another weight
def test_patchnce_learns_to_find_each_patch_on_the_demo_data(tmp_path, model):
    """The learning test: 200 steps on the demo data must bring PatchNCE well below ln(P), the
    loss of features that cannot tell P locations apart, where a broken patch correspondence
    stays (calibration: docs/benchmarks.md, "The CUT learning test")."""
    run = tmp_path / model
    result = run_here("train", "--dataset_name", "demo", "--output", str(run), "--model", model, "--img_height", "32",
                     "--img_width", "32", "--ngf", "16", "--ndf", "16", "--n_residual_blocks", "1", "--nce_layers",
                     "0,4,8,12", "--num_patches", "64", "--n_epochs", "1", "--decay_epoch", "0", "--n_cpu", "0",
                     "--seed", "0", "--log_interval", "1", "--logger", "none", "--sample_interval", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weight = 1.0 if model == "cut" else 10.0
    per_patch = [r["nce"] / weight for r in records]
    assert len(per_patch) == 200
    assert sum(per_patch[:20]) / 20 > 0.8 * math.log(64)  # it starts near chance
    assert sum(per_patch[-50:]) / 50 < 0.93 * math.log(64), per_patch[-50:]
