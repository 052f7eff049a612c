"""``cyclegan download``: the official CycleGAN and pix2pix datasets, the official pretrained
generators and the FID Inception network, fetched safely in one command.

    cyclegan download dataset horse2zebra [--root data]      -> data/horse2zebra/{trainA,trainB,testA,testB}
    cyclegan download dataset pix2pix/facades                -> data/facades/{train,val,test} (aligned A|B pairs)
    cyclegan download dataset --list
    cyclegan download model horse2zebra [--root pretrained]  -> pretrained/horse2zebra.pth
    cyclegan download model pix2pix/facades_label2photo      -> pretrained/pix2pix/facades_label2photo.pth
    cyclegan download model horse2zebra_cut                  -> pretrained/cut/horse2zebra_cut.pth (and the
                                                                other five CUT/FastCUT generators)
    cyclegan download inception                              -> ~/.cache/cyclegan/inception-2015-12-05.pt

Then ``cyclegan train --dataset_name horse2zebra`` reads the dataset, ``cyclegan translate
--checkpoint horse2zebra`` (or ``pix2pix/facades_label2photo``) the generator, ``cyclegan
evaluate`` the Inception network. A name is ``FAMILY/NAME``; a bare name is the CycleGAN entry
where there is one, else the pix2pix one (``zoo``).

Every download resumes where an interrupted one stopped, is cut off past a byte cap (the
published size and half again, or ``--max_size``) and is renamed into place only when whole
(``fetch.download``); a dataset's archive has a hidden name of its own, so nothing of the user's
beside it is touched; a dataset is extracted safely into a temporary folder and renamed
into place (``fetch.extract_zip``, ``fetch.extract_tar`` for the pix2pix ``.tar.gz``); a generator
must load as a state dict of tensors (``weights_only``) before it is kept; the official CUT and
FastCUT generators come as one ``.tar`` (the one the official CUT README gives), fetched once under
a hidden name with the same rules, each generator read out of it (never extracted by its own
path), checked to load as the official CUT network and renamed into place; the archive is then
deleted (a refused one too); the Inception network
must match its published SHA-256. The official servers publish no checksums for the datasets and
generators: for them the size the server announces, the archive's own CRCs and the loading test
stand in.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cyclegan import zoo
from cyclegan.checkpoint import load_state_dict_file
from cyclegan.datasets import has_split
from cyclegan.errors import CycleGANError
from cyclegan.fetch import DownloadError, download, extract_tar, extract_zip
from cyclegan.images import IMG_EXTENSIONS
from cyclegan.runtime import add_debug_flag, run_command
from cyclegan.utils import replace_dir

__all__ = ["main", "get_args_parser", "download_dataset", "download_model", "download_inception", "has_aligned_split"]

log = logging.getLogger("cyclegan.download")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan download", description=(
        "Download an official CycleGAN or pix2pix dataset, an official pretrained generator, or the FID Inception "
        "network: resumable, checked, extracted safely."))
    sub = p.add_subparsers(dest="what", required=True, metavar="{dataset,model,inception}")
    data = sub.add_parser("dataset", help="an official dataset, into ROOT/NAME", description=(
        "Download and extract an official dataset into ROOT/NAME: a CycleGAN one (trainA, trainB, testA, testB), "
        "where 'cyclegan train --dataset_name NAME' reads it, or a pix2pix one (pix2pix/NAME: train, val, test "
        "of aligned pairs, A and B side by side in each image)."))
    data.add_argument("name", nargs="?", help="the dataset, NAME or FAMILY/NAME (see --list)")
    data.add_argument("--list", action="store_true", help="list the official datasets and their sizes")
    data.add_argument("--root", default="data", help="where datasets go (default: data)")
    data.add_argument("--keep_archive", action="store_true", help="keep the .zip or .tar.gz after extracting it")
    data.add_argument("--force", action="store_true", help="download and extract again over a complete ROOT/NAME")
    model = sub.add_parser("model", help="an official pretrained generator, into ROOT/NAME.pth", description=(
        "Download an official pretrained generator to ROOT/NAME.pth (a pix2pix one to ROOT/pix2pix/NAME.pth, a CUT "
        "one to ROOT/cut/NAME.pth: the official CUT archive, fetched once, holds all six), where 'cyclegan "
        "translate --checkpoint NAME' finds it."))
    model.add_argument("name", nargs="?", help="the model, NAME or FAMILY/NAME (see --list)")
    model.add_argument("--list", action="store_true", help="list the official pretrained generators (CycleGAN, "
                                                           "pix2pix, CUT and FastCUT)")
    model.add_argument("--root", default=None, help="where generators go (default: $CYCLEGAN_PRETRAINED or "
                                                    "pretrained)")
    model.add_argument("--force", action="store_true", help="download again over an existing file")
    for parser in (data, model):
        parser.add_argument("--base_url", default=None, help=(
            f"a mirror of the official server (default: $CYCLEGAN_BASE_URL or {zoo.BASE_URL} for CycleGAN, "
            f"$CYCLEGAN_PIX2PIX_BASE_URL or {zoo.PIX2PIX_BASE_URL} for pix2pix, $CYCLEGAN_CUT_BASE_URL or "
            f"{zoo.CUT_BASE_URL} for CUT); files are BASE/datasets/NAME.zip and BASE/pretrained_models/NAME.pth, or "
            "BASE/datasets/NAME.tar.gz and BASE/models-pytorch/NAME.pth, or BASE/pretrained_models.tar (CUT)"))
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
            "published size and half again, 512MiB for a generator or the Inception network, 4GiB for the CUT "
            "archive)"))
        add_debug_flag(parser)
    return p


def _size(text: str) -> int:
    try:
        return zoo.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listing(entries: list[zoo.Entry], what: str) -> str:
    """The ``--list`` text: each family's entries under a header saying what they are."""
    bare = "a bare NAME works where no CycleGAN one has it"
    headers = {
        ("dataset", "cyclegan"): "CycleGAN datasets (unpaired: trainA, trainB, testA, testB; archive size):",
        ("dataset", "pix2pix"): f"pix2pix datasets (aligned A|B pairs: train, val[, test]; size unpublished; {bare}):",
        ("model", "cyclegan"): "CycleGAN generators (ResnetGenerator, 9 blocks):",
        ("model", "pix2pix"): f"pix2pix generators (UnetGenerator unet_256, batch norm; {bare}):",
        ("model", "cut"): "CUT and FastCUT generators (the official CUT's anti-aliased ResnetGenerator, 9 blocks; "
                          "one archive holds all six, fetched once):",
    }
    width = max(len(e.qualified) for e in entries)
    lines: list[str] = []
    for family in zoo.FAMILIES:
        if (what, family) not in headers:
            continue
        lines.append(headers[what, family])
        for e in (e for e in entries if e.family == family):
            withheld = what == "dataset" and family == "pix2pix" and e.name in zoo.PIX2PIX_WITHHELD
            info = "not distributed (licence): cyclegan download dataset says where to get it" if withheld else e.info
            bare_is_this = (zoo.find_dataset(e.name) if what == "dataset" else zoo.find_model(e.name)) == e
            label = e.name if family == "cyclegan" or (family == "cut" and bare_is_this) else e.qualified
            lines.append(f"  {label:<{width}}  {info or ''}".rstrip())
    return "\n".join(lines)


def require_entry(name: str | None, what: str) -> zoo.Entry:
    """The official dataset or model ``name`` names (``NAME`` or ``FAMILY/NAME``)."""
    if name is None:
        raise CycleGANError(f"cyclegan download {what}: give a name, or --list to see them")
    entry = zoo.find_dataset(name) if what == "dataset" else zoo.find_model(name)
    if entry is None:
        known = zoo.dataset_entries() if what == "dataset" else zoo.model_entries()
        raise CycleGANError(f"cyclegan download {what} {name}: not an official {what}; the {what}s are: "
                            + ", ".join(e.name if e.family != "pix2pix" else e.qualified for e in known))
    if "/" not in name and entry.family == "cyclegan" and (
            zoo.find_dataset(f"pix2pix/{name}") if what == "dataset" else zoo.find_model(f"pix2pix/{name}")):
        log.info("%s is the CycleGAN %s; the pix2pix one is pix2pix/%s", name, what, name)
    return entry


def has_aligned_split(root: Path, mode: str = "train") -> bool:
    """Whether ``root/mode`` holds images (the pix2pix layout: one folder of A|B pairs per split)."""
    folder = root / mode
    return folder.is_dir() and any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.iterdir())


def _layout(entry: zoo.Entry) -> tuple[Callable[[Path], bool], str]:
    """How to tell that a folder holds ``entry``'s dataset, and how to say what it lacks."""
    if entry.family == "pix2pix":
        return has_aligned_split, "train/ folder of images (the pix2pix layout)"
    return (lambda folder: has_split(folder, "train")), "train split (trainA and trainB)"


def _extract_dataset(entry: zoo.Entry, archive: Path, staged: Path) -> None:
    """``archive`` extracted to ``staged`` and checked to hold the dataset; a refused archive
    is deleted."""
    ready, holds = _layout(entry)
    try:
        (extract_tar if entry.family == "pix2pix" else extract_zip)(archive, staged, strip_top=entry.name)
        if not ready(staged):
            raise DownloadError(f"{archive}: the archive holds no {holds}")
    except DownloadError as exc:  # an archive that is refused is not kept either
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{exc}; the archive was deleted") from exc


def download_dataset(name: str, root: Path, base: str | None = None, keep_archive: bool = False,
                     force: bool = False, max_bytes: int | None = None) -> Path:
    """``root/NAME``, complete: downloaded (to a hidden name of its own: nothing of the user's in
    ``root`` is touched but ``root/NAME`` with ``force``), extracted safely, renamed into place.
    ``name`` is ``NAME`` or ``FAMILY/NAME`` (``pix2pix/facades``)."""
    entry = require_entry(name, "dataset")
    if entry.family == "pix2pix" and entry.name in zoo.PIX2PIX_WITHHELD:
        raise CycleGANError(f"cyclegan download dataset {name}: {zoo.PIX2PIX_WITHHELD[entry.name]}")
    name, target = entry.name, root / entry.name
    ready, holds = _layout(entry)
    if target.exists() and not force:
        if ready(target):
            log.info("%s is already there (pass --force to download it again)", target)
            return target
        other = next((e for e in zoo.dataset_entries() if e.name == name and e != entry), None)
        guess = f" (the {other.family} {name}?)" if other else ""
        raise CycleGANError(f"{target} exists but holds no {holds}{guess}: move it away, give another --root, or "
                            "pass --force")
    if target.exists() and not target.is_dir():
        raise CycleGANError(f"{target} is a file: move it away to download the dataset there")
    suffix = ".tar.gz" if entry.family == "pix2pix" else ".zip"
    prefix = ".cyclegan-pix2pix-" if entry.family == "pix2pix" else ".cyclegan-"
    archive = root / f"{prefix}{name}{suffix}"  # the download's own name: a user's NAME.zip is never touched
    url = zoo.dataset_url(name, base, entry.family)
    log.info("downloading %s (%s) from %s", entry.qualified, entry.info or "size unknown", url)
    download(url, archive, max_bytes=max_bytes or zoo.dataset_max_bytes(name, entry.family))
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".new", dir=root))
    try:
        staged = work / name
        _extract_dataset(entry, archive, staged)
        replace_dir(staged, target)  # --force: the old folder goes only once the new one is whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kept = root / f"{name}{suffix}"
    if not keep_archive:
        archive.unlink()
    elif kept.exists():
        log.info("kept the archive as %s (%s is there already)", archive, kept)
    else:
        os.replace(archive, kept)
        log.info("kept the archive as %s", kept)
    if entry.family == "pix2pix":
        log.info("%s is ready: aligned pairs (A left, B right in each image) in %s; train on them with: cyclegan "
                 "train --model pix2pix --dataroot %s", target,
                 ", ".join(sorted(p.name for p in target.iterdir() if p.is_dir())), target)
    else:
        log.info("%s is ready: cyclegan train --dataset_name %s%s", target, name,
                 "" if root == Path("data") else f" --dataroot {target}")
    return target


def download_model(name: str, root: Path | None = None, base: str | None = None, force: bool = False,
                   max_bytes: int | None = None) -> Path:
    """``root/NAME.pth`` (``root/pix2pix/NAME.pth`` for a pix2pix generator): downloaded, and kept
    only if it loads as a generator's weights."""
    entry = require_entry(name, "model")
    target = zoo.pretrained_path(entry.name, root, entry.family)
    if target.is_file() and not force:
        log.info("%s is already there (pass --force to download it again)", target)
        return target
    if entry.family == "cut":
        return _download_cut(entry, root or zoo.pretrained_root(), base, force, max_bytes)
    url = zoo.model_url(entry.name, base, entry.family)

    def loads_as_weights(path: Path) -> None:
        try:
            load_state_dict_file(path)
        except CycleGANError as exc:
            raise DownloadError(f"{url}: not a generator's weights ({exc}); the file was deleted") from exc

    download(url, target, check=loads_as_weights, max_bytes=max_bytes or zoo.MODEL_MAX_BYTES)
    log.info("%s is ready: cyclegan translate --checkpoint %s --input IMAGES --output OUT", target,
             entry.name if zoo.find_model(entry.name) == entry else entry.qualified)
    return target


def _download_cut(entry: zoo.Entry, root: Path, base: str | None, force: bool, max_bytes: int | None) -> Path:
    """``root/cut/NAME.pth``, read out of the official CUT archive; the archive's other
    generators are kept beside it (those already there are left alone, unless ``force``), and the
    archive is deleted."""
    url = zoo.cut_archive_url(base)
    archive = root / "cut" / f".cyclegan-cut-{zoo.CUT_ARCHIVE}"  # the download's own name
    if archive.is_file() and not force:  # whole, kept by a disk error while reading it
        log.info("reading the CUT archive downloaded before, %s", archive)
    else:
        log.info("downloading the official CUT and FastCUT generators (one archive, size unpublished) from %s", url)
        download(url, archive, max_bytes=max_bytes or zoo.CUT_ARCHIVE_MAX_BYTES)
    try:
        kept = _generators_from_cut_archive(archive, root, entry.name, force)
    except DownloadError as exc:
        archive.unlink(missing_ok=True)  # refused: not kept either
        raise DownloadError(f"{exc}; {entry.name} was not kept, and the archive was deleted") from exc
    archive.unlink()  # every generator it holds is out; an OSError (a full disk) keeps it for the next call
    target = zoo.pretrained_path(entry.name, root, "cut")
    log.info("%s is ready (with %s): cyclegan translate --checkpoint %s --input IMAGES --output OUT", target,
             ", ".join(k for k in kept if k != entry.name) or "no other", entry.name)
    return target


def _generators_from_cut_archive(archive: Path, root: Path, wanted: str, force: bool) -> list[str]:
    """Each official CUT generator in ``archive`` written to ``root/cut/NAME.pth``, checked to load
    as the official CUT network first; a DownloadError when ``wanted`` is not in it or does not
    load (another that does not is left out with a warning). Returns the names kept."""
    by_path = {zoo.cut_archive_member(name): name for name in zoo.CUT_MODELS}
    kept: list[str] = []
    try:
        with tarfile.open(archive) as tar:
            members: dict[str, tarfile.TarInfo | None] = dict.fromkeys(zoo.CUT_MODELS)
            for member in tar.getmembers():  # NAME_pretrained/latest_net_G.pth under any leading folders
                name = by_path.get("/".join(member.name.split("/")[-2:]))
                if name is not None and members[name] is None:
                    members[name] = member
            if members[wanted] is None:
                raise DownloadError(f"{archive}: the archive holds no {zoo.cut_archive_member(wanted)}")
            for name, member in members.items():
                target = zoo.pretrained_path(name, root, "cut")
                if member is None or (target.is_file() and not force and name != wanted):
                    continue
                try:
                    _generator_from_member(tar, member, archive, target)
                except DownloadError as exc:
                    if name == wanted:
                        raise
                    log.warning("%s; %s was not kept", exc, target)  # the one asked for still is
                    continue
                kept.append(name)
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive}: not a whole tar archive ({exc})") from exc
    return kept


def _generator_from_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path, target: Path) -> None:
    """``member`` of the CUT archive written to ``target`` (through a hidden name beside it) once it
    loads as a generator; a DownloadError otherwise, and nothing left."""
    from cyclegan.inference import generator_from_state_dict

    if not member.isfile() or member.size > zoo.MODEL_MAX_BYTES:
        raise DownloadError(f"{archive}: {member.name} is not a generator's file (a link, a folder or over "
                            f"{zoo.MODEL_MAX_BYTES} bytes)")
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    staged = target.with_name(f".{target.name}.new")
    try:
        with source, open(staged, "wb") as out:
            shutil.copyfileobj(source, out)
        try:
            generator_from_state_dict(load_state_dict_file(staged), f"{archive}: {member.name}")
        except CycleGANError as exc:
            raise DownloadError(str(exc)) from exc
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


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
    if args.list:
        entries = zoo.dataset_entries() if args.what == "dataset" else zoo.model_entries()
        print(listing(entries, args.what))
        return 0
    if args.what == "dataset":
        download_dataset(args.name, Path(args.root), args.base_url, args.keep_archive, args.force, args.max_size)
    else:
        download_model(args.name, Path(args.root) if args.root else None, args.base_url, args.force, args.max_size)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
