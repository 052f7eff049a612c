"""Paired images for pix2pix: the two paired layouts, the dataset whose two halves of a pair share
one random augmentation, and procedural demo pairs.

Two layouts are read, for the split ``mode`` (``train``, ``val`` or ``test``):

- aligned, the official pix2pix format: ``root/<mode>/`` holds images directly, each pair side
  by side in one image, A on the left and B on the right (what the official
  ``datasets/combine_A_and_B.py`` writes); the width must be even, so that the halves are equal;
- folders: the two layouts this project reads for unpaired data (``root/<mode>/A`` and
  ``root/<mode>/B``, or ``root/<mode>A`` and ``root/<mode>B``), the files pairing by name with
  the extension aside (``A/0001.png`` with ``B/0001.jpg``: label maps are often PNG and photos JPEG).

The halves of a pair get the same crop and the same flip: the transform is applied to each with
torch's generator seeded alike. Folder pairs of different sizes are taken to show the same view
at two resolutions (a label map at half size, say): B is resized to A's size (bicubic) before
the transform, so that the crop takes the same part of both. Randomness follows ``ImageDataset``:
``dataset[i]`` draws from torch's global generator, ``dataset[(seed, epoch, i)]`` from one seeded
by ``datasets.sample_seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from cyclegan.datasets import DomainReader, FinetunePhase, compose_transforms, find_domain_dirs, sample_seed
from cyclegan.errors import BadImageError, CycleGANError
from cyclegan.images import IMG_EXTENSIONS, convert_image, list_images, open_image

__all__ = [
    "paired_layout",
    "require_paired",
    "pair_by_name",
    "PairedDataset",
    "demo_mapping",
    "write_demo_pairs",
]


# ---------------------------------------------------------------------------------------------
# Layouts


def _domain_dirs(root: Path, mode: str) -> tuple[Path, ...]:
    """The four folders either folder layout may use for split ``mode``."""
    return root / mode / "A", root / mode / "B", root / f"{mode}A", root / f"{mode}B"


def paired_layout(root: str | os.PathLike[str], mode: str = "train") -> str | None:
    """``"folders"`` when ``root`` has an A or B folder of split ``mode`` (in either folder
    layout), else ``"aligned"`` when ``root/<mode>/`` holds image files directly, else None."""
    root = Path(root)
    if any(folder.is_dir() for folder in _domain_dirs(root, mode)):
        return "folders"
    split = root / mode
    if split.is_dir() and any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in split.iterdir()):
        return "aligned"
    return None


def require_paired(root: str | os.PathLike[str], mode: str = "train") -> str:
    """The paired layout of split ``mode`` under ``root``; a one-line ``CycleGANError`` saying
    which layouts pix2pix reads when there is neither."""
    layout = paired_layout(root, mode)
    if layout is not None:
        return layout
    root = Path(root)
    state = "does not exist" if not root.is_dir() else f"holds no paired {mode} split"
    raise CycleGANError(
        f"dataset folder {root} {state}: pix2pix trains on pairs and reads two layouts: aligned ({root / mode} "
        f"holding images with A and B side by side, A on the left) or two folders whose files pair by name "
        f"({root / mode / 'A'} and {root / mode / 'B'}, or {root / (mode + 'A')} and {root / (mode + 'B')})"
    )


def _by_stem(files: Sequence[Path]) -> dict[str, Path]:
    """The files of one folder by name without extension; a name given twice is refused."""
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise CycleGANError(
                f"{found[path.stem]} and {path.name} have the same name: folder pairs match by name, extension "
                "aside, so each name may appear once per folder; rename or remove one"
            )
        found[path.stem] = path
    return found


def pair_by_name(dir_A: Path, dir_B: Path) -> tuple[list[Path], list[Path]]:
    """The images of ``dir_A`` and ``dir_B`` as two parallel lists, paired by name without the
    extension, in the order of A's names; refused when some file has no partner."""
    files_A, files_B = list_images(dir_A), list_images(dir_B)
    names_A, names_B = _by_stem(files_A), _by_stem(files_B)
    unmatched = [(p, dir_B) for p in files_A if p.stem not in names_B]
    unmatched += [(p, dir_A) for p in files_B if p.stem not in names_A]
    if unmatched:
        first, other = unmatched[0]
        raise CycleGANError(
            f"{first} has no partner of the same name in {other}: pix2pix pairs the files of {dir_A} and {dir_B} "
            f"by name (extension aside), and {len(unmatched)} of {len(files_A) + len(files_B)} files have none"
        )
    return files_A, [names_B[p.stem] for p in files_A]


# ---------------------------------------------------------------------------------------------
# The dataset


class PairedDataset(DomainReader, FinetunePhase, Dataset):
    """Pairs of images, A and its B: item ``i`` is pair ``i`` (in the order of the file names),
    as ``{"A": tensor, "B": tensor, "A_path": str, "B_path": str}``; the length is the number of
    pairs. (In the aligned layout both paths are the one image's.)

    The arguments are ``ImageDataset``'s, without ``unaligned``: ``transforms_`` a list of
    callables (what ``datasets.build_transforms`` returns) or one callable, applied to A and B
    alike; ``channels`` of A and ``channels_B`` of B (default ``channels``); ``direction="BtoA"``
    to swap A and B (in the aligned layout the right half becomes A); ``max_dataset_size`` to keep
    only the first pairs. ``files_A`` and ``files_B`` are parallel lists (the same list twice in
    the aligned layout), ``dir_A`` and ``dir_B`` their folders.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transforms_: Sequence[Callable[[Any], Any]] | Callable[[Any], Any] | None = None,
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
        self.domains: dict[str, Any] = {"A": None, "B": None}
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
        self.transform_A, self.transform_B = (compose_transforms(transforms_, c) for c in (channels, channels_B))
        self.mode, self.direction = mode, direction
        self.channels, self.channels_B = channels, channels_B
        self.layout = require_paired(root, mode)
        if self.layout == "aligned":
            self.dir_A = self.dir_B = Path(root) / mode
            files = list_images(self.dir_A)[:max_dataset_size]
            self.files_A, self.files_B = files, list(files)
        else:
            dir_A, dir_B = find_domain_dirs(root, mode)
            if direction == "BtoA":
                dir_A, dir_B = dir_B, dir_A
            self.dir_A, self.dir_B = dir_A, dir_B
            files_A, files_B = pair_by_name(dir_A, dir_B)
            self.files_A, self.files_B = files_A[:max_dataset_size], files_B[:max_dataset_size]

    def __len__(self) -> int:
        return len(self.files_A)

    def exclude(self, bad: set[Path]) -> None:
        """Leave out every pair with a file in ``bad`` (either side)."""
        kept = [(a, b) for a, b in zip(self.files_A, self.files_B) if a not in bad and b not in bad]
        self.files_A, self.files_B = [a for a, _ in kept], [b for _, b in kept]

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        """``dataset[i]`` draws from torch's global generator; ``dataset[(seed, epoch, i)]`` (what
        ``EpochSampler`` yields) from one seeded by the three numbers, as ``ImageDataset`` does."""
        if isinstance(key, tuple):
            seed, epoch, index = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(seed, epoch, index))
                return self._item(index, epoch)
        return self._item(key)

    def _item(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        path_A, path_B = self.files_A[index], self.files_B[index]
        if self.layout == "aligned":
            img_A, img_B = self._halves(path_A)
        else:
            img_A, img_B = self.read(path_A, "A"), self.read(path_B, "B")
            if img_B.size != img_A.size:
                img_B = img_B.resize(img_A.size, Image.BICUBIC)
        seed = int(torch.randint(0, 2**63 - 1, (1,)).item())  # one draw: both halves augmented alike
        transform_A, transform_B = self.transforms_at(epoch)
        item_A = _seeded(transform_A, img_A, seed)
        item_B = _seeded(transform_B, img_B, seed)
        return {"A": item_A, "B": item_B, "A_path": str(path_A), "B_path": str(path_B)}

    def _halves(self, path: Path) -> tuple[Image.Image, Image.Image]:
        """An aligned image's A and B (left and right halves, swapped for BtoA), each converted
        for its channels as a whole image first (16-bit grey is scaled by the whole image's range)."""
        raw = _load(path, None)
        w, h = raw.size
        if w % 2:
            raise BadImageError(
                f"{path} is {w}x{h} pixels, an odd width: an aligned pair holds A (left) and B (right) side by "
                "side at equal widths, so its width must be even"
            )
        whole = {c: _convert(raw, c, path) for c in {self.channels, self.channels_B}}
        left, right = (0, 0, w // 2, h), (w // 2, 0, w, h)
        box_A, box_B = (right, left) if self.direction == "BtoA" else (left, right)
        return whole[self.channels].crop(box_A), whole[self.channels_B].crop(box_B)


def _seeded(transform: Callable[[Any], Any], img: Image.Image, seed: int) -> torch.Tensor:
    """``transform(img)`` with torch's generator seeded by ``seed``, the caller's state kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)


_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _read_error(path: Path, exc: Exception) -> BadImageError:
    return BadImageError(f"{path} could not be read during training ({type(exc).__name__}: {exc})")


def _load(path: Path, channels: int | None) -> Image.Image:
    """The decoded image, upright, converted for ``channels`` (None: in its own mode); failures
    one ``BadImageError`` naming the file, as ``datasets`` reports them."""
    try:
        img = open_image(path)
        return img if channels is None else convert_image(img, channels)
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from None


def _convert(img: Image.Image, channels: int, path: Path) -> Image.Image:
    """``convert_image`` on the decoded ``path``, its failures reported as ``_load``'s."""
    try:
        return convert_image(img, channels)
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from None


# ---------------------------------------------------------------------------------------------
# Demo pairs

DEMO_PALETTE = ((225, 60, 50), (40, 160, 90), (50, 90, 220), (240, 200, 60), (235, 235, 225), (35, 30, 45))
EDGE_SCALE = 128.0  # Sobel magnitude (of 0..255 luminance) that makes a full outline


def demo_mapping(a: np.ndarray) -> np.ndarray:
    """The fixed A -> B mapping of the demo pairs, on ``(H, W, 3)`` uint8 arrays: the colours
    inverted with the channel order reversed, darkened by an outline where A's luminance has an
    edge (its Sobel magnitude). Neither the identity nor any constant comes close, and every
    output pixel is a function of a 3x3 neighbourhood, which a small convolutional net learns."""
    x = a.astype(np.float64)
    colour = 255.0 - x[..., ::-1]
    lum = np.pad(x @ np.array([0.299, 0.587, 0.114]), 1, mode="edge")
    gx = (lum[:-2, 2:] + 2 * lum[1:-1, 2:] + lum[2:, 2:]) - (lum[:-2, :-2] + 2 * lum[1:-1, :-2] + lum[2:, :-2])
    gy = (lum[2:, :-2] + 2 * lum[2:, 1:-1] + lum[2:, 2:]) - (lum[:-2, :-2] + 2 * lum[:-2, 1:-1] + lum[:-2, 2:])
    edge = np.clip(np.hypot(gx, gy) / EDGE_SCALE, 0.0, 1.0)[..., None]
    return np.clip(colour * (1.0 - edge), 0, 255).round().astype(np.uint8)


def _demo_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two to four soft-edged shapes of the palette's colours on a ground of another colour."""
    scale = 4  # drawn large, then downsampled, for anti-aliased edges
    colours = rng.permutation(len(DEMO_PALETTE))
    canvas = Image.new("RGB", (size * scale, size * scale), DEMO_PALETTE[colours[0]])
    draw = ImageDraw.Draw(canvas)
    for k in range(int(rng.integers(2, 5))):
        fill = DEMO_PALETTE[colours[1 + k % (len(DEMO_PALETTE) - 1)]]
        r = rng.uniform(0.12, 0.3) * size * scale
        cx, cy = rng.uniform(r, size * scale - r, 2)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    canvas = canvas.filter(ImageFilter.GaussianBlur(scale))
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def write_demo_pairs(
    root: str | os.PathLike[str], size: int = 32, count: int = 64, *, n_test: int = 8, seed: int = 0
) -> Path:
    """Write procedural pairs in the folder layout under ``root`` and return ``root``:
    ``train/A``, ``train/B`` (``count`` pairs) and ``test/A``, ``test/B`` (``n_test`` pairs) of
    ``size`` x ``size`` PNGs, ``B/k.png`` being ``demo_mapping`` of ``A/k.png``. The same seed
    writes the same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("test", n_test)):
        for domain in ("A", "B"):
            (root / split / domain).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            a = _demo_scene(rng, size)
            Image.fromarray(a).save(root / split / "A" / f"{k:04d}.png")
            Image.fromarray(demo_mapping(a)).save(root / split / "B" / f"{k:04d}.png")
    return root
