"""Checkpoints: round trip, damaged files refused with a clear error, pickles never executed."""

from __future__ import annotations

import pickle

import pytest
import torch

from cyclegan.checkpoint import list_checkpoints, load_checkpoint, load_state_dict_file, save_networks
from cyclegan.errors import CycleGANError
from cyclegan.models import Discriminator, GeneratorResNet


def nets():
    torch.manual_seed(0)
    return {"G_AB": GeneratorResNet((3, 32, 32), 1), "D_A": Discriminator((3, 32, 32))}


def test_round_trip(tmp_path):
    saved = nets()
    path = save_networks(tmp_path / "checkpoints" / "epoch_3.safetensors", saved, {"epoch": 3, "config": {"a": [1]}})
    states, meta = load_checkpoint(path)
    assert meta == {"epoch": 3, "config": {"a": [1]}}
    fresh = {"G_AB": GeneratorResNet((3, 32, 32), 1), "D_A": Discriminator((3, 32, 32))}
    for name, net in fresh.items():
        net.load_state_dict(states[name], strict=True)
        for a, b in zip(net.state_dict().values(), saved[name].state_dict().values()):
            assert torch.equal(a, b)
    assert list_checkpoints(tmp_path) == {3: path}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_is_refused_with_its_name(tmp_path, damage):
    path = save_networks(tmp_path / "epoch_1.safetensors", nets())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13" * 5000, "empty": b""}[damage])
    with pytest.raises(CycleGANError, match="epoch_1.safetensors"):
        load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    path = tmp_path / "G_AB_10.pth"
    if writer == "torch.save":
        torch.save({"model.1.weight": Exploit()}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model.1.weight": Exploit()}, f, protocol=2)
    with pytest.raises(CycleGANError, match="G_AB_10.pth"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_reference_pth_and_safetensors_weights_load(tmp_path):
    g = GeneratorResNet((3, 32, 32), 2)
    torch.save(g.state_dict(), tmp_path / "G_AB_5.pth")
    state = load_state_dict_file(tmp_path / "G_AB_5.pth")
    GeneratorResNet((3, 32, 32), 2).load_state_dict(state, strict=True)
    with pytest.raises(CycleGANError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")
