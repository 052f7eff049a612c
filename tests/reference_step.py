"""The reference design's training step, transcribed literally from PyTorch-GAN's cyclegan.py: the
oracle that ``cyclegan.train.train_step`` is tested against, and the baseline of
``benchmarks/train_step.py``. Do not optimise it."""

import itertools

import torch


def reference_optimizers(nets, lr=0.0002, b1=0.5, b2=0.999):
    """The reference's three Adam optimizers (PyTorch's defaults otherwise)."""
    return {
        "G": torch.optim.Adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()), lr=lr,
                              betas=(b1, b2)),
        "D_A": torch.optim.Adam(nets["D_A"].parameters(), lr=lr, betas=(b1, b2)),
        "D_B": torch.optim.Adam(nets["D_B"].parameters(), lr=lr, betas=(b1, b2)),
    }


def reference_step(nets, opts, pools, real_A, real_B, lambda_cyc=10.0, lambda_id=5.0):
    G_AB, G_BA, D_A, D_B = nets["G_AB"], nets["G_BA"], nets["D_A"], nets["D_B"]
    criterion_GAN, criterion_cycle, criterion_identity = torch.nn.MSELoss(), torch.nn.L1Loss(), torch.nn.L1Loss()
    # The reference builds these as (cuda.)FloatTensor on the training device.
    valid = torch.ones((real_A.size(0), *D_A.output_shape), device=real_A.device, dtype=real_A.dtype)
    fake = torch.zeros((real_A.size(0), *D_A.output_shape), device=real_A.device, dtype=real_A.dtype)
    G_AB.train()
    G_BA.train()
    opts["G"].zero_grad()
    loss_identity = (criterion_identity(G_BA(real_A), real_A) + criterion_identity(G_AB(real_B), real_B)) / 2
    fake_B = G_AB(real_A)
    loss_GAN_AB = criterion_GAN(D_B(fake_B), valid)
    fake_A = G_BA(real_B)
    loss_GAN_BA = criterion_GAN(D_A(fake_A), valid)
    loss_GAN = (loss_GAN_AB + loss_GAN_BA) / 2
    loss_cycle = (criterion_cycle(G_BA(fake_B), real_A) + criterion_cycle(G_AB(fake_A), real_B)) / 2
    loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity
    loss_G.backward()
    opts["G"].step()
    opts["D_A"].zero_grad()
    loss_real = criterion_GAN(D_A(real_A), valid)
    loss_fake = criterion_GAN(D_A(pools["A"].push_and_pop(fake_A).detach()), fake)
    loss_D_A = (loss_real + loss_fake) / 2
    loss_D_A.backward()
    opts["D_A"].step()
    opts["D_B"].zero_grad()
    loss_real = criterion_GAN(D_B(real_B), valid)
    loss_fake = criterion_GAN(D_B(pools["B"].push_and_pop(fake_B).detach()), fake)
    loss_D_B = (loss_real + loss_fake) / 2
    loss_D_B.backward()
    opts["D_B"].step()
    return {"D": (loss_D_A + loss_D_B) / 2, "G": loss_G, "adv": loss_GAN, "cycle": loss_cycle,
            "identity": loss_identity}
