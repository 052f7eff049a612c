"""``cyclegan translate``: a trained generator on any images, at full resolution.

    cyclegan translate --checkpoint runs/h2z --input photos/ 'more/*.jpg' one.png --output out/

Inputs are files, folders (their images, not recursive) or glob patterns. Every image keeps its
size: it is padded by reflection to what the generator needs and cropped back (``--resize``
works at the training size instead and scales back). Images of equal size go through in
batches; ``--tile`` translates big images in overlapping tiles with blended seams. Outputs keep
the input's name, in the format of ``--ext`` (default: the input's own when it is png, jpg, webp,
tif or npy, else png), each written atomically; ``index.html`` shows inputs and outputs side by
side. Scientific images (16-bit, float, any channel count, NIfTI volumes: ``science``) are read
and written at full precision, in the run's units (``--output_dtype``; docs/scientific.md).
Grey inputs of a colour model are made RGB, and an RGBA image's alpha is put back on its
translation. An input that cannot be read or translated is reported by name and skipped; the
others are written, with ``index.html``, and the exit status is then 1.

Nothing of the user's is ever replaced: before any work, an output folder that is, holds or lies
in an input folder is refused, and so is an output that would replace an input; files already in
the output folder under this call's output names (``index.html`` included) are replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import glob
import html
import logging
import os
import sys
import urllib.parse
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cyclegan import science
from cyclegan.errors import CycleGANError
from cyclegan.images import IMG_EXTENSIONS, list_images, tensor_to_image, write_image
from cyclegan.inference import (
    add_epoch_flag,
    Generator,
    OnnxGenerator,
    automatic_tile,
    load_generator,
    translate_image,
    whole_image_bytes,
)
from cyclegan.runtime import add_debug_flag, available_bytes, resolve_device, run_command
from cyclegan.utils import atomic_write

__all__ = ["main", "get_args_parser", "collect_inputs"]

log = logging.getLogger("cyclegan.translate")

OUTPUT_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # written in their own format; others as png
SCIENCE_EXTENSIONS = ("tif", "tiff", "npy")  # scientific images keep these (and NIfTI volumes theirs)
VIEWABLE = (".png", ".jpg", ".webp")  # what index.html shows as pictures (the rest as links)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cyclegan translate",
        description="Translate images with a trained generator, each at its own full resolution.",
    )
    p.add_argument("--checkpoint", required=True, help=(
        "a run folder (its newest checkpoint), a checkpoint (epoch_N.safetensors or a run checkpoint folder), "
        "one generator's weights (.pth or .safetensors: the reference's G_AB_N.pth, the official "
        "latest_net_G_A.pth, the official pix2pix or CUT latest_net_G.pth), the name of an official pretrained "
        "generator fetched with 'cyclegan download model NAME' (e.g. horse2zebra, horse2zebra_cut), or with "
        "--backend onnxruntime an exported .onnx file"))
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image files, folders of images, or glob patterns (quote them)")
    p.add_argument("--output", required=True, help="folder for the translated images and index.html")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB", help=(
        "which generator of a run: G_AB (AtoB) or G_BA (BtoA); a file with one generator has no choice "
        "(default: AtoB)"))
    add_epoch_flag(p)
    p.add_argument("--resize", action="store_true", help=(
        "translate at the training size (the shorter side scaled to it) and scale the result back to the "
        "image's size, instead of at full resolution"))
    p.add_argument("--size", type=int, default=None, help=(
        "with --resize: the shorter side to work at (default: the run's training size, else 256)"))
    p.add_argument("--batch_size", type=int, default=4, help="images of equal size per batch (default: 4)")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE", help=(
        "translate in SIZE x SIZE tiles with blended seams (default: whole images, or tiles of the largest of "
        "2048, 1024, 512, 256 that fits when a whole image would need more than half the free memory)"))
    p.add_argument("--overlap", type=int, default=32, metavar="PX", help="pixels tiles share (default: 32)")
    p.add_argument("--ext", choices=("png", "jpg", "webp", "tif", "npy"), default=None, help=(
        "output format (default: the input's when png, jpg or webp, else png; a scientific image's own: png, "
        "tif, npy; a NIfTI volume is written as a volume)"))
    p.add_argument("--output_dtype", choices=(*science.OUTPUT_DTYPES, "input"), default=None, help=(
        "scientific images: the type of the written values, or 'input' for the input file's (default: the type of "
        "the run's target-domain files, else the input's; 8-bit photographs stay 8-bit)"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch", help=(
        "torch, or onnxruntime running a file made by 'cyclegan export --format onnx' (default: torch)"))
    p.add_argument("--no_index", action="store_true", help="do not write index.html")
    p.add_argument("--overwrite", action="store_true", help=(
        "replace files already in --output that have the names of this call's outputs (or index.html); without "
        "it they are left alone and nothing is translated. An input is never replaced"))
    add_debug_flag(p)
    return p


def collect_inputs(specs: Sequence[str]) -> list[tuple[Path, Path]]:
    """``(image file, output name relative to the output folder)`` for every input, in order.
    Every output goes directly into the output folder under its file's name; ``run`` refuses
    two inputs that would get the same name."""
    found: list[tuple[Path, Path]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise CycleGANError(f"--input {spec}: the folder holds no images ({' '.join(IMG_EXTENSIONS)})")
            found += [(p, Path(p.name)) for p in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif any(c in spec for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                raise CycleGANError(f"--input {spec}: the pattern matches no file")
            found += [(m, Path(m.name)) for m in matches]
        else:
            raise CycleGANError(f"--input {spec}: no such file or folder")
    return found


@dataclass
class Item:
    source: Path
    target: Path
    size: tuple[int, int]
    tensor: torch.Tensor
    alpha: Image.Image | None
    # A scientific image: how its values are written back (domain, dtype, layout of the input).
    values: tuple[science.Domain, str, str] | None = None


def output_name(name: Path, ext: str | None) -> Path:
    if science.is_volume(name):  # a volume is written as a volume, under its own name
        return name
    own = name.suffix.lower().lstrip(".")
    keep = OUTPUT_EXTENSIONS + SCIENCE_EXTENSIONS
    chosen = ext or (own if own in keep else "png")
    return name.with_suffix("." + ("jpg" if chosen == "jpeg" else "tif" if chosen == "tiff" else chosen))


def translate_volume(gen: Generator | OnnxGenerator, domains: science.Domains, source: Path, target: Path,
                     args: argparse.Namespace, device: torch.device) -> None:
    """Every slice of a NIfTI volume through the generator, stacked back into a volume with the
    input's affine and header, in the target domain's units."""
    axis = domains.source.slice_axis if domains.source and domains.source.slice_axis is not None else 2
    _, like = science.read_volume(source)
    slices = science.volume_slices(source, axis)
    out: list[np.ndarray] = []
    for start in range(0, len(slices), args.batch_size):
        chunk = slices[start:start + args.batch_size]
        batch = torch.cat([domains.encode(s, source, gen) for s in chunk]).to(device)
        result = translate_image(gen, batch, args.tile, args.overlap)
        for s, y in zip(chunk, result):
            out.append(science.to_values(y, domains.target_for(s, gen), domains.dtype_for(s)))
    science.write_volume(out, axis, like, target)


def choose_tile(gen: Generator | OnnxGenerator, batch: torch.Tensor, device: torch.device,
                items: list[Item]) -> int | None:
    """Without --tile: whole images when they fit the memory there is, else tiles, said in a log line."""
    available = available_bytes(device)
    tile = automatic_tile(gen, batch.shape, available)
    if tile is not None:
        h, w = batch.shape[-2:]
        log.info("%s: %dx%d whole would need about %.1f GiB (%.1f GiB available): translating in %dx%d tiles "
                 "(--tile sets the size)", items[0].source.name, w, h,
                 whole_image_bytes(gen, h, w, batch.size(0)) / 2**30, available / 2**30, tile, tile)
    return tile


def _href(path: str) -> str:
    """A path for an HTML attribute: percent-encoded bytes, so that any file name (not UTF-8
    either) makes a valid page and the link finds the file."""
    return urllib.parse.quote(os.fsencode(path))


def _text(name: str) -> str:
    """A file name for HTML text: what is not UTF-8 shown as the replacement character."""
    return html.escape(os.fsencode(name).decode("utf-8", "replace"))


def write_index(output: Path, done: list[tuple[Path, Path]]) -> None:
    rows = []

    def cell(href: str, path: Path) -> str:  # a picture a browser shows, else a link to the file
        if path.suffix.lower() in VIEWABLE:
            return f'<img src="{href}" loading="lazy">'
        return f'<a href="{href}">{_text(path.name)}</a>'

    for source, target in done:
        src = _href(Path(os.path.relpath(source.resolve(), output.resolve())).as_posix())
        rows.append(f'<tr><td>{_text(source.name)}</td><td>{cell(src, source)}</td>'
                    f'<td>{cell(_href(target.as_posix()), target)}</td></tr>')
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>cyclegan translate</title><style>"
        "body{font-family:sans-serif}img{max-width:420px;max-height:420px}td{padding:4px;vertical-align:top}"
        "</style></head><body><table><tr><th>name</th><th>input</th><th>output</th></tr>"
        + "".join(rows) + "</table></body></html>\n"
    )
    with atomic_write(output / "index.html", "w") as f:
        f.write(page)


def check_flags(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise CycleGANError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.batch_size > 65536:
        raise CycleGANError(f"--batch_size {args.batch_size}: at most 65536")
    if not 0 <= args.overlap <= 4096:
        raise CycleGANError(f"--overlap {args.overlap}: give the pixels tiles share, from 0 to 4096")
    if args.tile is not None and args.tile > 65536:
        raise CycleGANError(f"--tile {args.tile}: at most 65536")
    if args.tile is not None and (args.tile < 16 or args.overlap >= args.tile // 2):
        raise CycleGANError(f"--tile {args.tile} --overlap {args.overlap}: the tile must be at least 16 and the "
                            "overlap below half the tile")
    if args.size is not None and not 4 <= args.size <= 65536:
        raise CycleGANError(f"--size {args.size}: give the shorter side to work at, from 4 to 65536 pixels")
    if not str(args.output).strip():
        raise CycleGANError("--output '': give the folder to write the translations to")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan_outputs(args: argparse.Namespace) -> tuple[Path, dict[Path, Path]]:
    """The output folder and ``{output name: input file}``, checked before any work: an output
    folder that is, holds or lies in an input folder, an output that would replace an input, two
    inputs with one output name, and (without ``--overwrite``) files already there under this
    call's output names are refused."""
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CycleGANError(f"--output {output} is a file: give a folder for the translations")
    out = output.resolve()
    for spec in args.input:
        folder = Path(spec)
        if folder.is_dir() and (_inside(out, folder.resolve()) or _inside(folder.resolve(), out)):
            raise CycleGANError(f"--output {output} and --input {spec}: the output folder may not be an input folder, "
                                "nor lie inside one or hold one; choose a separate --output")
    targets: dict[Path, Path] = {}
    for source, name in collect_inputs(args.input):
        target = output_name(name, args.ext)
        if target in targets and targets[target] != source:
            raise CycleGANError(f"--input: {targets[target]} and {source} would both be written to "
                                f"{output / target}; translate them into different --output folders")
        targets[target] = source
    sources = {source.resolve() for source in targets.values()}
    for target, source in targets.items():
        if (out / target).resolve() in sources:
            raise CycleGANError(f"--output {output}: the translation of {source} would replace the input "
                                f"{(out / target).resolve()}; choose another --output (or --ext)")
    taken = [output / t for t in targets if os.path.lexists(output / t)]
    if not args.no_index and os.path.lexists(output / "index.html"):
        taken.append(output / "index.html")
    folders = [p for p in taken if p.is_dir()]
    if folders:
        raise CycleGANError(f"--output {output}: {folders[0]} is a folder where a translation would go; choose "
                            "another --output")
    if taken and not args.overwrite:
        listing = ", ".join(str(p) for p in taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise CycleGANError(f"--output {output} already holds {len(taken)} of the files this would write ({listing}): "
                            "nothing was translated; pass --overwrite to replace them, or choose an empty --output")
    return output, targets


def _resized(tensor: torch.Tensor, size: tuple[int, int], work_size: int) -> torch.Tensor:
    """``--resize``: the image scaled so that its shorter side is ``work_size``."""
    w, h = size
    scale = work_size / min(w, h)
    work = (max(1, round(w * scale)), max(1, round(h * scale)))
    return torch.nn.functional.interpolate(tensor, size=(work[1], work[0]), mode="bicubic",
                                           align_corners=False).clamp(-1, 1)


def write_output(it: Item, out: torch.Tensor, output: Path) -> None:
    """Write one translation (``--resize``: scaled back to the input's size first): a scientific
    image in its units, type and layout; a photograph as 8-bit, its alpha put back."""
    if it.values is not None:
        domain, dtype, layout = it.values
        if tuple(out.shape[-2:]) != (it.size[1], it.size[0]):
            out = torch.nn.functional.interpolate(out[None].float(), size=(it.size[1], it.size[0]), mode="bicubic",
                                                  align_corners=False)[0]
        science.write_array(science.to_values(out, domain, dtype), output / it.target, layout)
        return
    image = tensor_to_image(out)
    if image.size != it.size:
        image = image.resize(it.size, Image.BICUBIC)
    if it.target.suffix.lower() == ".npy":  # an 8-bit side of a scientific run, named as its .npy input
        array = np.asarray(image)
        science.write_array(array[:, :, None] if array.ndim == 2 else array, output / it.target)
        return
    write_image(image, output / it.target, it.alpha)


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    output, targets = plan_outputs(args)
    device = resolve_device(args.device)
    gen: Generator | OnnxGenerator
    if args.backend == "onnxruntime":
        gen = OnnxGenerator(Path(args.checkpoint))
    else:
        gen = load_generator(args.checkpoint, args.direction, device, args.epoch)
    log.info("%s: %d -> %d channels; %d images", gen.source, gen.in_channels, gen.out_channels, len(targets))
    work_size = args.size or (min(gen.train_size) if gen.train_size else 256)

    from tqdm import tqdm

    failed: list[tuple[Path, str]] = []
    done: list[tuple[Path, Path]] = []
    groups: dict[tuple[int, int], list[Item]] = defaultdict(list)
    bar = tqdm(total=len(targets), unit="img", disable=not sys.stderr.isatty())

    def flush(items: list[Item]) -> None:
        try:
            batch = torch.cat([it.tensor for it in items]).to(device)
            result = translate_image(gen, batch, args.tile or choose_tile(gen, batch, device, items), args.overlap)
        except (RuntimeError, ValueError, MemoryError) as exc:  # one batch fails: the others go on
            failed.extend((it.source, f"could not be translated ({exc})") for it in items)
            bar.update(len(items))
            return
        for it, out in zip(items, result):
            try:
                write_output(it, out, output)
            except CycleGANError as exc:
                failed.append((it.source, str(exc)))
            else:
                done.append((it.source, it.target))
            bar.update(1)

    # an exported file holds one generator: its domains are its own input and output
    domains = science.Domains.of(gen, "AtoB" if args.backend == "onnxruntime" else args.direction, args.output_dtype)
    domains.check_formats(targets, gen)
    for target, source in targets.items():
        try:
            if science.is_volume(source):
                translate_volume(gen, domains, source, output / target, args, device)
                done.append((source, target))
                bar.update(1)
                continue
            tensor, alpha, size, values = domains.read_any(source, gen)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, CycleGANError,
                RuntimeError) as exc:
            failed.append((source, str(exc) or type(exc).__name__))
            bar.update(1)
            continue
        if args.resize:
            tensor = _resized(tensor, size, work_size)
        key = tuple(tensor.shape[-2:])
        groups[key].append(Item(source, target, size, tensor, alpha, values))
        if len(groups[key]) >= args.batch_size:
            flush(groups.pop(key))
    for items in groups.values():
        flush(items)
    bar.close()
    if not args.no_index and done:
        write_index(output, done)
    log.info("wrote %d images to %s", len(done), output)
    if failed:
        listing = "\n".join(f"  {path}: {why}" for path, why in failed)
        log.error("%d of %d inputs could not be translated and were skipped:\n%s", len(failed), len(targets), listing)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
