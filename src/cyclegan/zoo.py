"""The official CycleGAN datasets and pretrained generators, and the FID Inception network:
their names, their addresses, and where ``cyclegan download`` puts them (which is where
``train``, ``translate`` and ``evaluate`` look).

The lists and addresses are those of the official repository's download scripts
(``datasets/download_cyclegan_dataset.sh``, ``scripts/download_cyclegan_model.sh``); sizes are
the archives' as published, approximate. ``$CYCLEGAN_BASE_URL`` (or ``--base_url``) replaces
the host of the datasets and models, for a mirror; ``$CYCLEGAN_INCEPTION_URL`` the Inception's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DATASETS", "MODELS", "BASE_URL", "INCEPTION_FILE", "INCEPTION_URL", "INCEPTION_SHA256",
           "parse_size", "dataset_max_bytes", "MODEL_MAX_BYTES", "INCEPTION_MAX_BYTES",
           "base_url", "dataset_url", "model_url", "inception_url", "pretrained_root", "pretrained_path",
           "inception_locations", "download_dataset_hint"]

BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan"

# name -> the archive's published size (None: not published)
DATASETS: dict[str, str | None] = {
    "apple2orange": "75 MB",
    "summer2winter_yosemite": "126 MB",
    "horse2zebra": "111 MB",
    "monet2photo": "291 MB",
    "cezanne2photo": "267 MB",
    "ukiyoe2photo": "279 MB",
    "vangogh2photo": "292 MB",
    "maps": "1.4 GB",
    "cityscapes": "58 MB",
    "facades": "34 MB",
    "iphone2dslr_flower": "324 MB",
    "ae_photos": "10 MB",
}

# name -> what the generator does (each is one official ResnetGenerator, 9 blocks, about 45 MB)
MODELS: dict[str, str] = {
    "apple2orange": "apples to oranges",
    "orange2apple": "oranges to apples",
    "summer2winter_yosemite": "Yosemite in summer to winter",
    "winter2summer_yosemite": "Yosemite in winter to summer",
    "horse2zebra": "horses to zebras",
    "zebra2horse": "zebras to horses",
    "monet2photo": "Monet paintings to photos",
    "style_monet": "photos to Monet's style",
    "style_cezanne": "photos to Cezanne's style",
    "style_ukiyoe": "photos to ukiyo-e style",
    "style_vangogh": "photos to Van Gogh's style",
    "sat2map": "satellite images to maps",
    "map2sat": "maps to satellite images",
    "cityscapes_photo2label": "street photos to label maps",
    "cityscapes_label2photo": "label maps to street photos",
    "facades_photo2label": "facade photos to labels",
    "facades_label2photo": "facade labels to photos",
    "iphone2dslr_flower": "iPhone flower photos to DSLR depth of field",
}

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# The SHA-256 published for this file (by a public metrics package that pins it); see docs/inference.md.
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"


# The most a download may bring, when its size is not published: a server that sends more is cut off.
MODEL_MAX_BYTES = 512 * 2**20  # an official generator is about 45 MB
INCEPTION_MAX_BYTES = 512 * 2**20  # about 95 MB
UNPUBLISHED_DATASET_MAX_BYTES = 8 * 2**30

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"1.4 GB"``, ``"500MiB"``, ``"75 MB"`` or a number of bytes, as bytes; a ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give bytes or a number with a unit, as 800MB or 2GiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ValueError(f"{text!r}: a size must be at least one byte")
    return size


def dataset_max_bytes(name: str) -> int:
    """The most the download of dataset ``name`` may bring: its published size and half again
    (and 32 MiB), or 8 GiB where no size is published."""
    published = DATASETS.get(name)
    if published is None:
        return UNPUBLISHED_DATASET_MAX_BYTES
    return int(parse_size(published) * 1.5) + 32 * 2**20


def base_url(given: str | None = None) -> str:
    return (given or os.environ.get("CYCLEGAN_BASE_URL") or BASE_URL).rstrip("/")


def dataset_url(name: str, base: str | None = None) -> str:
    return f"{base_url(base)}/datasets/{name}.zip"


def model_url(name: str, base: str | None = None) -> str:
    return f"{base_url(base)}/pretrained_models/{name}.pth"


def inception_url(given: str | None = None) -> str:
    return given or os.environ.get("CYCLEGAN_INCEPTION_URL") or INCEPTION_URL


def pretrained_root() -> Path:
    """Where pretrained generators are kept: ``$CYCLEGAN_PRETRAINED`` or ``pretrained/``."""
    return Path(os.environ.get("CYCLEGAN_PRETRAINED", "pretrained"))


def pretrained_path(name: str, root: Path | None = None) -> Path:
    return (root or pretrained_root()) / f"{name}.pth"


def inception_locations() -> list[Path]:
    """Where ``evaluate`` looks for the FID Inception network, in order (``cyclegan download
    inception`` writes to the second, or to the first when ``$CYCLEGAN_INCEPTION`` is set)."""
    places = []
    if os.environ.get("CYCLEGAN_INCEPTION"):
        places.append(Path(os.environ["CYCLEGAN_INCEPTION"]))
    places.append(Path.home() / ".cache" / "cyclegan" / INCEPTION_FILE)
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    places.append(torch_home / "hub" / "checkpoints" / INCEPTION_FILE)
    return places


def download_dataset_hint(name: str) -> str:
    """The one command that fetches an official dataset into ``data/NAME``."""
    return f"cyclegan download dataset {name}"
