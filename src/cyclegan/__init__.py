"""CycleGAN: unpaired image-to-image translation in PyTorch.

The names users of the reference code know live where they expect them:
``cyclegan.models`` (GeneratorResNet, Discriminator, ResidualBlock, weights_init_normal),
``cyclegan.datasets`` (ImageDataset), ``cyclegan.utils`` (ReplayBuffer, LambdaLR) and
``cyclegan.train`` (the training loop, ``main(argv)``).
"""

from cyclegan.errors import CycleGANError
from cyclegan.runtime import settle_vector_math
from cyclegan.models import Discriminator, GeneratorResNet, ResidualBlock, weights_init_normal
from cyclegan.utils import LambdaLR, ReplayBuffer

__version__ = "0.1.0"

settle_vector_math()  # before any computation whose bits a run keeps (see its docstring)

__all__ = [
    "CycleGANError",
    "Discriminator",
    "GeneratorResNet",
    "LambdaLR",
    "ReplayBuffer",
    "ResidualBlock",
    "weights_init_normal",
    "__version__",
]
