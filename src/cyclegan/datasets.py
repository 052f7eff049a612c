"""Folders of images -> tensors: the dataset layouts, the training transforms, the dataset and
its sampler, and the built-in demo data. (Files are opened and decoded by ``images``.)

Two layouts are read, for the split ``mode`` (``train`` or ``test``):

- the reference layout: ``root/train/A``, ``root/train/B``, ``root/test/A``, ``root/test/B``;
- the official CycleGAN layout: ``root/trainA``, ``root/trainB``, ``root/testA``, ``root/testB``.

Image files are found by extension in any case (.jpg .jpeg .png .bmp .webp .tif .tiff) and
decoded by ``images.load_image``: upright by their EXIF orientation, any mode made RGB, or one
grey channel when ``channels=1``. All randomness (crops, flips, the unaligned B image) draws
from torch's generator: the global one for ``dataset[i]``, as in the reference, or one seeded
per sample for the ``(seed, epoch, index)`` keys that ``EpochSampler`` yields in training, which
makes the data order a function of the seed and the position (exact resume, any number of
workers or ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from cyclegan.errors import BadImageError, CycleGANError
from cyclegan.images import list_images, load_image, to_unit_tensor
from cyclegan.science import Domain, Planes, Slice, read_array, to_unit

__all__ = [
    "DEMO_DATASET",
    "ImageDataset",
    "compose_transforms",
    "Compose",
    "ResizeCover",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomRot90",
    "ToTensor",
    "Normalize",
    "CenterCrop",
    "Resize",
    "ScaleWidth",
    "MakeMultiple",
    "build_transforms",
    "EpochSampler",
    "sample_seed",
    "has_split",
    "reference_transforms",
    "test_transforms",
    "find_domain_dirs",
    "DemoScenes",
    "write_demo_dataset",
]

DEMO_DATASET = "demo"  # --dataset_name of the built-in demo data (DemoScenes)


# ---------------------------------------------------------------------------------------------
# Layouts


def find_domain_dirs(root: str | os.PathLike[str], mode: str = "train") -> tuple[Path, Path]:
    """The folders of domains A and B of split ``mode`` under ``root``, in either layout."""
    root = Path(root)
    if not root.is_dir():
        raise CycleGANError(
            f"dataset folder {root} does not exist: give the folder that holds {mode}/A and {mode}/B "
            f"(or {mode}A and {mode}B) with --dataroot, or put the data under data/<dataset_name>"
        )
    for a, b in ((root / mode / "A", root / mode / "B"), (root / f"{mode}A", root / f"{mode}B")):
        if a.is_dir() or b.is_dir():
            for folder in (a, b):
                if not folder.is_dir():
                    raise CycleGANError(f"dataset folder {folder} is missing: put the images of that domain there")
            return a, b
    raise CycleGANError(
        f"dataset folder {root} has no {mode} split: expected {root / mode / 'A'} and {root / mode / 'B'} "
        f"(reference layout) or {root / (mode + 'A')} and {root / (mode + 'B')} (official layout)"
    )


def has_split(root: str | os.PathLike[str], mode: str) -> bool:
    """Whether ``root`` holds split ``mode`` in either layout."""
    root = Path(root)
    return (root / mode / "A").is_dir() or (root / f"{mode}A").is_dir()


# ---------------------------------------------------------------------------------------------
# Transforms (Pillow image -> tensor), written without torchvision


class Compose:
    """Apply callables in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class ResizeCover:
    """Resize, keeping the aspect ratio, to the smallest size that covers ``height`` x ``width``.

    For a square target this is torchvision's ``Resize(size)``: the shorter side becomes
    ``size`` and the longer one ``int(size * long / short)``.
    """

    def __init__(self, height: int, width: int, resample: int = Image.BICUBIC) -> None:
        self.height, self.width, self.resample = int(height), int(width), resample

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if self.height / h >= self.width / w:
            new_h, new_w = self.height, max(self.width, int(self.height * w / h))
        else:
            new_w, new_h = self.width, max(self.height, int(self.width * h / w))
        if (new_w, new_h) == (w, h):
            return img
        return img.resize((new_w, new_h), self.resample)


class RandomCrop:
    """Crop a random ``height`` x ``width`` window (the image must be at least that large)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if h < self.height or w < self.width:
            raise ValueError(f"image of {w}x{h} is smaller than the crop {self.width}x{self.height}")
        top = int(torch.randint(0, h - self.height + 1, (1,)).item())
        left = int(torch.randint(0, w - self.width + 1, (1,)).item())
        return img.crop((left, top, left + self.width, top + self.height))


class CenterCrop(RandomCrop):
    """Crop the central ``height`` x ``width`` window."""

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return img.crop((left, top, left + self.width, top + self.height))


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    FLIP = Image.FLIP_LEFT_RIGHT

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() < self.p:
            return img.transpose(self.FLIP)
        return img


class RandomVerticalFlip(RandomHorizontalFlip):
    """Mirror top-bottom with probability ``p`` (``--vflip``: for data with no up and down, such as
    microscopy or satellite images)."""

    FLIP = Image.FLIP_TOP_BOTTOM


class RandomRot90:
    """Rotate by a multiple of 90 degrees drawn uniformly (``--rot90``): 0, 90, 180 or 270 for a
    square image; 0 or 180 for another, whose sides a quarter turn would swap."""

    TURNS = {1: Image.ROTATE_90, 2: Image.ROTATE_180, 3: Image.ROTATE_270}

    def __call__(self, img: Image.Image) -> Image.Image:
        square = img.width == img.height
        k = int(torch.randint(0, 4 if square else 2, ()).item()) * (1 if square else 2)
        return img.transpose(self.TURNS[k]) if k else img


class ToTensor:
    """8-bit Pillow image (or a scientific image's ``science.Planes``) -> float tensor ``(C, H, W)``
    in [0, 1]."""

    def __call__(self, img: Image.Image | Planes) -> torch.Tensor:
        return img.unit_tensor() if isinstance(img, Planes) else to_unit_tensor(img)


class Normalize:
    """``(x - mean) / std`` per channel; with 0.5 and 0.5, [0, 1] -> [-1, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def reference_transforms(height: int, width: int, channels: int = 3) -> list[Callable[[Any], Any]]:
    """The reference's training transform: resize to 1.12x (bicubic), random crop, random flip, [-1, 1]."""
    return build_transforms("reference", height, width, channels=channels)


class Resize:
    """Resize to exactly ``width`` x ``height`` (bicubic): the official ``resize`` step."""

    def __init__(self, height: int, width: int, resample: int = Image.BICUBIC) -> None:
        self.height, self.width, self.resample = int(height), int(width), resample

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.width, self.height):
            return img
        return img.resize((self.width, self.height), self.resample)


class ScaleWidth:
    """The official ``scale_width``: width to ``target``, height keeping the aspect ratio but at
    least ``min_height``; here both sides are then rounded to a multiple of 4, so that the
    generator gives back the size it was given (the official code fails on other sizes)."""

    def __init__(self, target: int, min_height: int) -> None:
        self.target, self.min_height = int(target), int(min_height)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        new_h = max(4, round(max(int(self.target * h / w), self.min_height) / 4) * 4)
        new_w = max(4, round(self.target / 4) * 4)
        if (w, h) == (new_w, new_h):
            return img
        return img.resize((new_w, new_h), Image.BICUBIC)


class MakeMultiple:
    """The official ``none`` preprocessing: round each side to the nearest multiple of ``base``."""

    def __init__(self, base: int = 4) -> None:
        self.base = base

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        new = (max(self.base, round(w / self.base) * self.base), max(self.base, round(h / self.base) * self.base))
        return img if new == (w, h) else img.resize(new, Image.BICUBIC)


def build_transforms(
    preprocess: str, height: int, width: int, load_size: int | None = None, flip: bool = True, channels: int = 3,
    finetune: bool = False, vflip: bool = False, rot90: bool = False,
) -> list[Callable[[Any], Any]]:
    """The training transform for a ``--preprocess`` mode (see ``options.PREPROCESS_MODES``).

    ``reference`` is the reference design's (``reference_transforms``); the others are the
    official repository's, with ``load_size`` its resize size (default 1.12x the crop).
    ``finetune``: the official CUT's fine-tuning phase, where the resize size is the crop size
    (the whole image, resized, is what the network sees; ``reference`` resizes to cover the crop
    instead of 1.12x it). ``vflip`` and ``rot90`` add random vertical flips and quarter turns
    after the left-right flip (off by default: the reference's transform draws nothing more).
    """
    load = max(height, width) if finetune else load_size or int(max(height, width) * 1.12)
    scale = 1.0 if finetune else 1.12
    steps: list[Callable[[Any], Any]]
    if preprocess == "reference":
        steps = [ResizeCover(int(height * scale), int(width * scale), Image.BICUBIC), RandomCrop(height, width)]
    elif preprocess == "resize_and_crop":
        steps = [Resize(load, load), RandomCrop(height, width)]
    elif preprocess == "crop":
        steps = [RandomCrop(height, width)]
    elif preprocess == "scale_width":
        steps = [ScaleWidth(load, height)]
    elif preprocess == "scale_width_and_crop":
        steps = [ScaleWidth(load, height), RandomCrop(height, width)]
    elif preprocess == "none":
        steps = [MakeMultiple(4)]
    else:
        raise ValueError(f"unknown preprocess mode {preprocess!r}")
    if flip:
        steps.append(RandomHorizontalFlip())
    if vflip:
        steps.append(RandomVerticalFlip())
    if rot90:
        steps.append(RandomRot90())
    return steps + [ToTensor(), Normalize((0.5,) * channels, (0.5,) * channels)]


def test_transforms(height: int, width: int, channels: int = 3) -> list[Callable[[Any], Any]]:
    """For sample grids and evaluation: resize to cover the training size, centre crop, [-1, 1]."""
    return [
        ResizeCover(height, width, Image.BICUBIC),
        CenterCrop(height, width),
        ToTensor(),
        Normalize((0.5,) * channels, (0.5,) * channels),
    ]


# ---------------------------------------------------------------------------------------------
# The dataset


def compose_transforms(transforms_: Any, channels: int) -> Callable[[Any], Any]:
    """``transforms_`` (a list of callables, one callable, or None for ToTensor and Normalize) as
    one callable whose final ``Normalize`` fits ``channels``: one transform list serves an RGB A
    and a grey B."""
    if transforms_ is None:
        return Compose([ToTensor(), Normalize((0.5,) * channels, (0.5,) * channels)])
    if isinstance(transforms_, (list, tuple)):
        steps = list(transforms_)
        if steps and isinstance(steps[-1], Normalize) and steps[-1].mean.numel() != channels:
            steps[-1] = Normalize((0.5,) * channels, (0.5,) * channels)
        return Compose(steps)
    return transforms_


class FinetunePhase:
    """The official CUT's fine-tuning phase for a dataset with ``transform_A``, ``transform_B``,
    ``channels`` and ``channels_B``: keyed items (``dataset[(seed, epoch, i)]``) of epoch ``start``
    and later use the fine-tuning transforms (``finetune_from``); before it, and unkeyed, the
    dataset's own. The phase follows the epoch in the key, so a resumed run is in the right one."""

    finetune: tuple[int, Callable[[Any], Any], Callable[[Any], Any]] | None = None
    transform_A: Callable[[Any], Any]
    transform_B: Callable[[Any], Any]
    channels: int
    channels_B: int

    def finetune_from(self, start: int, transforms_: Sequence[Callable[[Any], Any]]) -> None:
        """Use ``transforms_`` for the items of epoch ``start`` (0-based) on."""
        self.finetune = (start, compose_transforms(transforms_, self.channels),
                         compose_transforms(transforms_, self.channels_B))

    def transforms_at(self, epoch: int | None) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """The transforms of A and B for an item of ``epoch`` (None: unkeyed)."""
        if self.finetune is not None and epoch is not None and epoch >= self.finetune[0]:
            return self.finetune[1], self.finetune[2]
        return self.transform_A, self.transform_B


class DomainReader:
    """Reads one image of side ``A`` or ``B`` for a dataset with ``channels``, ``channels_B`` and
    ``domains``: an 8-bit photograph through ``images.load_image`` (as ever), the files of a
    scientific domain (``domains[side]``, a ``science.Domain`` the loader settles; or, for a
    dataset used on its own with other than 1 or 3 channels, each file's type range) as
    ``science.Planes`` at full precision."""

    channels: int
    channels_B: int
    domains: dict[str, Domain | None]

    def read(self, item: Path | Slice, side: str) -> Image.Image | Planes:
        channels = self.channels if side == "A" else self.channels_B
        domain = self.domains.get(side)
        if domain is None and channels in (1, 3) and not isinstance(item, Slice):
            return _load(item, channels)
        try:
            array, _ = read_array(item)
        except (CycleGANError, OSError, ValueError) as exc:
            raise BadImageError(f"{item} could not be read during training ({exc})") from None
        domain = domain or Domain.for_file(array)
        if array.shape[2] != channels or str(array.dtype) != domain.dtype:
            raise BadImageError(f"{item} holds {array.dtype} in {array.shape[2]} channel(s), not the {domain.dtype} in "
                                f"{channels} of the files checked when the run started; it changed since")
        return Planes(to_unit(array, domain))


class ImageDataset(DomainReader, FinetunePhase, Dataset):
    """Unpaired images of two domains: item ``i`` is image ``i`` of A and, when ``unaligned``, a
    random image of B (else image ``i`` of B); the length is that of the larger domain.

    Items are dicts ``{"A": tensor, "B": tensor, "A_path": str, "B_path": str}``.

    Beyond the reference's arguments: ``channels`` (of A, and of B unless ``channels_B`` is
    given), ``direction="BtoA"`` to swap the domains, and ``max_dataset_size`` to keep only the
    first images of each domain by name. ``transforms_`` is a list of callables (composed) or
    one callable; its last steps must give a tensor for the image's channel count.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transforms_: Sequence[Callable[[Any], Any]] | Callable[[Any], Any] | None = None,
        unaligned: bool = False,
        mode: str = "train",
        channels: int = 3,
        *,
        channels_B: int | None = None,
        direction: str = "AtoB",
        max_dataset_size: int | None = None,
    ) -> None:
        channels_B = channels if channels_B is None else channels_B
        for c in (channels, channels_B):
            if c < 1:
                raise CycleGANError(f"--channels must be 1 or more, got {c}")
        self.transform_A, self.transform_B = (
            compose_transforms(transforms_, c) for c in (channels, channels_B)
        )
        self.domains = {"A": None, "B": None}
        self.unaligned = unaligned
        self.mode = mode
        self.channels, self.channels_B = channels, channels_B
        dir_A, dir_B = find_domain_dirs(root, mode)
        if direction == "BtoA":
            dir_A, dir_B = dir_B, dir_A
        elif direction != "AtoB":
            raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
        self.dir_A, self.dir_B = dir_A, dir_B
        self.files_A = list_images(self.dir_A)[:max_dataset_size]
        self.files_B = list_images(self.dir_B)[:max_dataset_size]

    def __len__(self) -> int:
        return max(len(self.files_A), len(self.files_B))

    def exclude(self, bad: set[Path]) -> None:
        """Leave out the files in ``bad``."""
        self.files_A = [p for p in self.files_A if p not in bad]
        self.files_B = [p for p in self.files_B if p not in bad]

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        """``dataset[i]`` draws from torch's global generator, as the reference does;
        ``dataset[(seed, epoch, i)]`` (what ``EpochSampler`` yields) draws from a generator seeded
        by the three numbers, so a sample is the same whichever worker loads it, and a run
        resumed in the middle of an epoch sees exactly the samples it would have seen."""
        if isinstance(key, tuple):
            seed, epoch, index = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(seed, epoch, index))
                return self._item(index, epoch)
        return self._item(key)

    def _item(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        path_A = self.files_A[index % len(self.files_A)]
        if self.unaligned:
            path_B = self.files_B[int(torch.randint(0, len(self.files_B), (1,)).item())]
        else:
            path_B = self.files_B[index % len(self.files_B)]
        transform_A, transform_B = self.transforms_at(epoch)
        item_A = transform_A(self.read(path_A, "A"))
        item_B = transform_B(self.read(path_B, "B"))
        return {"A": item_A, "B": item_B, "A_path": str(path_A), "B_path": str(path_B)}


def _load(path: Path, channels: int) -> Image.Image:
    """``load_image``, its failures one ``BadImageError`` naming the file (also from a loader
    worker, where the message reaches the main process as the last line of a traceback)."""
    try:
        return load_image(path, channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"{path} could not be read during training ({type(exc).__name__}: {exc})") from None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``epoch`` of a run seeded ``seed``."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    return x % 2**63


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(seed, epoch, index)`` keys for ``ImageDataset``: the order of epoch ``e`` is a
    permutation seeded by ``(seed, e)`` (or ``0..n-1`` without shuffling), started at ``start``.

    The whole data order is a function of the seed, the epoch and the position, so a run can
    stop anywhere and resume exactly with ``set_epoch(e, start=position)``.

    With ``world_size`` > 1 each rank takes its ``batch_size`` slice of every global batch of
    ``batch_size * world_size`` keys (the last global batch filled from the epoch's start), so N
    processes see together exactly what one process sees with an N times larger batch. ``start``
    then counts this rank's keys.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size == 1:
            return order
        step = self.batch_size * self.world_size
        padded = order + order[: (-len(order)) % step]
        mine = []
        for start in range(0, len(padded), step):
            first = start + self.rank * self.batch_size
            mine += padded[first : first + self.batch_size]
        return mine

    def __iter__(self):
        for index in self.order(self.epoch)[self.start:]:
            yield (self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.order(self.epoch)) - self.start if self.world_size > 1 else self.n - self.start


# ---------------------------------------------------------------------------------------------
# Built-in demo data


@dataclass(frozen=True)
class DemoScenes:
    """Procedural scenes for the built-in demo, with a hidden mapping from domain A to domain B.

    Domain A: one to three soft-edged cream shapes (disc, square, triangle) of random size and
    place on a dark blue ground. Domain B: the photographic negative of such scenes (``b = 255 - a``
    on 8 bits, ``-a`` on [-1, 1]): dark blue shapes on a light orange ground. Training sees
    unrelated scenes in A and B; the test split pairs each A with its true B, so a trained G_AB
    can be scored against the truth.

    Why these choices: the generator's instance norms make it blind to an input's mean colour
    and contrast, so the colours are fixed and the information lies in the shapes; soft edges
    keep the task within reach of a few hundred CPU steps at 32x32.
    """

    size: int = 32

    BACKGROUND = (24, 48, 110)
    SHAPE = (245, 235, 200)
    SOFTNESS = 1.5  # Gaussian blur of the edges, in pixels

    @staticmethod
    def mapping(a: np.ndarray) -> np.ndarray:
        """The hidden mapping A -> B on uint8 arrays."""
        return 255 - a

    def scene(self, rng: np.random.Generator) -> np.ndarray:
        """One domain-A scene as a ``(size, size, 3)`` uint8 array."""
        s = self.size
        scale = 4  # draw large, then downsample, for anti-aliased edges
        canvas = Image.new("RGB", (s * scale, s * scale), self.BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.12, 0.28) * s * scale
            cx, cy = rng.uniform(r, s * scale - r, 2)
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=self.SHAPE)
            elif kind == 1:
                draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=self.SHAPE)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=self.SHAPE)
        canvas = canvas.filter(ImageFilter.GaussianBlur(self.SOFTNESS * scale))
        return np.asarray(canvas.resize((s, s), Image.LANCZOS), dtype=np.uint8)


def write_demo_dataset(
    root: str | os.PathLike[str], n_train: int = 200, n_test: int = 16, size: int = 32, seed: int = 0,
    paired: bool = False,
) -> Path:
    """Write the demo data in the reference layout under ``root`` and return ``root``.

    ``train/A`` and ``train/B`` hold ``n_train`` unrelated scenes each (with ``paired``, for
    pix2pix: ``train/B/k.png`` is the translation of ``train/A/k.png``); ``test/A`` and ``test/B``
    hold ``n_test`` pairs (``test/B/k.png`` is the true translation of ``test/A/k.png``). The same
    seed writes the same files.
    """
    root = Path(root)
    scenes = DemoScenes(size)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for domain in ("A", "B"):
            (root / split / domain).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            a = scenes.scene(rng)
            if split == "train" and not paired:
                b = scenes.mapping(scenes.scene(rng))  # an unrelated scene: the data are unpaired
            else:
                b = scenes.mapping(a)
            Image.fromarray(a).save(root / split / "A" / f"{k:04d}.png")
            Image.fromarray(b).save(root / split / "B" / f"{k:04d}.png")
    return root
