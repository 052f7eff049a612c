"""A photographic translation task with a known answer, built from the photographs that
scikit-image and scikit-learn ship inside their packages (nothing is downloaded).

Domain A: square crops of real photographs. Domain B: *other* crops of the same photographs
through a fixed colour transform (``colour_transform``), so the two training sets are unpaired.
Other hidden mappings (``MAPPINGS``): the negative, and the duotone task, where A is each crop's
luminance on a blue ramp and B on an orange one (the task on which the reference loop clearly
learns within the benchmark's hour, so that it can tell two training loops apart), and the 16-bit
task (``mapping="camera"``: grey uint16 files in bands of camera counts, benchmarks/science_bf16.py).
The test split holds crops of photographs never trained on, each A with its true B: a generator
G_AB is scored by its PSNR against that truth (``score``). Used by ``benchmarks/quality.py``
(``cyclegan train`` against the reference loop) and by the quality regression test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

# (package, file under its data folder). Colour and grey photographs for training; the test
# photographs are colour ones that training never sees (motorcycle_left and _right, a stereo
# pair, are both on the training side).
TRAIN_PHOTOS = (
    ("skimage", "data/astronaut.png"), ("skimage", "data/hubble_deep_field.jpg"), ("skimage", "data/ihc.png"),
    ("skimage", "data/motorcycle_left.png"), ("skimage", "data/motorcycle_right.png"),
    ("skimage", "data/retina.jpg"), ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"), ("skimage", "data/camera.png"), ("skimage", "data/brick.png"),
    ("skimage", "data/grass.png"), ("skimage", "data/gravel.png"), ("skimage", "data/coins.png"),
    ("skimage", "data/moon.png"),
)
TEST_PHOTOS = (("skimage", "data/chelsea.png"), ("skimage", "data/coffee.png"), ("skimage", "data/rocket.jpg"))

# The hidden mapping A -> B: a softened rotation of the colour channels (rows sum to 1, so grey
# stays grey) followed by a gamma of 0.8. Invertible, so a cycle can be consistent.
COLOUR_MATRIX = np.array([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.7, 0.1, 0.2]])
GAMMA = 0.8


def photo_path(package: str, relative: str) -> Path:
    """The file of a photograph shipped inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the photographs come from the {package} package: pip install -c constraints.txt "
                           "-e '.[dev]' installs it")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {package}")
    return path


def load_photo(package: str, relative: str) -> Image.Image:
    with Image.open(photo_path(package, relative)) as img:
        return img.convert("RGB")


def colour_transform(rgb: np.ndarray) -> np.ndarray:
    """The true A -> B mapping on a uint8 ``(H, W, 3)`` array."""
    x = rgb.astype(np.float64) / 255.0
    y = np.clip(x @ COLOUR_MATRIX.T, 0.0, 1.0) ** GAMMA
    return np.round(y * 255.0).astype(np.uint8)


def negative_transform(rgb: np.ndarray) -> np.ndarray:
    """A simpler hidden mapping (``mapping="negative"``), tried for a task that can tell learning
    from noise: the photographic negative, ``b = 255 - a``. Warm photographs become cold ones and
    light ones dark, so a discriminator tells the domains apart at once, and doing nothing scores
    far below it (docs/benchmarks.md, "bfloat16 on the CPU", says how far training got)."""
    return (255 - rgb).astype(np.uint8)


# The duotone task (``mapping="duotone"``): the task that can tell (docs/benchmarks.md, "A quality
# benchmark that can tell"). Each crop's luminance, its contrast stretched, painted on a blue ramp
# for A; B is the same luminance on an orange ramp. Colours and light differ at every level, so doing
# nothing scores low; the raised contrast spreads every image's values, so ignoring the input scores
# low too; and the answer is a fixed per-pixel colour map that keeps light light and dark dark, the
# direction a cycle- and identity-constrained generator leans to anyway, so the reference loop
# learns it in a few hundred steps (a map that must turn light to dark, like the negative, is as
# plausible to a discriminator as its mirror, and training picks either).
DUOTONE_A = (np.array([0.0, 0.0, 40.0]), np.array([120.0, 160.0, 255.0]))  # (dark end, light end)
DUOTONE_B = (np.array([40.0, 0.0, 0.0]), np.array([255.0, 170.0, 60.0]))
DUOTONE_GAIN = 6.0  # the contrast curve's slope at the crop's median luminance


def stretched_luminance(rgb: np.ndarray) -> np.ndarray:
    """A uint8 RGB crop's luminance in [0, 1], stretched between its 1st and 99th percentiles."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    lo, hi = np.percentile(y, 1), np.percentile(y, 99)
    return np.clip((y - lo) / max(hi - lo, 1e-3), 0.0, 1.0)


def duotone_luminance(rgb: np.ndarray) -> np.ndarray:
    """A crop's luminance in [0, 1]: stretched between its 1st and 99th percentiles
    (``stretched_luminance``), then through ``tanh(DUOTONE_GAIN * (y - median))`` rescaled to
    [0, 1], which pushes values to both ends."""
    y = stretched_luminance(rgb)
    y = np.tanh(DUOTONE_GAIN * (y - np.median(y)))
    return (y - y.min()) / max(y.max() - y.min(), 1e-6)


def paint(y: np.ndarray, ramp: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Luminance ``y`` in [0, 1] painted on the colour ramp ``(dark, light)``, as uint8 RGB."""
    dark, light = ramp
    return np.clip(np.round(dark + y[..., None] * (light - dark)), 0, 255).astype(np.uint8)


def duotone_a(rgb: np.ndarray) -> np.ndarray:
    """Domain A of the duotone task: the crop's luminance on the blue ramp."""
    return paint(duotone_luminance(rgb), DUOTONE_A)


def duotone_transform(a: np.ndarray) -> np.ndarray:
    """The true A -> B map of the duotone task, per pixel: the position of the (blue) A pixel along
    A's ramp, painted at that position of B's (orange) ramp."""
    dark, light = DUOTONE_A
    step = light - dark
    y = np.clip((a.astype(np.float64) - dark) @ step / (step @ step), 0.0, 1.0)
    return paint(y, DUOTONE_B)


# --standardise: every crop's mean and spread (the generator's instance norms cannot see them, so a
# mapping that depends on them cannot be learned exactly; fixing them leaves the structure to learn).
STANDARD_MEAN, STANDARD_STD = 128.0, 48.0


def random_crop(photo: Image.Image, rng: np.random.Generator, out_size: int,
                scale: tuple[float, float] = (0.3, 0.6), standardise: bool = False) -> np.ndarray:
    """A square crop whose side is a random fraction in ``scale`` of the photo's shorter side, at
    a random place, resized (Lanczos) to ``out_size``. ``standardise``: its values then shifted and
    scaled (all channels alike, so hues keep) to the mean 128 and standard deviation 48."""
    w, h = photo.size
    side = int(rng.uniform(*scale) * min(w, h))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((left, top, left + side, top + side)).resize((out_size, out_size), Image.LANCZOS)
    array = np.asarray(crop, dtype=np.uint8)
    if standardise:
        x = array.astype(np.float64)
        x = (x - x.mean()) / max(x.std(), 1.0) * STANDARD_STD + STANDARD_MEAN
        array = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return array


def write_photo_task(root: Path, size: int = 64, n_train: int = 200, n_test_per_photo: int = 16,
                     seed: int = 0, scale: tuple[float, float] = (0.3, 0.6), mapping: str = "colour",
                     standardise: bool = False) -> Path:
    """Write the task in the reference layout under ``root`` and return ``root``.

    ``train/A`` and ``train/B`` hold ``n_train`` independent crops each (B through the colour
    transform), stored at 1.25x ``size`` so that the training transform's resize and random crop
    have work to do; ``test/A/k.png`` is a ``size`` x ``size`` crop of a test photograph and
    ``test/B/k.png`` its true translation (``mapping``: a key of ``MAPPINGS``; crops first go
    through ``PREPARE[mapping]`` where it has one, and B's through the mapping after). The same
    arguments write the same files.
    """
    transform = MAPPINGS[mapping]
    prepare = PREPARE.get(mapping, lambda rgb: rgb)
    root = Path(root)
    rng = np.random.default_rng(seed)
    train = [load_photo(*p) for p in TRAIN_PHOTOS]
    test = [load_photo(*p) for p in TEST_PHOTOS]
    for split in ("train", "test"):
        for domain in ("A", "B"):
            (root / split / domain).mkdir(parents=True, exist_ok=True)
    stored = int(round(size * 1.25))
    for k in range(n_train):
        a = prepare(random_crop(train[int(rng.integers(len(train)))], rng, stored, scale, standardise))
        b = transform(prepare(random_crop(train[int(rng.integers(len(train)))], rng, stored, scale, standardise)))
        Image.fromarray(a).save(root / "train" / "A" / f"{k:04d}.png")
        Image.fromarray(b).save(root / "train" / "B" / f"{k:04d}.png")
    k = 0
    for photo in test:
        for _ in range(n_test_per_photo):
            a = prepare(random_crop(photo, rng, size, scale, standardise))
            Image.fromarray(a).save(root / "test" / "A" / f"{k:04d}.png")
            Image.fromarray(transform(a)).save(root / "test" / "B" / f"{k:04d}.png")
            k += 1
    return root


def load_test_pairs(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split as two ``(N, 3, H, W)`` tensors in [-1, 1]: inputs A and truths B."""
    inputs, truths = split_arrays(root, lambda image: image.convert("RGB"))
    return tuple(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for a in (inputs, truths))


def split_arrays(root: Path, read: Callable[[Image.Image], Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """The test split's inputs A and truths B, each file through ``read``, stacked as arrays."""
    out = []
    for domain in ("A", "B"):
        files = sorted((Path(root) / "test" / domain).glob("*.png"))
        out.append(np.stack([np.asarray(read(Image.open(f))) for f in files]))
    return out[0], out[1]


def psnr_db(images: torch.Tensor, truths: torch.Tensor) -> float:
    """Mean PSNR in dB over a batch of [-1, 1] images, each quantised to 8 bits as a saved file is."""
    quantised = torch.round((images.clamp(-1, 1) + 1) * 127.5)
    reference = torch.round((truths + 1) * 127.5)
    mse = (quantised - reference).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


@torch.no_grad()
def score(generator: torch.nn.Module, root: Path, batch: int = 16) -> float:
    """Mean PSNR (dB) of ``generator`` (A -> B, [-1, 1] in and out) on the test split's truths."""
    inputs, truths = load_test_pairs(root)
    was_training = generator.training
    generator.eval()
    outputs = torch.cat([generator(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    generator.train(was_training)
    return psnr_db(outputs, truths)


def identity_score(root: Path) -> float:
    """The PSNR of doing nothing: test A itself against the truths."""
    inputs, truths = load_test_pairs(root)
    return psnr_db(inputs, truths)


def constant_score(root: Path) -> float:
    """The PSNR of ignoring the input: the mean image of train B (what a generator that learns
    only B's colours and no structure tends to) against every truth."""
    files = sorted((Path(root) / "train" / "B").glob("*.png"))
    _, truths = load_test_pairs(root)
    size = truths.shape[-2:]
    images = [Image.open(f).convert("RGB").resize((size[1], size[0]), Image.BICUBIC) for f in files]
    mean = torch.from_numpy(np.stack([np.asarray(i) for i in images]).mean(0)).permute(2, 0, 1).float() / 127.5 - 1
    return psnr_db(mean.expand_as(truths), truths)


# The 16-bit task (``write_camera_task``, benchmarks/science_bf16.py): what a scientific camera
# gives, grey 16-bit files whose values fill only part of the type's range. A crop's luminance,
# stretched between its 1st and 99th percentiles, in a band of 12-bit counts above a dark offset;
# B the same luminance through a gamma of 2.5 (a non-linear detector's response), in a band of its
# own. Doing nothing (A's position in its band at the same position of B's) and ignoring the input
# (the mean image of train B) both score about 12 dB: a generator must learn the curve and keep
# the structure. Scored in counts, against the span of B's band.
CAMERA_A = (1000.0, 3000.0)  # (offset, span) in counts of a uint16 file
CAMERA_B = (6000.0, 2500.0)
CAMERA_GAMMA = 2.5


def camera_a(y: np.ndarray) -> np.ndarray:
    return np.round(CAMERA_A[0] + CAMERA_A[1] * y).astype(np.uint16)


def camera_b(y: np.ndarray) -> np.ndarray:
    return np.round(CAMERA_B[0] + CAMERA_B[1] * y**CAMERA_GAMMA).astype(np.uint16)


def camera_transform(a: np.ndarray) -> np.ndarray:
    """The true A -> B map of the 16-bit task, per pixel, on A's counts."""
    return camera_b(np.clip((a.astype(np.float64) - CAMERA_A[0]) / CAMERA_A[1], 0.0, 1.0))


MAPPINGS = {"colour": colour_transform, "negative": negative_transform, "duotone": duotone_transform,
            "camera": camera_transform}
# What a crop becomes before it is domain A's (both domains' crops then go through the mapping
# for B): the photograph itself, except in the duotone and 16-bit tasks.
PREPARE = {"duotone": duotone_a, "camera": lambda rgb: camera_a(stretched_luminance(rgb))}


def write_camera_task(root: Path, size: int = 32, n_train: int = 200, seed: int = 0) -> Path:
    """The 16-bit task in the reference layout under ``root`` (``write_photo_task`` with its
    crops, draws and splits)."""
    return write_photo_task(root, size=size, n_train=n_train, seed=seed, mapping="camera")


def camera_pairs(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 16-bit task's test split in counts, float64 ``(N, H, W)``: inputs A and truths B."""
    inputs, truths = split_arrays(root, lambda image: image)
    return inputs.astype(np.float64), truths.astype(np.float64)


def camera_psnr(counts: np.ndarray, truths: np.ndarray) -> float:
    """Mean PSNR (dB) of images in counts, rounded and clipped to uint16 as a written file is,
    against the truths, the peak being the span of B's band."""
    written = np.clip(np.round(counts), 0, 65535)
    mse = ((written - truths) ** 2).reshape(len(truths), -1).mean(1)
    return float(np.mean(10 * np.log10(CAMERA_B[1] ** 2 / np.maximum(mse, 1e-10))))


def camera_baselines(root: Path) -> tuple[float, float]:
    """The 16-bit task's PSNR of doing nothing (each test A pixel's position in A's band, put at
    the same position of B's band) and of ignoring the input (the mean image of train B)."""
    inputs, truths = camera_pairs(root)
    size = truths.shape[-2:]
    files = sorted((Path(root) / "train" / "B").glob("*.png"))
    mean = np.mean([np.asarray(Image.open(f).convert("F").resize((size[1], size[0]), Image.BICUBIC),
                               dtype=np.float64) for f in files], axis=0)
    same_place = CAMERA_B[0] + (inputs - CAMERA_A[0]) / CAMERA_A[1] * CAMERA_B[1]
    return camera_psnr(same_place, truths), camera_psnr(np.broadcast_to(mean, truths.shape), truths)
