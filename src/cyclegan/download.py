"""``cyclegan download``: the official datasets, the official pretrained generators and the FID
Inception network, fetched safely in one command.

    cyclegan download dataset horse2zebra [--root data]      -> data/horse2zebra/{trainA,trainB,testA,testB}
    cyclegan download dataset --list
    cyclegan download model horse2zebra [--root pretrained]  -> pretrained/horse2zebra.pth
    cyclegan download inception                              -> ~/.cache/cyclegan/inception-2015-12-05.pt

Then ``cyclegan train --dataset_name horse2zebra`` reads the dataset, ``cyclegan translate
--checkpoint horse2zebra`` the generator, ``cyclegan evaluate`` the Inception network.

Every download resumes where an interrupted one stopped, is cut off past a byte cap (the
published size and half again, or ``--max_size``) and is renamed into place only when whole
(``fetch.download``); a dataset's archive has a hidden name of its own, so nothing of the user's
beside it is touched; a dataset is extracted safely into a temporary folder and renamed
into place (``fetch.extract_zip``); a generator must load as a state dict of tensors
(``weights_only``) before it is kept; the Inception network must match its published SHA-256.
The official server publishes no checksums for the datasets and generators: for them the size
the server announces, the archive's own CRCs and the loading test stand in.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cyclegan import zoo
from cyclegan.checkpoint import load_state_dict_file
from cyclegan.datasets import has_split
from cyclegan.errors import CycleGANError
from cyclegan.fetch import DownloadError, download, extract_zip
from cyclegan.runtime import add_debug_flag, run_command
from cyclegan.utils import replace_dir

__all__ = ["main", "get_args_parser", "download_dataset", "download_model", "download_inception"]

log = logging.getLogger("cyclegan.download")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan download", description=(
        "Download an official CycleGAN dataset, an official pretrained generator, or the FID Inception network: "
        "resumable, checked, extracted safely."))
    sub = p.add_subparsers(dest="what", required=True, metavar="{dataset,model,inception}")
    data = sub.add_parser("dataset", help="an official dataset, into ROOT/NAME", description=(
        "Download and extract an official CycleGAN dataset into ROOT/NAME (trainA, trainB, testA, testB), where "
        "'cyclegan train --dataset_name NAME' reads it."))
    data.add_argument("name", nargs="?", help="the dataset (see --list)")
    data.add_argument("--list", action="store_true", help="list the official datasets and their sizes")
    data.add_argument("--root", default="data", help="where datasets go (default: data)")
    data.add_argument("--keep_archive", action="store_true", help="keep the .zip after extracting it")
    data.add_argument("--force", action="store_true", help="download and extract again over a complete ROOT/NAME")
    model = sub.add_parser("model", help="an official pretrained generator, into ROOT/NAME.pth", description=(
        "Download an official pretrained generator to ROOT/NAME.pth, where 'cyclegan translate --checkpoint NAME' "
        "finds it."))
    model.add_argument("name", nargs="?", help="the model (see --list)")
    model.add_argument("--list", action="store_true", help="list the official pretrained generators")
    model.add_argument("--root", default=None, help="where generators go (default: $CYCLEGAN_PRETRAINED or "
                                                    "pretrained)")
    model.add_argument("--force", action="store_true", help="download again over an existing file")
    for parser in (data, model):
        parser.add_argument("--base_url", default=None, help=(
            f"a mirror of the official server (default: $CYCLEGAN_BASE_URL or {zoo.BASE_URL}); files are "
            "BASE/datasets/NAME.zip and BASE/pretrained_models/NAME.pth"))
    incep = sub.add_parser("inception", help="the FID Inception network, for cyclegan evaluate", description=(
        "Download the FID Inception network (TorchScript) that 'cyclegan evaluate' uses, checked against its "
        "published SHA-256."))
    incep.add_argument("--output", default=None, help=(
        "the file to write (default: $CYCLEGAN_INCEPTION, else ~/.cache/cyclegan/" + zoo.INCEPTION_FILE + ")"))
    incep.add_argument("--url", default=None, help=f"where to get it (default: $CYCLEGAN_INCEPTION_URL or "
                                                   f"{zoo.INCEPTION_URL})")
    incep.add_argument("--sha256", default=zoo.INCEPTION_SHA256, help="the checksum the file must have (default: "
                                                                      "the published one)")
    incep.add_argument("--force", action="store_true", help="download again over an existing file")
    for parser in (data, model, incep):
        parser.add_argument("--max_size", type=_size, default=None, help=(
            "stop a download that brings more than this (as 800MB or 2GiB) and delete it (default: a dataset's "
            "published size and half again, 512MiB for a generator or the Inception network)"))
        add_debug_flag(parser)
    return p


def _size(text: str) -> int:
    try:
        return zoo.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listing(entries: dict[str, str | None], header: str) -> str:
    width = max(len(name) for name in entries)
    return header + "\n" + "\n".join(f"  {name:<{width}}  {info or ''}".rstrip() for name, info in entries.items())


def require_name(name: str | None, known: dict, what: str) -> str:
    if name is None:
        raise CycleGANError(f"cyclegan download {what}: give a name, or --list to see them")
    if name not in known:
        raise CycleGANError(f"cyclegan download {what} {name}: not an official {what}; the {what}s are: "
                            + ", ".join(known))
    return name


def download_dataset(name: str, root: Path, base: str | None = None, keep_archive: bool = False,
                     force: bool = False, max_bytes: int | None = None) -> Path:
    """``root/name``, complete: downloaded (to a hidden name of its own: nothing of the user's in
    ``root`` is touched but ``root/name`` with ``force``), extracted safely, renamed into place."""
    target = root / name
    if target.exists() and not force:
        if has_split(target, "train"):
            log.info("%s is already there (pass --force to download it again)", target)
            return target
        raise CycleGANError(f"{target} exists but holds no train split: move it away or pass --force")
    if target.exists() and not target.is_dir():
        raise CycleGANError(f"{target} is a file: move it away to download the dataset there")
    archive = root / f".cyclegan-{name}.zip"  # the download's own name: a user's NAME.zip is never touched
    url = zoo.dataset_url(name, base)
    log.info("downloading %s (%s) from %s", name, zoo.DATASETS.get(name) or "size unknown", url)
    download(url, archive, max_bytes=max_bytes or zoo.dataset_max_bytes(name))
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".new", dir=root))
    try:
        staged = work / name
        try:
            extract_zip(archive, staged, strip_top=name)
            if not has_split(staged, "train"):
                raise DownloadError(f"{archive}: the archive holds no train split (trainA and trainB)")
        except DownloadError as exc:  # an archive that is refused is not kept either
            archive.unlink(missing_ok=True)
            raise DownloadError(f"{exc}; the archive was deleted") from exc
        replace_dir(staged, target)  # --force: the old folder goes only once the new one is whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    elif (root / f"{name}.zip").exists():
        log.info("kept the archive as %s (%s is there already)", archive, root / f"{name}.zip")
    else:
        os.replace(archive, root / f"{name}.zip")
        log.info("kept the archive as %s", root / f"{name}.zip")
    log.info("%s is ready: cyclegan train --dataset_name %s%s", target, name,
             "" if root == Path("data") else f" --dataroot {target}")
    return target


def download_model(name: str, root: Path | None = None, base: str | None = None, force: bool = False,
                   max_bytes: int | None = None) -> Path:
    """``root/name.pth``: downloaded, and kept only if it loads as a generator's weights."""
    target = zoo.pretrained_path(name, root)
    if target.is_file() and not force:
        log.info("%s is already there (pass --force to download it again)", target)
        return target
    url = zoo.model_url(name, base)

    def loads_as_weights(path: Path) -> None:
        try:
            load_state_dict_file(path)
        except CycleGANError as exc:
            raise DownloadError(f"{url}: not a generator's weights ({exc}); the file was deleted") from exc

    download(url, target, check=loads_as_weights, max_bytes=max_bytes or zoo.MODEL_MAX_BYTES)
    log.info("%s is ready: cyclegan translate --checkpoint %s --input IMAGES --output OUT", target, name)
    return target


def download_inception(output: Path | None = None, url: str | None = None, sha256: str | None = zoo.INCEPTION_SHA256,
                       force: bool = False, max_bytes: int | None = None) -> Path:
    """The FID Inception network, checked against ``sha256``."""
    target = output or zoo.inception_locations()[0]
    if target.is_file() and not force:
        log.info("%s is already there (pass --force to download it again)", target)
        return target
    download(zoo.inception_url(url), target, sha256=sha256, max_bytes=max_bytes or zoo.INCEPTION_MAX_BYTES)
    log.info("%s is ready for cyclegan evaluate", target)
    return target


def run(args: argparse.Namespace) -> int:
    if args.what == "inception":
        download_inception(Path(args.output) if args.output else None, args.url, args.sha256, args.force,
                           args.max_size)
        return 0
    entries: dict[str, str | None] = dict(zoo.DATASETS) if args.what == "dataset" else dict(zoo.MODELS)
    if args.list:
        print(listing(entries, f"official {args.what}s ({'archive size' if args.what == 'dataset' else 'what it does'}):"))
        return 0
    name = require_name(args.name, entries, args.what)
    if args.what == "dataset":
        download_dataset(name, Path(args.root), args.base_url, args.keep_archive, args.force, args.max_size)
    else:
        download_model(name, Path(args.root) if args.root else None, args.base_url, args.force, args.max_size)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
