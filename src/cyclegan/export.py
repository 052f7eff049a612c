"""``cyclegan export``: a generator as ONNX or TorchScript, checked against PyTorch before it is kept.

    cyclegan export --checkpoint runs/h2z --format onnx --output g_ab.onnx [--direction AtoB]

The exported model takes ``(N, C, H, W)`` images in [-1, 1] with any batch size and any height
and width that are multiples of the generator's stride (4 for the ResNet generators; pad by
reflection and crop back, as ``cyclegan translate --backend onnxruntime`` does) and returns the
translation. The ONNX file carries ``in_channels``, ``out_channels``, ``multiple``, ``direction``
and ``source`` as metadata. Before the file is moved into place, the export is run (onnxruntime,
or the TorchScript interpreter) on random and photo-like inputs of two sizes and batch sizes,
and refused if any output differs from PyTorch's by more than ``--tolerance`` (1e-4).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cyclegan.errors import CycleGANError
from cyclegan.inference import Generator, OnnxGenerator, add_epoch_flag, load_generator
from cyclegan.runtime import add_debug_flag, run_command
from cyclegan.utils import current_umask

__all__ = ["main", "get_args_parser", "export_onnx", "export_torchscript", "parity_inputs"]

log = logging.getLogger("cyclegan.export")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan export", description=(
        "Export a trained generator to ONNX or TorchScript with dynamic batch, height and width, checked against "
        "PyTorch on two input sizes before the file is written."))
    p.add_argument("--checkpoint", required=True, help="a run folder, a checkpoint, or one generator's weights "
                                                       "(as for cyclegan translate)")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True, help="what to write")
    p.add_argument("--output", required=True, help="the file to write (.onnx, or .pt for TorchScript)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="which generator of a run (default: AtoB)")
    add_epoch_flag(p)
    p.add_argument("--opset", type=int, default=18, help=(
        "the ONNX opset the file holds: 18 and newer from torch.export, 7 to 17 from TorchScript's exporter (default: 18)"))
    p.add_argument("--tolerance", type=float, default=1e-4, help=(
        "largest absolute difference from PyTorch's output accepted by the check (default: 1e-4)"))
    add_debug_flag(p)
    return p


def parity_inputs(channels: int, multiple: int) -> list[torch.Tensor]:
    """Random and photo-like inputs at two sizes (multiples of ``multiple``) and batch sizes.

    Photo-like: a smooth random colour field with a little per-pixel noise, as a camera gives.
    (Perfectly flat regions make an untrained network's instance norms divide by a variance near
    zero, where onnxruntime's float32 convolutions drift by a few 1e-4; trained networks and real
    photos do not sit there.)"""
    def up(n: int) -> int:
        return multiple * math.ceil(n / multiple)

    gen = torch.Generator().manual_seed(0)
    inputs = []
    for batch, (h, w) in ((2, (up(64), up(96))), (1, (up(100), up(36)))):
        inputs.append(torch.rand(batch, channels, h, w, generator=gen) * 2 - 1)
        coarse = torch.rand(batch, channels, 6, 6, generator=gen) * 2 - 1
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        noise = torch.randn(batch, channels, h, w, generator=gen) * (4 / 255)
        inputs.append((smooth + noise).clamp(-1, 1))
    return inputs


def check_parity(gen: Generator, run: Callable[[torch.Tensor], torch.Tensor], tolerance: float, what: str) -> float:
    worst = 0.0
    for x in parity_inputs(gen.in_channels, gen.multiple):
        with torch.inference_mode():
            want = gen(x)
        got = run(x)
        if got.shape != want.shape:
            raise CycleGANError(f"{what}: output shape {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch gives "
                                f"{tuple(want.shape)}")
        diff = (got - want).abs().max().item()
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise CycleGANError(f"{what}: differs from PyTorch by {diff:.3g} (> --tolerance {tolerance}) on an input "
                                f"of shape {tuple(x.shape)}; the file was not written")
    return worst


def _default_opset(model: Any) -> int | None:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


# The dynamo exporter writes opset 18 at the least; older opsets come from TorchScript's exporter.
DYNAMO_OPSET = 18


def _export_proto(gen: Generator, opset: int) -> Any:
    """The ONNX model of ``gen`` at ``opset``, with dynamic batch, height and width."""
    example = torch.rand(1, gen.in_channels, 4 * gen.multiple, 4 * gen.multiple) * 2 - 1
    if opset < DYNAMO_OPSET:
        import onnx

        buffer = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(gen.net, (example,), buffer, input_names=["image"], output_names=["translated"],
                          opset_version=opset, dynamo=False, dynamic_axes={"image": axes, "translated": axes})
        return onnx.load_from_string(buffer.getvalue())
    dims = {0: torch.export.Dim("batch"), 2: gen.multiple * torch.export.Dim("height_blocks"),
            3: gen.multiple * torch.export.Dim("width_blocks")}
    program = torch.onnx.export(gen.net, (example,), input_names=["image"], output_names=["translated"],
                                dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True)
    return program.model_proto


def check_opset(opset: int) -> None:
    """Refuse an opset ONNX does not know (before any work)."""
    try:
        import onnx
    except ImportError as exc:
        raise CycleGANError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'cyclegan[export]'") \
            from exc

    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise CycleGANError(f"--opset {opset}: give an ONNX opset from 7 to {newest} (this onnx's newest)")


def export_onnx(gen: Generator, path: Path, opset: int = 18, metadata: dict[str, str] | None = None) -> None:
    """Write ``gen`` as ONNX at exactly ``opset`` to ``path`` with dynamic batch, height and width."""
    try:
        import onnx
    except ImportError as exc:
        raise CycleGANError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'cyclegan[export]'") \
            from exc
    quiet = io.StringIO()
    chatty = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            model = _export_proto(gen, opset)
    except Exception as exc:  # noqa: BLE001 - an exporter that cannot write this opset
        raise CycleGANError(f"--opset {opset}: the generator cannot be exported at this opset ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); try --opset "
                            f"{DYNAMO_OPSET}") from exc
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    if _default_opset(model) != opset:
        raise CycleGANError(f"--opset {opset}: the exporter wrote opset {_default_opset(model)} instead; try --opset "
                            f"{DYNAMO_OPSET}")
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_torchscript(gen: Generator, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(gen.net)
        scripted.save(str(path), _extra_files={"cyclegan.json": str(
            {"in_channels": gen.in_channels, "out_channels": gen.out_channels, "multiple": gen.multiple})})


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.is_dir():
        raise CycleGANError(f"--output {output} is a folder; give the file to write")
    if not output.parent.is_dir():
        raise CycleGANError(f"--output {output}: the folder {output.parent} does not exist")
    if not (math.isfinite(args.tolerance) and 0 < args.tolerance < 2):
        raise CycleGANError(f"--tolerance {args.tolerance}: give a positive number below 2, as 1e-4 (outputs lie in "
                            "[-1, 1]: 2 or more would check nothing)")
    if args.format == "onnx":
        check_opset(args.opset)
    gen = load_generator(args.checkpoint, args.direction, "cpu", args.epoch)
    metadata = {"in_channels": str(gen.in_channels), "out_channels": str(gen.out_channels),
                "multiple": str(gen.multiple), "direction": args.direction, "source": gen.source, "arch": gen.arch}
    saved = gen.config or {}
    a, b = saved.get("data_A"), saved.get("data_B")  # scientific values: how the generator's own in and out scale
    if a or b:
        metadata["domains"] = json.dumps({"data_A": a, "data_B": b} if args.direction == "AtoB" else
                                         {"data_A": b, "data_B": a})
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # the mode a plain open would give, not mkstemp's 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if args.format == "onnx":
            export_onnx(gen, tmp, args.opset, metadata)
            runner: Callable[[torch.Tensor], torch.Tensor] = OnnxGenerator(tmp)
            what = "the ONNX export (onnxruntime)"
        else:
            export_torchscript(gen, tmp)
            loaded = torch.jit.load(str(tmp))

            def runner(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return loaded(x)

            what = "the TorchScript export"
        worst = check_parity(gen, runner, args.tolerance, what)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, from %s); largest difference from PyTorch on 4 inputs of 2 sizes: %.2g", output,
             args.format, gen.source, worst)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
