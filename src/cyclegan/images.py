"""Every image file is read and written here, the same way for training and for inference.

Reading: ``open_image`` applies the EXIF orientation (a phone photo stored sideways comes out
upright) and decodes the whole file; ``convert_image`` turns any mode into RGB or 8-bit grey:
16-bit grey is scaled to 8 bits by one fixed rule (``round(v * 255 / 65535)``, whatever the
image holds, so that frames of one sensor keep one scale); 32-bit integer grey the same, unless
every value fits in 8 bits (8-bit data stored wide: kept); float grey in [0, 1] is scaled by
255, else taken as 0..255; palette images go through their palette (and transparency), CMYK
and grey become RGB, and alpha is dropped from the pixels (``read_image`` returns it apart, so
that a translation can carry it again). ``load_image`` gives the converted Pillow image (what
the training transforms start from); ``read_image`` the same pixels as a tensor in [-1, 1], with
exactly the arithmetic of ``datasets.ToTensor`` + ``Normalize(0.5, 0.5)``.

Writing: ``tensor_to_image`` is the one conversion of a tensor in [-1, 1] to 8-bit pixels;
``write_image`` and ``save_image`` write atomically (a temporary file renamed into place), in the
format the suffix names. ``scan_images`` checks that files decode before a run starts.
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cyclegan.errors import CycleGANError
from cyclegan.utils import atomic_write

__all__ = [
    "IMG_EXTENSIONS",
    "is_image_name",
    "list_images",
    "open_image",
    "convert_image",
    "load_image",
    "read_image",
    "to_unit_tensor",
    "image_to_tensor",
    "tensor_to_image",
    "with_alpha",
    "write_image",
    "save_image",
    "make_grid",
    "check_image",
    "scan_images",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
QUALITY = {"JPEG": 95, "WEBP": 95}  # lossy formats: near-lossless quality
ORIENTATION = 0x0112  # the EXIF tag


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of ``IMG_EXTENSIONS`` (any case); .npy and NIfTI files are
    read by ``science``."""
    return Path(path).name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; extensions match in any case."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
    if not files:
        raise CycleGANError(
            f"{folder} holds no image files: put images there ({', '.join(IMG_EXTENSIONS)}, any case)"
        )
    return files


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """The decoded image of ``path``, turned upright by its EXIF orientation, in its own mode."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img)
        upright.load()
        return upright


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits (modes I, I;16*, F) as 8-bit grey."""
    array = np.asarray(img)
    if img.mode == "F":
        top = 1.0 if float(array.max(initial=0.0)) <= 1.0 else 255.0
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:
        top = 255.0 if int(array.max(initial=0)) <= 255 else 65535.0
    scaled = np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def convert_image(img: Image.Image, channels: int = 3) -> Image.Image:
    """``img`` as RGB (``channels=3``) or 8-bit grey (``channels=1``), whatever its mode; alpha
    is dropped (as the official code does)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit_grey(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)
    return img


def load_image(path: str | os.PathLike[str], channels: int = 3) -> Image.Image:
    """Open ``path`` (upright, fully decoded) and convert it for ``channels``."""
    return convert_image(open_image(path), channels)


def to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit image as a float tensor ``(C, H, W)`` in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float().div_(255.0)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit image as a float tensor ``(C, H, W)`` in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    return to_unit_tensor(img).sub_(0.5).div_(0.5)


def read_image(path: str | os.PathLike[str], channels: int) -> tuple[torch.Tensor, Image.Image | None, tuple[int, int]]:
    """The image as a ``(1, C, H, W)`` tensor in [-1, 1] (the pixels of ``load_image``), its
    alpha channel if it has one (upright, as the pixels), and its size ``(width, height)``."""
    img = open_image(path)
    alpha = img.convert("RGBA").getchannel("A") if _has_alpha(img) else None
    img = convert_image(img, channels)
    return image_to_tensor(img)[None], alpha, img.size


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """A ``(C, H, W)`` tensor in [-1, 1] (C = 1 or 3) as an 8-bit Pillow image (L or RGB)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array_np = array.permute(1, 2, 0).numpy()
    if array_np.shape[2] == 1:
        return Image.fromarray(array_np[:, :, 0], mode="L")
    return Image.fromarray(array_np, mode="RGB")


def image_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format a file name's suffix asks for."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise CycleGANError(f"cannot tell the image format of {path}: use .png, .jpg or .webp")
    return fmt


def with_alpha(image: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """``image`` (RGB or L) with ``alpha`` as its alpha channel (RGBA or LA); as it is without one."""
    if alpha is None:
        return image
    image = image.convert("RGBA" if image.mode == "RGB" else "LA")
    image.putalpha(alpha)
    return image


def write_image(image: Image.Image, path: str | os.PathLike[str], alpha: Image.Image | None = None) -> None:
    """Write ``image`` to ``path`` atomically, in the format of its suffix (JPEG and WebP at
    quality 95); ``alpha`` is put back where the format keeps it (PNG, WebP)."""
    fmt = image_format(path)
    if fmt in ("PNG", "WEBP"):
        image = with_alpha(image, alpha)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": QUALITY[fmt]} if fmt in QUALITY else {}))
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def save_image(image: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a ``(C, H, W)`` tensor in [-1, 1] to ``path`` atomically; the format follows the suffix."""
    write_image(tensor_to_image(image), path)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile a batch ``(N, C, H, W)`` into one image ``(C, H', W')``, ``nrow`` images per row."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects a batch (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = images.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def check_image(path: Path, min_size: tuple[int, int] | None = None, min_label: str = "the crop") -> str | None:
    """Why ``path`` cannot be used, or None when it decodes (and is at least ``min_size`` = (w, h))."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            if img.width * img.height > Image.MAX_IMAGE_PIXELS:
                return (
                    f"{img.width}x{img.height} pixels, over Pillow's decompression-bomb limit "
                    f"of {Image.MAX_IMAGE_PIXELS}"
                )
            img.load()
            width, height = img.size
            if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # turned a quarter: the size training sees
                width, height = height, width
            if min_size is not None and (width < min_size[0] or height < min_size[1]):
                return f"{width}x{height} pixels, smaller than {min_label} {min_size[0]}x{min_size[1]}"
    except Image.DecompressionBombError as exc:
        return f"over Pillow's decompression-bomb limit ({exc})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure makes the file unusable
        message = str(exc) or type(exc).__name__
        if "cannot identify image file" in message:
            return "not an image Pillow can read"
        if "truncated" in message.lower() or "broken data stream" in message.lower():
            return "truncated image data"
        return message
    return None


def scan_images(
    paths: Sequence[Path], workers: int = 4, progress: bool = False, min_size: tuple[int, int] | None = None,
    min_label: str = "the crop",
) -> list[tuple[Path, str]]:
    """Open and decode every file; return ``(path, reason)`` for each one that fails (or, with
    ``min_size`` = (width, height), is smaller)."""
    from tqdm import tqdm

    problems: list[tuple[Path, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(functools.partial(check_image, min_size=min_size, min_label=min_label), paths)
            for path, reason in tqdm(
                zip(paths, results), total=len(paths), desc="checking images", unit="img",
                disable=not progress, leave=False,
            ):
                if reason is not None:
                    problems.append((path, reason))
    return problems
