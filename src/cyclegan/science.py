"""Scientific images: 16-bit and float pixels, any number of channels, NIfTI volumes, kept at
their precision from the file to the translation.

The 8-bit path (``images``) reads photographs through Pillow as 8-bit grey or RGB. A domain
whose files are anything else (16-bit or 32-bit integers, floats, a channel count other than 1
or 3, ``.npy`` arrays, NIfTI volumes) is read here instead, as an array of its own type:

- ``read_array`` gives a file's pixels as ``(H, W, C)`` in the file's dtype: PNG through Pillow
  (16-bit grey is mode ``I;16``), TIFF through ``tifffile`` (multi-sample ``Y X S`` or
  multi-page ``C Y X``), ``.npy`` through NumPy (``H x W x C`` or ``C x H x W``: the channel axis
  is the first when it is shorter than the last and at most 64 long, else the last), NIfTI
  through ``nibabel`` (one slice of a volume: ``Slice``).
- ``Domain`` says how a domain's values map onto the network's [-1, 1]: per channel,
  ``lo`` -> -1 and ``hi`` -> +1, clipped (``--value_range``: the dtype's full range for integers
  and 0..1 for floats, two numbers, or percentiles of the training files computed once). The
  run stores it (``config.json`` and every checkpoint), and ``to_values`` inverts it, so a
  translation comes back in the units it went in with.
- ``Planes`` holds the scaled pixels (float32 in [0, 1]) with the few methods of a Pillow image
  that the training transforms call (``size``, ``resize``, ``crop``, ``transpose``), so crops,
  flips and turns draw exactly as on the 8-bit path.
- ``write_array`` writes a translation atomically as PNG (1-channel 8/16-bit, 3-channel 8-bit),
  TIFF (any type and channel count), ``.npy`` or NIfTI (``write_volume``, with the input's
  affine and header).

``tifffile`` and ``nibabel`` are the ``[science]`` extra; a file that needs one that is missing
is a one-line error naming the ``pip install``.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cyclegan.errors import CycleGANError
from cyclegan.utils import atomic_write

__all__ = [
    "ARRAY_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "Slice",
    "file_of",
    "stem_of",
    "Planes",
    "Domain",
    "Domains",
    "FileInfo",
    "is_volume",
    "needs_array_path",
    "read_array",
    "read_volume",
    "volume_slices",
    "parse_value_range",
    "dtype_range",
    "scan_domain",
    "to_unit",
    "encode",
    "to_values",
    "write_array",
    "write_volume",
    "composite",
    "parse_bands",
    "write_examples",
]

VOLUME_EXTENSIONS = (".nii", ".nii.gz")
ARRAY_EXTENSIONS = (".npy",) + VOLUME_EXTENSIONS  # read here only (PNG and TIFF may be either)
OUTPUT_DTYPES = ("uint8", "uint16", "int16", "float32")
PHOTO_FORMATS = (".jpg", ".jpeg", ".webp", ".bmp")  # 8-bit grey or RGB only
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBa", "La", "RGBX", "LAB", "HSV")
MAX_CHANNELS_AXIS = 64  # a .npy axis this short or shorter may be the channel axis


def _suffix(path: str | os.PathLike[str]) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_volume(path: str | os.PathLike[str]) -> bool:
    return _suffix(path) in VOLUME_EXTENSIONS


def _require(module: str, what: str) -> Any:
    """Import an optional reader, or say which extra brings it."""
    try:
        return __import__(module)
    except ImportError:
        raise CycleGANError(f"{what} needs {module}: pip install 'cyclegan[science]' (or pip install {module})") \
            from None


@dataclass(frozen=True, order=True)
class Slice:
    """Slice ``index`` along ``axis`` of the NIfTI volume ``path``: one training image."""

    path: Path
    index: int
    axis: int = 2

    def __str__(self) -> str:
        return f"{self.path}[axis {self.axis}, slice {self.index}]"

    @property
    def name(self) -> str:
        return f"{self.path.name}[{self.index}]"


SLICE_NAME = re.compile(r"\[axis \d+, slice \d+\]$")


def file_of(name: str | Path | Slice) -> Path:
    """The file an item name (``str(Path)`` or ``str(Slice)``) comes from."""
    if isinstance(name, Slice):
        return name.path
    return Path(SLICE_NAME.sub("", str(name)))


def stem_of(item: Path | Slice) -> str:
    """An item's name without its extension (a slice: its volume's, with the slice number), by
    which pairs are matched."""
    if isinstance(item, Slice):
        return f"{item.path.name[:-len(_suffix(item.path))]}[{item.index}]"
    return Path(item).stem


def needs_array_path(path: Path) -> bool:
    """Whether ``path`` must be read here rather than as an 8-bit photograph: a .npy or NIfTI
    file, or a PNG/TIFF that Pillow reads as more than 8 bits a channel or cannot read at all
    (multi-band TIFF)."""
    suffix = _suffix(path)
    if suffix in ARRAY_EXTENSIONS:
        return True
    if suffix in (".tif", ".tiff"):
        return _tiff_needs_array_path(path)
    # JPEG, WebP, BMP hold 8 bits a channel; a PNG says its depth in its header (16-bit colour
    # included, which Pillow would read as 8-bit RGB: it must not take the photograph path)
    return suffix == ".png" and _png_header(path)[0] == 16


def _png_header(path: Path) -> tuple[int | None, int | None]:
    """A PNG's bit depth and colour type (0: grey) from its header (IHDR); None, None when it is
    not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None, None
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None, None
    return head[24], head[25]


@functools.cache
def _has_tifffile() -> bool:
    return importlib.util.find_spec("tifffile") is not None


def _tiff_needs_array_path(path: Path) -> bool:
    """A TIFF is an 8-bit photograph when it holds one image of uint8 grey, RGB or RGBA; anything
    else (16 bits, floats, other sample or page counts) is read by tifffile."""
    try:
        tifffile = __import__("tifffile")
    except ImportError:  # without it only Pillow's TIFFs can be read: the photograph path
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = series.shape, series.dtype, series.axes
            several = len(tif.series) > 1 and any(s.shape[-2:] != shape[-2:] for s in tif.series[1:])
            extra = tif.pages[0].tags.get("ExtraSamples")  # 1, 2: associated or unassociated alpha
            values = extra.value if extra is not None else ()
            alpha = any(v in (1, 2) for v in (values if isinstance(values, tuple) else (values,)))
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the scan says so
        return False
    if several or dtype != np.uint8:
        return True
    samples = shape[-1] if axes.endswith("S") else 1
    if len(shape) - (1 if axes.endswith("S") else 0) != 2 or samples not in (1, 3, 4):
        return True
    return samples == 4 and not alpha  # four samples without an alpha among them: four bands


def _channels_last(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise CycleGANError(f"{source} has the shape {array.shape}; give H x W, H x W x C or C x H x W")
    if array.shape[0] < array.shape[2] and array.shape[0] <= MAX_CHANNELS_AXIS:
        return np.moveaxis(array, 0, 2)
    return array


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    tifffile = _require("tifffile", f"reading {path}")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        array = series.asarray()
        sizes = {s.shape[-2:] if not s.axes.endswith("S") else s.shape[-3:-1] for s in tif.series}
    if len(sizes) > 1:
        raise CycleGANError(f"{path}: a TIFF of {len(tif.series)} images of different sizes; give one image (its "
                            "channels as samples or as pages of one size)")
    if array.ndim == 2:
        return array[:, :, None], "HWC"
    if array.ndim == 3 and axes.endswith("S"):
        return array, "HWC"
    if array.ndim == 3 and axes.endswith("YX"):
        return np.moveaxis(array, 0, 2), "CHW"
    raise CycleGANError(f"{path}: a TIFF of axes {axes} and shape {array.shape}; give one image of H x W pixels and "
                        "C samples or pages")


def read_array(path: Path | Slice) -> tuple[np.ndarray, str]:
    """The pixels of ``path`` as ``(H, W, C)`` in the file's own dtype, and the file's layout
    (``HWC`` or ``CHW``, so a translation is written back the same way)."""
    array, layout = _read_array(path)
    return array.astype(array.dtype.newbyteorder("="), copy=False), layout  # big-endian files alike


def _read_array(path: Path | Slice) -> tuple[np.ndarray, str]:
    if isinstance(path, Slice):
        return volume_slices(path.path, path.axis, [path.index])[0], "HWC"
    suffix = _suffix(path)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        out = _channels_last(array, "the array")
        layout = "HW" if array.ndim == 2 else "CHW" if out.shape[2] == array.shape[0] != array.shape[2] else "HWC"
        return out, layout
    if suffix in VOLUME_EXTENSIONS:
        raise CycleGANError(f"{path}: a NIfTI volume, read slice by slice (training) or whole (translate)")
    if suffix in (".tif", ".tiff") and _has_tifffile():
        return _read_tiff(path)  # every TIFF of a scientific domain, whatever Pillow would make of it
    depth, colour = _png_header(path) if suffix == ".png" else (None, None)
    if depth == 16 and colour != 0:  # 16 bits, not grey
        raise CycleGANError(f"{path}: a 16-bit colour PNG, which Pillow reads only through 8 bits; save it as a "
                            "TIFF (e.g. tifffile.imwrite) to keep its precision")
    from cyclegan.images import open_image

    img = open_image(path)
    if img.mode in EIGHT_BIT_MODES:
        img = img.convert("L" if img.mode in ("1", "L", "LA", "La") else "RGB")
    array = np.asarray(img)
    return (array[:, :, None] if array.ndim == 2 else array), "HWC"


@functools.lru_cache(maxsize=8)
def _volume(path: Path) -> tuple[np.ndarray, Any]:
    nibabel = _require("nibabel", f"reading {path}")
    img = nibabel.load(str(path))
    return np.asanyarray(img.dataobj), img


def read_volume(path: Path) -> tuple[np.ndarray, Any]:
    """A NIfTI volume's voxels (in the file's type, scaling applied) and its nibabel image
    (affine, header). The last eight volumes read are kept, as training reads slice after slice (a
    ``.nii.gz`` is decompressed whole for each volume not kept: uncompressed ``.nii`` trains faster)."""
    data, img = _volume(Path(path))
    if data.ndim not in (3, 4):
        raise CycleGANError(f"{path}: a NIfTI image of shape {data.shape}; give a 3-D volume (or 4-D, the last axis "
                            "holding channels)")
    return data, img


def volume_slices(path: Path, axis: int, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Slices of a volume along ``axis`` as ``(H, W, C)`` arrays (C: a 4-D volume's last axis)."""
    data, _ = read_volume(path)
    if not 0 <= axis <= 2:
        raise CycleGANError(f"--slice_axis {axis}: give 0, 1 or 2")
    picked = range(data.shape[axis]) if indices is None else indices
    out = []
    for k in picked:
        plane = np.take(data, k, axis=axis)
        out.append(plane[:, :, None] if plane.ndim == 2 else plane)
    return out


# ---------------------------------------------------------------------------------------------
# Value ranges


def parse_value_range(text: str, flag: str = "--value_range") -> tuple[str, float, float]:
    """``dtype``, ``MIN MAX`` or ``pLOW pHIGH`` (percentiles) as ``(kind, a, b)``."""
    parts = str(text).split()
    if parts == ["dtype"]:
        return "dtype", 0.0, 0.0
    if len(parts) == 2:
        percent = [p.lower().startswith("p") for p in parts]
        try:
            a, b = (float(p[1:] if q else p) for p, q in zip(parts, percent))
        except ValueError:
            a = b = float("nan")
        if all(percent) and 0 <= a < b <= 100:
            return "percentiles", a, b
        if not any(percent) and np.isfinite(a) and np.isfinite(b) and a < b:
            return "given", a, b
    raise CycleGANError(f"{flag} {text}: give 'dtype' (integers: the type's full range, floats: 0 to 1), two "
                        "numbers MIN MAX with MIN < MAX, or two percentiles such as p0.5 p99.5")


def dtype_range(dtype: np.dtype | str) -> tuple[float, float]:
    """The values a type spans: an integer type's full range, 0..1 for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    return 0.0, 1.0


@dataclass(frozen=True)
class Domain:
    """How one domain's files become the network's [-1, 1], and back: per channel ``lo`` is -1
    and ``hi`` is +1. Stored with the run (``to_json``)."""

    dtype: str
    channels: int
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    value_range: str = "dtype"
    slice_axis: int | None = None  # a domain of NIfTI volumes: the axis slices are taken along

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "channels": self.channels, "lo": list(self.lo), "hi": list(self.hi),
                "value_range": self.value_range, "slice_axis": self.slice_axis}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Domain":
        return cls(str(value["dtype"]), int(value["channels"]), tuple(float(v) for v in value["lo"]),
                   tuple(float(v) for v in value["hi"]), str(value.get("value_range", "dtype")),
                   value.get("slice_axis"))

    @classmethod
    def for_file(cls, array: np.ndarray) -> "Domain":
        """A file read without a run's domain: its type's range."""
        lo, hi = dtype_range(array.dtype)
        c = array.shape[2]
        return cls(str(array.dtype), c, (lo,) * c, (hi,) * c)

    def describe(self) -> str:
        kind = "volume slices" if self.slice_axis is not None else "images"
        span = f"{self.lo[0]:g}..{self.hi[0]:g}" if len(set(self.lo)) == 1 and len(set(self.hi)) == 1 else \
            ", ".join(f"{a:g}..{b:g}" for a, b in zip(self.lo, self.hi))
        return f"{self.dtype} {kind}, {self.channels} channel{'s' if self.channels != 1 else ''}, values {span} " \
               f"({self.value_range})"


def to_unit(array: np.ndarray, domain: Domain) -> np.ndarray:
    """``(H, W, C)`` values as float32 in [0, 1] by the domain's range, clipped."""
    lo = np.asarray(domain.lo, dtype=np.float64)
    hi = np.asarray(domain.hi, dtype=np.float64)
    unit = (array.astype(np.float64) - lo) / (hi - lo)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def to_values(tensor: torch.Tensor, domain: Domain, dtype: str) -> np.ndarray:
    """A ``(C, H, W)`` tensor in [-1, 1] as ``(H, W, C)`` values of the domain's units in
    ``dtype`` (integers rounded and clipped to the type's range)."""
    unit = (tensor.detach().double().cpu().clamp(-1, 1).numpy().transpose(1, 2, 0) + 1.0) / 2.0
    lo = np.asarray(domain.lo, dtype=np.float64)
    hi = np.asarray(domain.hi, dtype=np.float64)
    values = lo + unit * (hi - lo)
    target = np.dtype(dtype)
    if target.kind in "ui":
        low, high = dtype_range(target)
        return np.clip(np.round(values), low, high).astype(target)
    return values.astype(target)


def encode(array: np.ndarray, domain: Domain | None = None) -> torch.Tensor:
    """``(H, W, C)`` values as a ``(C, H, W)`` tensor in [-1, 1] by ``domain``'s range (None: the
    array's type's); a ValueError for values that are not numbers a network can take."""
    if array.dtype.kind not in "uif":
        raise ValueError(f"holds {array.dtype} values; give integer or float pixels")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"holds {int((~np.isfinite(array)).sum())} NaN or infinite values; replace them first")
    unit = to_unit(array, domain or Domain.for_file(array))
    return torch.from_numpy(unit.transpose(2, 0, 1).copy()).mul_(2).sub_(1)


@dataclass
class FileInfo:
    """What the scan found in one file: its type, channels, size, and a sample of its values."""

    dtype: str
    channels: int
    size: tuple[int, int]
    sample: np.ndarray  # (n, C) values spread over the image


def _sample(array: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` pixels ``(n, C)`` drawn without replacement by a fixed seed (a stride could
    fall on a few columns of an image), so the percentiles of the same files are the same."""
    flat = array.reshape(-1, array.shape[2])
    if flat.shape[0] > count:
        flat = flat[np.sort(np.random.default_rng(0).choice(flat.shape[0], count, replace=False))]
    return flat.astype(np.float64)


def _inspect(item: Path | Slice, per_file: int) -> FileInfo | str:
    try:
        array, _ = read_array(item)
    except CycleGANError as exc:
        return str(exc).removeprefix(f"{item}: ")  # the listing names the file
    except Exception as exc:  # noqa: BLE001 - any reader failure makes the file unusable
        return f"cannot be read ({type(exc).__name__}: {exc})"
    if array.dtype.kind not in "uif":
        return f"holds {array.dtype} values; give integer or float pixels"
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        return f"holds {bad} NaN or infinite values; replace them (e.g. by the background value) before training"
    return FileInfo(str(array.dtype), array.shape[2], (array.shape[1], array.shape[0]), _sample(array, per_file))


def volume_items(files: Sequence[Path], axis: int) -> list[Slice]:
    """The non-empty slices (not a single value throughout) of every volume, in order."""
    items = []
    for path in files:
        for k, plane in enumerate(volume_slices(path, axis)):
            if plane.size and plane.max() != plane.min():
                items.append(Slice(path, k, axis))
    return items


# The fraction of the type's range under which a domain's values (0.5th to 99.5th percentile) are
# a warning with the default --value_range dtype: the network would see them in a narrow band of
# -1..1 and learn little within it (docs/benchmarks.md, "bfloat16 on 16-bit images": 12-bit
# counts in uint16 files; its fill arms place the line between 10 % and 25 %).
NARROW = 0.25


def scan_domain(items: Sequence[Path | Slice], channels: int, value_range: str, flag: str, label: str,
                saved: Domain | None = None, min_size: tuple[int, int] | None = None,
                warn: Any = None, narrow: Any = None) -> tuple[Domain, list[tuple[Path | Slice, str]]]:
    """Read every file of a domain once: its ``Domain`` (``saved`` when resuming, else from
    ``value_range``) and the files that cannot be used, with why. Mixed types or channel counts,
    a channel count other than ``channels``, NaN or infinite values stop with a CycleGANError
    naming the first odd file; ``warn`` is called with a file that its range clips almost whole,
    and ``narrow`` (a new range from the type's, ``--value_range dtype``) with the domain and the
    channels whose values fill less than ``NARROW`` of it, each as ``(channel, low, high,
    fraction)`` (low and high: the 0.5th and 99.5th percentiles of the files' values)."""
    per_file = max(64, min(4096, 2**21 // max(1, len(items))))
    infos: list[tuple[Path | Slice, FileInfo]] = []
    problems: list[tuple[Path | Slice, str]] = []
    for item in items:
        info = _inspect(item, per_file)
        if isinstance(info, str):
            if "NaN" in info:
                raise CycleGANError(f"{item}: {info}")
            problems.append((item, info))
            continue
        if min_size is not None and (info.size[0] < min_size[0] or info.size[1] < min_size[1]):
            problems.append((item, f"{info.size[0]}x{info.size[1]} pixels, smaller than the crop "
                                   f"{min_size[0]}x{min_size[1]}"))
            continue
        if saved is not None and (info.dtype, info.channels) != (saved.dtype, saved.channels):
            raise CycleGANError(
                f"{item}: holds {info.dtype} pixels in {info.channels} channel(s), but the {label} files the run "
                f"trains on hold {saved.dtype} in {saved.channels}; one domain must hold one type and channel count: "
                "convert or move the odd files")
        if infos and (info.dtype, info.channels) != (infos[0][1].dtype, infos[0][1].channels):
            first = infos[0][1]
            raise CycleGANError(
                f"{item}: holds {info.dtype} pixels in {info.channels} channel(s), but the {label} files before it "
                f"hold {first.dtype} in {first.channels} (as {infos[0][0]}); one domain must hold one type and "
                "channel count: convert or move the odd files")
        infos.append((item, info))
    if not infos:
        return saved or Domain("uint8", channels, (0.0,) * channels, (255.0,) * channels, value_range), problems
    first = infos[0][1]
    if first.channels != channels:
        raise CycleGANError(
            f"the {label} files hold {first.channels} channel(s) ({first.dtype}, as {infos[0][0]}) but the run "
            f"expects {channels}: pass {flag} {first.channels} (or --channels {first.channels} for both domains)")
    if saved is not None:
        domain = saved
    else:
        kind, a, b = parse_value_range(value_range)
        if kind == "dtype":
            lo, hi = dtype_range(first.dtype)
            los, his = (lo,) * channels, (hi,) * channels
        elif kind == "given":
            los, his = (a,) * channels, (b,) * channels
        else:
            values = np.concatenate([info.sample for _, info in infos])
            los = tuple(float(v) for v in np.percentile(values, a, axis=0))
            his = tuple(float(v) for v in np.percentile(values, b, axis=0))
            his = tuple(h if h > lo else lo + 1.0 for lo, h in zip(los, his))
        axis = items[0].axis if isinstance(items[0], Slice) else None
        domain = Domain(first.dtype, channels, los, his, value_range, axis)
        if kind == "dtype" and narrow is not None:
            values = np.concatenate([info.sample for _, info in infos]).astype(np.float64)
            lows, highs = np.percentile(values, 0.5, axis=0), np.percentile(values, 99.5, axis=0)
            spans = [(c, float(lows[c]), float(highs[c]), float((highs[c] - lows[c]) / (his[c] - los[c])))
                     for c in range(channels)]
            if any(fraction < NARROW for *_, fraction in spans):
                narrow(domain, [span for span in spans if span[3] < NARROW])
    lo_a, hi_a = np.asarray(domain.lo), np.asarray(domain.hi)
    for item, info in infos:
        clipped = float(((info.sample < lo_a) | (info.sample > hi_a)).mean())
        if clipped >= 0.99 and warn is not None:
            warn(item, clipped, domain)
    return domain, problems


# ---------------------------------------------------------------------------------------------
# The transforms' image


class Planes:
    """Float32 pixels ``(H, W, C)`` in [0, 1] with the methods of a Pillow image that the
    training transforms call, so that they crop, flip, turn and resize any channel count at full
    precision (bicubic resizing, per channel, in Pillow's 32-bit float mode, then clipped)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]

    @property
    def width(self) -> int:
        return self.array.shape[1]

    @property
    def height(self) -> int:
        return self.array.shape[0]

    def resize(self, size: tuple[int, int], resample: int = Image.BICUBIC) -> "Planes":
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(self.array[:, :, c]), mode="F").resize(
            size, resample)) for c in range(self.array.shape[2])]
        return Planes(np.clip(np.stack(planes, axis=2), 0.0, 1.0))

    def crop(self, box: tuple[int, int, int, int]) -> "Planes":
        left, top, right, bottom = box
        return Planes(self.array[top:bottom, left:right])

    def transpose(self, method: int) -> "Planes":
        a = self.array
        if method == Image.FLIP_LEFT_RIGHT:
            return Planes(a[:, ::-1])
        if method == Image.FLIP_TOP_BOTTOM:
            return Planes(a[::-1])
        turns = {Image.ROTATE_90: 1, Image.ROTATE_180: 2, Image.ROTATE_270: 3}
        return Planes(np.rot90(a, turns[method], axes=(0, 1)))

    def unit_tensor(self) -> torch.Tensor:
        """``(C, H, W)`` float32 in [0, 1]."""
        return torch.from_numpy(np.ascontiguousarray(self.array.transpose(2, 0, 1), dtype=np.float32))


def load_planes(item: Path | Slice, domain: Domain) -> Planes:
    """One training image of a scientific domain, scaled by its range."""
    array, _ = read_array(item)
    return Planes(to_unit(array, domain))


# ---------------------------------------------------------------------------------------------
# Writing


def _tiff_bytes(array: np.ndarray) -> bytes:
    tifffile = _require("tifffile", "writing TIFF")
    buffer = io.BytesIO()
    if array.shape[2] == 1:
        tifffile.imwrite(buffer, array[:, :, 0], photometric="minisblack")
    elif array.shape[2] == 3 and array.dtype == np.uint8:
        tifffile.imwrite(buffer, array, photometric="rgb")
    else:
        tifffile.imwrite(buffer, np.moveaxis(array, 2, 0), photometric="minisblack", planarconfig="separate")
    return buffer.getvalue()


def write_array(array: np.ndarray, path: Path, layout: str = "HWC") -> None:
    """Write ``(H, W, C)`` values atomically in the format of ``path``'s suffix: PNG (1 channel of
    8 or 16 bits, or 3 of 8), TIFF (any), ``.npy`` (in ``layout``)."""
    suffix = _suffix(path)
    buffer = io.BytesIO()
    if suffix == ".npy":
        laid = np.moveaxis(array, 2, 0) if layout == "CHW" else array[:, :, 0] if layout == "HW" else array
        np.save(buffer, laid, allow_pickle=False)
        data = buffer.getvalue()
    elif suffix in PHOTO_FORMATS and array.dtype == np.uint8 and array.shape[2] in (1, 3):
        from cyclegan.images import write_image

        write_image(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array), path)
        return
    elif suffix in (".tif", ".tiff"):
        data = _tiff_bytes(array)
    elif suffix == ".png":
        c, dtype = array.shape[2], array.dtype
        if c == 1 and dtype in (np.uint8, np.uint16):
            img = Image.fromarray(array[:, :, 0])
        elif c == 3 and dtype == np.uint8:
            img = Image.fromarray(array, mode="RGB")
        else:
            raise CycleGANError(f"{path}: PNG holds 1 channel of 8 or 16 bits or 3 of 8, not {c} of {dtype}; write "
                                "it as .tif (--ext tif) or .npy, or choose --output_dtype")
        img.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise CycleGANError(f"{path}: {suffix} cannot hold {array.dtype} pixels in {array.shape[2]} channel(s); use "
                            ".tif or .npy (--ext tif, --ext npy)")
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_volume(slices: Sequence[np.ndarray], axis: int, like: Any, path: Path) -> None:
    """Stack ``(H, W, C)`` slices along ``axis`` into a NIfTI volume with the affine and header
    of ``like`` (its data type set to the slices'), written atomically."""
    _require("nibabel", f"writing {path}")  # ``like`` is a nibabel image: its class writes the new one
    volume = np.stack([s[:, :, 0] if s.shape[2] == 1 else s for s in slices], axis=axis)
    header = like.header.copy()
    header.set_data_dtype(volume.dtype)
    out = type(like)(volume, like.affine, header)
    qform, qcode = like.get_qform(coded=True)
    sform, scode = like.get_sform(coded=True)
    out.set_qform(qform, int(qcode or 0))  # both transforms as they were (they may differ)
    out.set_sform(sform, int(scode or 0))
    out.header.set_slope_inter(1.0, 0.0)  # the values written are the values
    out.header["cal_min"], out.header["cal_max"] = 0.0, 0.0  # the input's display window is not B's
    payload = out.to_bytes()
    if _suffix(path) == ".nii.gz":
        import gzip

        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_write(path, "wb") as f:
        f.write(payload)


def composite(tensor: torch.Tensor, bands: Sequence[int] | None) -> torch.Tensor:
    """What to show of ``(N, C, H, W)`` images: the images themselves when they have 1 or 3
    channels, else the three ``bands`` as RGB, else the first channel as grey."""
    if tensor.shape[1] in (1, 3):
        return tensor
    return tensor[:, list(bands)] if bands else tensor[:, :1]


def parse_bands(text: str | None, flag: str = "--display_bands") -> tuple[int, ...] | None:
    """``R,G,B`` channel numbers (0-based) of a composite, or None."""
    if text is None or text == "":
        return None
    try:
        bands = tuple(int(b) for b in str(text).split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 0:
        raise CycleGANError(f"{flag} {text}: give three channel numbers counted from 0, e.g. 3,2,1")
    return bands


# ---------------------------------------------------------------------------------------------
# Inference


@dataclass
class Domains:
    """How a run's values go into a generator and come out (translate, serve): the domains of
    its input and output (``Domain``; None for a side of 8-bit photographs, and for both with a
    bare weights file or an 8-bit run), and ``--output_dtype``."""

    source: Domain | None
    target: Domain | None
    dtype: str | None

    @classmethod
    def of(cls, gen: Any, direction: str, dtype: str | None) -> "Domains":
        """From a loaded generator (its run's saved config, or an exported file's metadata)."""
        config = getattr(gen, "config", None) or {}
        a, b = config.get("data_A"), config.get("data_B")
        if direction == "BtoA":
            a, b = b, a
        return cls(Domain.from_json(a) if a else None, Domain.from_json(b) if b else None, dtype)

    @property
    def scientific_run(self) -> bool:
        return self.source is not None or self.target is not None

    def read_any(self, path: Path, gen: Any) -> tuple[torch.Tensor, Image.Image | None, tuple[int, int],
                                                      tuple[Domain, str, str] | None]:
        """An input as ``(1, C, H, W)`` in [-1, 1], its alpha, its size ``(width, height)``, and
        how its translation is written: ``(domain, dtype, layout)`` in values, or None for an
        8-bit picture. A photograph model given a 16-bit grey PNG or TIFF reads it as photographs
        are read (through 8 bits, made RGB), as it always has."""
        from cyclegan.images import read_image

        array = layout = None
        if self.source is not None or needs_array_path(path):
            array, layout = read_array(path)
            if self.source is None and array.shape[2] == 1 and gen.in_channels == 3 and _suffix(path) in (
                    ".png", ".tif", ".tiff"):
                array = None
        if array is None:
            tensor, alpha, size = read_image(path, gen.in_channels)
            if self.target is None:
                return tensor, alpha, size, None
            return tensor, None, size, (self.target, self.dtype or self.target.dtype, "HWC")
        tensor = self.encode(array, path, gen)
        size = (tensor.shape[-1], tensor.shape[-2])
        if self.target is None and self.scientific_run:  # the output side holds 8-bit photographs
            return tensor, None, size, None
        return tensor, None, size, (self.target_for(array, gen), self.dtype_for(array), layout or "HWC")

    def encode(self, array: np.ndarray, path: Path | Slice, gen: Any) -> torch.Tensor:
        """``(H, W, C)`` values as ``(1, C, H, W)`` in [-1, 1] by the input's domain (or its type's range)."""
        if array.shape[2] != gen.in_channels:
            raise ValueError(f"holds {array.shape[2]} channel(s), the generator takes {gen.in_channels}")
        if self.source is not None and self.source.value_range == "dtype" and str(array.dtype) != self.source.dtype:
            raise ValueError(f"holds {array.dtype} values; the run was trained on {self.source.dtype} files scaled by "
                             "that type's range (convert the file, or train with --value_range MIN MAX)")
        return encode(array, self.source)[None]

    def target_for(self, array: np.ndarray, gen: Any) -> Domain:
        if self.target is not None:
            return self.target
        lo, hi = dtype_range(array.dtype)
        c = gen.out_channels
        return Domain(str(array.dtype), c, (lo,) * c, (hi,) * c)

    def dtype_for(self, array: np.ndarray) -> str:
        """``--output_dtype`` (``input``: the input's type), else the target domain's, else the input's."""
        if self.dtype == "input" or (self.dtype is None and self.target is None):
            return str(array.dtype)
        return self.dtype or self.target.dtype  # type: ignore[union-attr]

    def check_formats(self, sources: dict[Path, Path], gen: Any) -> None:
        """Refuse, before any work, outputs whose format cannot hold the values (when they are
        known: a run's target domain, or ``--output_dtype``): PNG beyond 1 channel of 16 bits or
        3 of 8, JPEG and WebP beyond 8 bits."""
        dtype = self.dtype if self.dtype not in (None, "input") else self.target.dtype if self.target else None
        for target, source in sources.items():
            scientific_output = self.target is not None or (not self.scientific_run and needs_array_path(source))
            if dtype is None or not scientific_output or is_volume(target):
                continue
            c, suffix = gen.out_channels, target.suffix.lower()
            fits = {".png": (c == 1 and dtype in ("uint8", "uint16")) or (c == 3 and dtype == "uint8"),
                    **{s: c in (1, 3) and dtype == "uint8" for s in PHOTO_FORMATS}}.get(suffix, True)
            if not fits:
                raise CycleGANError(f"--output: {target} would hold {c} channel(s) of {dtype}, which {suffix} cannot "
                                    "hold; pass --ext tif (or npy)")


# ---------------------------------------------------------------------------------------------
# Small example data (docs/scientific.md's worked examples run on them; so do the tests)


def _blobs(rng: np.random.Generator, size: int, count: int = 3) -> np.ndarray:
    """Soft bright blobs on a dark ground, ``(size, size)`` float64 in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.zeros((size, size))
    for _ in range(count):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.08, 0.2) * size
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    return np.clip(image, 0, 1)


def write_examples(root: str | os.PathLike[str], size: int = 32, n_train: int = 8, n_test: int = 2,
                   seed: int = 0) -> Path:
    """Write three small datasets under ``root``, each with a hidden mapping from A to B and test
    pairs (``test/B/k`` is the truth of ``test/A/k``):

    - ``stains``: 16-bit grey PNGs (values spread over 12 bits and more); B is A's negative.
    - ``rgbn``: 4-band uint16 TIFFs (red, green, blue, near infrared); B holds A's bands reversed.
    - ``mr2ct``: NIfTI volumes, A an MR-like float32 volume, B its CT-like int16 volume in
      Hounsfield-like units (``2 * MR - 1024``); the first and last slices are empty.
    """
    tifffile = _require("tifffile", "writing the TIFF examples")
    nibabel = _require("nibabel", "writing the NIfTI examples")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for name in ("stains", "rgbn", "mr2ct"):
            for side in "AB":
                (root / name / split / side).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            a = np.round(_blobs(rng, size) * 60000 + 2000).astype(np.uint16)
            b_src = a if split == "test" else np.round(_blobs(rng, size) * 60000 + 2000).astype(np.uint16)
            Image.fromarray(a).save(root / "stains" / split / "A" / f"{k:03d}.png")
            Image.fromarray((65535 - b_src).astype(np.uint16)).save(root / "stains" / split / "B" / f"{k:03d}.png")
            bands = np.stack([_blobs(rng, size) for _ in range(4)], axis=0)
            rgbn = np.round(bands * 50000 + 1000).astype(np.uint16)
            other = rgbn if split == "test" else np.round(
                np.stack([_blobs(rng, size) for _ in range(4)], axis=0) * 50000 + 1000).astype(np.uint16)
            tifffile.imwrite(root / "rgbn" / split / "A" / f"{k:03d}.tif", rgbn, photometric="minisblack",
                             planarconfig="separate")
            tifffile.imwrite(root / "rgbn" / split / "B" / f"{k:03d}.tif", other[::-1].copy(),
                             photometric="minisblack", planarconfig="separate")
        depth = 6
        for k in range(max(1, count // 4)):
            mr = np.zeros((size, size, depth), dtype=np.float32)
            ct_src = np.zeros_like(mr)
            for z in range(1, depth - 1):
                mr[:, :, z] = _blobs(rng, size) * 900 + 100
                ct_src[:, :, z] = mr[:, :, z] if split == "test" else _blobs(rng, size) * 900 + 100
            ct = np.round(2 * ct_src - 1024).astype(np.int16)
            ct[:, :, [0, depth - 1]] = -1024
            affine = np.diag([0.8, 0.8, 2.5, 1.0])
            nibabel.save(nibabel.Nifti1Image(mr, affine), str(root / "mr2ct" / split / "A" / f"{k:03d}.nii.gz"))
            nibabel.save(nibabel.Nifti1Image(ct, affine), str(root / "mr2ct" / split / "B" / f"{k:03d}.nii.gz"))
    return root
