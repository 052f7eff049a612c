"""The official CycleGAN and pix2pix datasets and pretrained generators, the official CUT and
FastCUT generators, and the FID Inception network: their names, their addresses, and where
``cyclegan download`` puts them (which is where ``train``, ``translate`` and ``evaluate`` look).

The lists and addresses are those of the official repository's download scripts
(``datasets/download_cyclegan_dataset.sh``, ``scripts/download_cyclegan_model.sh``,
``datasets/download_pix2pix_dataset.sh``, ``scripts/download_pix2pix_model.sh``); sizes are the
archives' as published, approximate (the pix2pix archives' are not published).
``$CYCLEGAN_BASE_URL`` (or ``--base_url``) replaces the host folder of the CycleGAN datasets and
models, for a mirror, ``$CYCLEGAN_PIX2PIX_BASE_URL`` (or ``--base_url``) the pix2pix ones';
``$CYCLEGAN_INCEPTION_URL`` the Inception's. The CUT generators come as one archive, the one the
official CUT README points at (``$CYCLEGAN_CUT_BASE_URL`` replaces its host folder).

Two families share names (``facades``, ``maps``, ``cityscapes``; ``sat2map``, ``map2sat``,
``facades_label2photo``): a name is ``FAMILY/NAME`` (``pix2pix/facades``), and a bare name is the
CycleGAN entry where there is one (as it always was), else the pix2pix one (``edges2shoes``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATASETS", "MODELS", "BASE_URL", "INCEPTION_FILE", "INCEPTION_URL", "INCEPTION_SHA256",
           "FAMILIES", "CUT_BASE_URL", "CUT_MODELS", "CUT_ARCHIVE_MAX_BYTES", "cut_archive_url", "cut_archive_member",
           "PIX2PIX_BASE_URL", "PIX2PIX_DATASETS", "PIX2PIX_MODELS", "PIX2PIX_WITHHELD", "Entry",
           "dataset_entries", "model_entries", "find_dataset", "find_model",
           "parse_size", "dataset_max_bytes", "MODEL_MAX_BYTES", "INCEPTION_MAX_BYTES",
           "base_url", "pix2pix_base_url", "dataset_url", "model_url", "inception_url", "pretrained_root",
           "pretrained_path", "inception_locations", "download_dataset_hint"]

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

FAMILIES = ("cyclegan", "pix2pix", "cut")

PIX2PIX_BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix"

# The official pix2pix datasets (BASE/datasets/NAME.tar.gz, one folder NAME/ of train/, val/ and,
# for some, test/ holding aligned pairs: each image is A and B side by side). No sizes published.
PIX2PIX_DATASETS: dict[str, str | None] = {
    "facades": None,
    "cityscapes": None,
    "maps": None,
    "edges2shoes": None,
    "edges2handbags": None,
    "night2day": None,
}

# Listed by the official script but not downloaded by it, and why.
PIX2PIX_WITHHELD: dict[str, str] = {
    "cityscapes": (
        "the official pix2pix Cityscapes archive is not distributed, for licence reasons: download "
        "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from https://cityscapes-dataset.com and pair "
        "them with the official repository's datasets/prepare_cityscapes_dataset.py (or use the CycleGAN "
        "cityscapes: cyclegan download dataset cityscapes)"
    ),
}

# name -> what the generator does (each an official UnetGenerator, unet_256, batch norm, about 200 MB);
# the list of scripts/download_pix2pix_model.sh (BASE/models-pytorch/NAME.pth).
PIX2PIX_MODELS: dict[str, str] = {
    "edges2shoes": "edge maps to shoe photos",
    "sat2map": "satellite images to maps",
    "map2sat": "maps to satellite images",
    "facades_label2photo": "facade labels to photos",
    "day2night": "daytime scenes to night",
}

CUT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/CUT"
CUT_ARCHIVE = "pretrained_models.tar"
# name -> what the generator does; each the official CUT's ResnetGenerator (9 blocks, anti-aliased,
# about 45 MB), ``NAME_pretrained/latest_net_G.pth`` in the one archive (experiments/pretrained_launcher.py
# of the official CUT says how each was trained; Cityscapes runs BtoA there: labels to photos).
CUT_MODELS: dict[str, str] = {
    "horse2zebra_cut": "horses to zebras (CUT)",
    "horse2zebra_fastcut": "horses to zebras (FastCUT)",
    "cat2dog_cut": "cats to dogs, AFHQ (CUT)",
    "cat2dog_fastcut": "cats to dogs, AFHQ (FastCUT)",
    "cityscapes_cut": "Cityscapes label maps to street photos (CUT)",
    "cityscapes_fastcut": "Cityscapes label maps to street photos (FastCUT)",
}

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# The SHA-256 published for this file (by a public metrics package that pins it); see docs/inference.md.
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"


# The most a download may bring, when its size is not published: a server that sends more is cut off.
MODEL_MAX_BYTES = 512 * 2**20  # an official generator is about 45 MB
CUT_ARCHIVE_MAX_BYTES = 4 * 2**30  # unpublished: six generators (and perhaps their other networks)
INCEPTION_MAX_BYTES = 512 * 2**20  # about 95 MB
UNPUBLISHED_DATASET_MAX_BYTES = 8 * 2**30
PIX2PIX_DATASET_MAX_BYTES = 16 * 2**30  # no sizes published; edges2handbags, the largest, is several GB

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


def dataset_max_bytes(name: str, family: str = "cyclegan") -> int:
    """The most the download of dataset ``name`` may bring: its published size and half again
    (and 32 MiB), or 8 GiB where no size is published (16 GiB for the pix2pix archives, whose
    sizes are not published)."""
    published = (DATASETS if family == "cyclegan" else PIX2PIX_DATASETS).get(name)
    if published is None:
        return UNPUBLISHED_DATASET_MAX_BYTES if family == "cyclegan" else PIX2PIX_DATASET_MAX_BYTES
    return int(parse_size(published) * 1.5) + 32 * 2**20


@dataclass(frozen=True)
class Entry:
    """One official dataset or generator: its family (``cyclegan`` or ``pix2pix``), its name on
    the server, and what the listing says of it (a size, or what the generator does)."""

    family: str
    name: str
    info: str | None

    @property
    def qualified(self) -> str:
        """``FAMILY/NAME``: the name that is never ambiguous."""
        return f"{self.family}/{self.name}"


def dataset_entries() -> list[Entry]:
    """Every official dataset, the CycleGAN ones first."""
    return ([Entry("cyclegan", n, size) for n, size in DATASETS.items()]
            + [Entry("pix2pix", n, size) for n, size in PIX2PIX_DATASETS.items()])


def model_entries() -> list[Entry]:
    """Every official pretrained generator, the CycleGAN ones first."""
    return ([Entry("cyclegan", n, what) for n, what in MODELS.items()]
            + [Entry("pix2pix", n, what) for n, what in PIX2PIX_MODELS.items()]
            + [Entry("cut", n, what) for n, what in CUT_MODELS.items()])


def _find(text: str, entries: list[Entry]) -> Entry | None:
    """The entry ``text`` names: ``FAMILY/NAME``, or a bare ``NAME`` (the first family that has it)."""
    family, slash, name = text.rpartition("/")
    if slash and not family:
        return None
    return next((e for e in entries if e.name == name and (not family or e.family == family)), None)


def find_dataset(text: str) -> Entry | None:
    """The official dataset ``text`` names (``horse2zebra``, ``pix2pix/facades``), or None."""
    return _find(text, dataset_entries())


def find_model(text: str) -> Entry | None:
    """The official generator ``text`` names (``horse2zebra``, ``pix2pix/sat2map``), or None."""
    return _find(text, model_entries())


def base_url(given: str | None = None) -> str:
    return (given or os.environ.get("CYCLEGAN_BASE_URL") or BASE_URL).rstrip("/")


def pix2pix_base_url(given: str | None = None) -> str:
    return (given or os.environ.get("CYCLEGAN_PIX2PIX_BASE_URL") or PIX2PIX_BASE_URL).rstrip("/")


def dataset_url(name: str, base: str | None = None, family: str = "cyclegan") -> str:
    """``BASE/datasets/NAME.zip`` (CycleGAN) or ``BASE/datasets/NAME.tar.gz`` (pix2pix)."""
    if family == "pix2pix":
        return f"{pix2pix_base_url(base)}/datasets/{name}.tar.gz"
    return f"{base_url(base)}/datasets/{name}.zip"


def model_url(name: str, base: str | None = None, family: str = "cyclegan") -> str:
    """``BASE/pretrained_models/NAME.pth`` (CycleGAN) or ``BASE/models-pytorch/NAME.pth`` (pix2pix)."""
    if family == "pix2pix":
        return f"{pix2pix_base_url(base)}/models-pytorch/{name}.pth"
    return f"{base_url(base)}/pretrained_models/{name}.pth"


def cut_base_url(given: str | None = None) -> str:
    return (given or os.environ.get("CYCLEGAN_CUT_BASE_URL") or CUT_BASE_URL).rstrip("/")


def cut_archive_url(base: str | None = None) -> str:
    """``BASE/pretrained_models.tar``: every official CUT and FastCUT generator, in one archive."""
    return f"{cut_base_url(base)}/{CUT_ARCHIVE}"


def cut_archive_member(name: str) -> str:
    """The path ``NAME`` has in the CUT archive, after any leading folders (``checkpoints/``)."""
    return f"{name}_pretrained/latest_net_G.pth"


def inception_url(given: str | None = None) -> str:
    return given or os.environ.get("CYCLEGAN_INCEPTION_URL") or INCEPTION_URL


def pretrained_root() -> Path:
    """Where pretrained generators are kept: ``$CYCLEGAN_PRETRAINED`` or ``pretrained/``."""
    return Path(os.environ.get("CYCLEGAN_PRETRAINED", "pretrained"))


def pretrained_path(name: str, root: Path | None = None, family: str = "cyclegan") -> Path:
    """``ROOT/NAME.pth`` for a CycleGAN generator, ``ROOT/pix2pix/NAME.pth`` for a pix2pix one
    (``sat2map`` is both: neither file may replace the other), ``ROOT/cut/NAME.pth`` for CUT's."""
    folder = root or pretrained_root()
    return (folder if family == "cyclegan" else folder / family) / f"{name}.pth"


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
