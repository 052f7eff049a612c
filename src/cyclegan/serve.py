"""``cyclegan serve``: try a trained model in the browser (Gradio; ``pip install ".[demo]"``).

    cyclegan serve --checkpoint runs/h2z [--host 127.0.0.1 --port 7860]

Upload or drop an image, choose the direction, and the translation appears next to it at the
image's own size, with a button to download it as PNG. The generators are loaded once, at the
start. The server listens on the loopback interface unless ``--host`` says otherwise. Uploads
above ``--max_upload_mb`` megabytes or ``--max_pixels`` pixels get a message saying the limit,
not an error page, and are never decoded. Uploads and translations are kept in one private
temporary folder, removed when the server stops (Ctrl-C or SIGTERM); a port already in use is
refused before anything is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from cyclegan import science
from cyclegan.errors import CycleGANError
from cyclegan.images import tensor_to_image, with_alpha, write_image
from cyclegan.inference import Generator, add_epoch_flag, automatic_tile, load_generator, translate_image
from cyclegan.runtime import add_debug_flag, available_bytes, resolve_device, run_command

__all__ = ["main", "build_app", "Translator"]

log = logging.getLogger("cyclegan.serve")


class Translator:
    """The generators of a checkpoint, loaded once; ``__call__`` translates one image file."""

    def __init__(self, checkpoint: str, device: torch.device, max_pixels: int, tile: int | None = None,
                 out_dir: Path | None = None, epoch: str = "latest") -> None:
        self.device, self.max_pixels, self.tile = device, max_pixels, tile
        first = load_generator(checkpoint, "AtoB", device, epoch)
        self.generators = {"AtoB": first}
        for direction in first.directions[1:]:  # a CycleGAN run: both directions
            self.generators[direction] = load_generator(checkpoint, direction, device, epoch)
        self.source = first.source.removesuffix(" (G_AB)")
        self.out_dir = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="cyclegan-serve-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def check(self, path: str) -> tuple[int, int]:
        """The image's size, read from its header (a scientific file's from its pixels); a
        ValueError with a message past a limit."""
        if science.is_volume(Path(path)):
            raise ValueError("This page translates images; a NIfTI volume is translated whole, slice by slice, by "
                             "cyclegan translate.")
        try:
            if science.needs_array_path(Path(path)):
                array, _ = science.read_array(Path(path))
                size = (array.shape[1], array.shape[0])
            else:
                with Image.open(path) as img:
                    size = img.size
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            raise ValueError(f"This file is not an image this server can read ({type(exc).__name__}: {exc}).") \
                from exc
        pixels = size[0] * size[1]
        if pixels > self.max_pixels:
            raise ValueError(f"The image is too large: {size[0]}x{size[1]} = {pixels:,} pixels; this server accepts at "
                             f"most {self.max_pixels:,} pixels (--max_pixels). Scale it down and try again.")
        return size

    def __call__(self, path: str, direction: str) -> tuple[Image.Image, str]:
        self.check(path)
        gen = self.generators[direction]
        domains = science.Domains.of(gen, direction, None)
        try:
            tensor, alpha, _, values = domains.read_any(Path(path), gen)
        except (CycleGANError, OSError) as exc:
            raise ValueError(str(exc)) from exc
        if values is not None:  # full precision: the download in the input's format, a picture shown
            return self._scientific(Path(path), gen, tensor, values, direction)
        tile = self.tile or automatic_tile(gen, tensor.shape, available_bytes(self.device))
        result = tensor_to_image(translate_image(gen, tensor.to(self.device), tile)[0])
        target = self.out_dir / f"{Path(path).stem}_{direction}.png"
        write_image(result, target, alpha)
        return with_alpha(result, alpha), str(target)  # the page shows what the download holds

    def _scientific(self, path: Path, gen: Generator, tensor: torch.Tensor, values: tuple[science.Domain, str, str],
                    direction: str) -> tuple[Image.Image, str]:
        """A scientific image: its translation written at full precision (TIFF, or the input's
        .npy), the page showing the run's --display_bands composite or the first channel as grey."""
        domain, dtype, layout = values
        tile = self.tile or automatic_tile(gen, tensor.shape, available_bytes(self.device))
        out = translate_image(gen, tensor.to(self.device), tile)[0].cpu()
        suffix = ".npy" if path.suffix.lower() == ".npy" else ".tif"
        target = self.out_dir / f"{path.stem}_{direction}{suffix}"
        science.write_array(science.to_values(out, domain, dtype), target, layout)
        bands = science.parse_bands((gen.config or {}).get("display_bands"))
        shown = science.composite(out[None], bands)[0]
        return tensor_to_image(shown), str(target)


def build_app(translator: Translator, max_upload_mb: float):
    import gradio as gr

    directions = list(translator.generators)

    def run(path: str | None, direction: str):
        if not path:
            raise gr.Error("Upload or drop an image first.")
        try:
            return translator(path, direction)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    with gr.Blocks(title="CycleGAN") as app:
        gr.Markdown(f"# CycleGAN\nModel: `{translator.source}`. Images up to {max_upload_mb:g} MB and "
                    f"{translator.max_pixels:,} pixels are translated at their own size.")
        with gr.Row():
            source = gr.Image(type="filepath", label="input", elem_id="input-image")
            result = gr.Image(type="pil", label="translation", format="png", elem_id="output-image",
                              interactive=False)
        with gr.Row():
            direction = gr.Radio(directions, value=directions[0], label="direction", elem_id="direction")
            button = gr.Button("Translate", variant="primary", elem_id="translate")
        download = gr.File(label="download (PNG; TIFF or .npy at full precision for scientific images)",
                           elem_id="download")
        button.click(run, inputs=[source, direction], outputs=[result, download])
    return app


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan serve", description=(
        "A web page to try a trained model: upload an image, choose the direction, see and download the "
        "translation (Gradio)."))
    p.add_argument("--checkpoint", required=True, help="a run folder, a checkpoint, or one generator's weights")
    add_epoch_flag(p)
    p.add_argument("--host", default="127.0.0.1", help=(
        "interface to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)"))
    p.add_argument("--port", type=int, default=7860, help="(default: 7860)")
    p.add_argument("--max_upload_mb", type=float, default=20, help="largest upload in megabytes (default: 20)")
    p.add_argument("--max_pixels", type=int, default=16_000_000, help="largest image in pixels (default: 16000000)")
    p.add_argument("--tile", type=int, default=None, help=(
        "translate in tiles of this size (default: whole images, or tiles when a whole one would not fit the free "
        "memory, as cyclegan translate does)"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    add_debug_flag(p)
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Refuse limits and addresses that cannot work, before anything is loaded."""
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise CycleGANError(f"--max_upload_mb {args.max_upload_mb}: give a positive number of megabytes")
    if args.max_pixels <= 0:
        raise CycleGANError(f"--max_pixels {args.max_pixels}: give a positive number of pixels")
    if not 1 <= args.port <= 65535:
        raise CycleGANError(f"--port {args.port}: give a port from 1 to 65535")
    if args.tile is not None and args.tile < 16:
        raise CycleGANError(f"--tile {args.tile}: tiles must be at least 16 pixels")


def check_port_free(host: str, port: int) -> None:
    """Refuse an address another program listens on, or one this machine does not have."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CycleGANError(f"--host {host}: not an address of this machine ({exc.strerror or exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise CycleGANError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); another "
                                "program may be using the port: choose another --port") from None


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the server as Ctrl-C does, so that its clean-up runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page phones nobody
    check_flags(args)
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise CycleGANError('cyclegan serve needs Gradio: pip install "cyclegan[demo]"') from exc
    check_port_free(args.host, args.port)
    # Uploads (Gradio's copies) and translations live in one private folder, removed on exit.
    workspace = Path(tempfile.mkdtemp(prefix="cyclegan-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workspace / "uploads")
    try:
        translator = Translator(args.checkpoint, resolve_device(args.device), args.max_pixels, args.tile,
                                out_dir=workspace / "translations", epoch=args.epoch)
        app = build_app(translator, args.max_upload_mb)
        log.info("serving %s on http://%s:%d", translator.source, args.host, args.port)
        with terminate_as_interrupt():
            app.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb:g}mb",
                       show_error=True, share=False, inbrowser=False)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
