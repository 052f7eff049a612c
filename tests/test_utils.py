"""ReplayBuffer and LambdaLR semantics, image grids, PSNR and atomic writes."""

from __future__ import annotations

import os
import random

import pytest
import torch

from cyclegan.utils import LambdaLR, ReplayBuffer, atomic_write, psnr


def batch(values, size=4):
    """A batch of constant images, image k filled with values[k], so images can be told apart."""
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


def ids(images):
    return [int(round(x.mean().item())) for x in images]


def test_replay_buffer_fill_phase_returns_and_stores_every_image():
    buf = ReplayBuffer(max_size=5, rng=random.Random(0))
    out = buf.push_and_pop(batch([1, 2, 3]))
    assert ids(out) == [1, 2, 3]
    out = buf.push_and_pop(batch([4, 5]))
    assert ids(out) == [4, 5]
    assert len(buf) == 5
    assert ids(torch.cat(buf.data)) == [1, 2, 3, 4, 5]


def test_replay_buffer_replaces_half_the_time_and_never_grows():
    buf = ReplayBuffer(max_size=10, rng=random.Random(1))
    buf.push_and_pop(batch(range(10)))
    draws, returned_old = 4000, 0
    for k in range(draws):
        new_id = 1000 + k
        out = buf.push_and_pop(batch([new_id]))
        assert len(buf) == 10
        if ids(out)[0] != new_id:
            returned_old += 1
            assert new_id in ids(buf.data)  # the new image took the returned one's place
    # Binomial(4000, 0.5): the standard deviation of the fraction is 0.008.
    assert returned_old / draws == pytest.approx(0.5, abs=0.03)


def test_replay_buffer_returns_copies_and_stores_copies():
    buf = ReplayBuffer(max_size=1, rng=random.Random(0))
    first = batch([7]).requires_grad_(True)
    buf.push_and_pop(first)
    assert not buf.data[0].requires_grad  # detached
    with torch.no_grad():
        first.fill_(-1)  # changing the caller's tensor does not change the stored one
    assert ids(buf.data) == [7]
    # Once full, a returned stored image is a clone: changing it leaves the pool alone.
    while True:
        out = buf.push_and_pop(batch([8]))
        if ids(out) == [7]:
            break
    out.fill_(0)
    assert ids(buf.data) == [8]


def test_replay_buffer_draws_as_the_reference_does_with_the_random_module():
    # The reference calls random.uniform, then random.randint for the slot; a model of it on ids:
    random.seed(3)
    pool, expected = [100, 101], []
    for k in range(30):
        if random.uniform(0, 1) > 0.5:
            i = random.randint(0, 1)
            expected.append(pool[i])
            pool[i] = k
        else:
            expected.append(k)
    random.seed(3)
    buf = ReplayBuffer(max_size=2, rng=random)
    buf.push_and_pop(batch([100, 101]))  # the fill phase draws nothing
    got = [ids(buf.push_and_pop(batch([k])))[0] for k in range(30)]
    assert got == expected
    assert ids(buf.data) == pool


def test_replay_buffer_keeps_the_device_and_rejects_bad_sizes():
    buf = ReplayBuffer(max_size=2)
    out = buf.push_and_pop(batch([1, 2, 3]).to(torch.float64))
    assert out.dtype == torch.float64 and out.device.type == "cpu" and len(buf) == 2
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_size"):
            ReplayBuffer(bad)


def test_lambda_lr_boundaries():
    rule = LambdaLR(n_epochs=200, offset=0, decay_start_epoch=100)
    assert rule.step(0) == 1.0
    assert rule.step(100) == 1.0
    assert rule.step(101) == pytest.approx(0.99)
    assert rule.step(150) == pytest.approx(0.5)
    assert rule.step(199) == pytest.approx(0.01)
    assert rule.step(200) == 0.0
    resumed = LambdaLR(n_epochs=200, offset=150, decay_start_epoch=100)
    assert resumed.step(0) == pytest.approx(0.5)  # a run restarted at epoch 150 continues the schedule


def test_lambda_lr_drives_torch_scheduler_per_epoch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LambdaLR(4, 0, 2).step)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5])


@pytest.mark.parametrize("n_epochs,decay", [(100, 100), (100, 150)])
def test_lambda_lr_refuses_decay_at_or_after_the_end(n_epochs, decay):
    with pytest.raises(ValueError, match="decay"):
        LambdaLR(n_epochs, 0, decay)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk died")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_psnr_known_values():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.2  # 0.1 on [0, 1]: MSE 0.01, 20 dB
    b[1] += 0.02  # 0.01 on [0, 1]: MSE 1e-4, 40 dB
    assert psnr(b, a).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)


def test_replace_dir_swaps_a_whole_folder_into_place(tmp_path):
    from cyclegan.utils import replace_dir

    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "b").write_text("newer")
    replace_dir(newer, target)
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no .target.old left


def test_atomic_writes_and_checkpoints_follow_the_umask_and_keep_any_file_name(tmp_path):
    from cyclegan.checkpoint import save_run_checkpoint

    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "report.txt", "w") as f:
            f.write(f"A {tmp_path / name}\n")
        save_run_checkpoint(tmp_path / "run", 3, {"net": torch.nn.Linear(2, 2)}, {"step": 3}, keep=2)
    finally:
        os.umask(old)
    report = tmp_path / "report.txt"
    assert report.read_bytes() == b"A " + os.fsencode(tmp_path) + b"/caf\xe9.png\n"
    assert report.stat().st_mode & 0o777 == 0o640
    folder = tmp_path / "run" / "checkpoints" / "resume" / "step_000000003"
    assert folder.stat().st_mode & 0o777 == 0o750
