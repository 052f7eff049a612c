"""``cyclegan <command>``: dispatches to the modules' ``main(argv)`` functions.

Commands are imported only when run, so ``cyclegan --help`` stays fast. A command's user-facing
error (``CycleGANError``) is printed without a traceback and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cyclegan.train", "train on two folders of unpaired images (the reference flags)"),
    "demo": ("cyclegan.demo", "train on built-in procedural data and score the result against the truth"),
    "translate": ("cyclegan.translate", "translate images at full resolution with a trained generator"),
    "export": ("cyclegan.export", "export a generator to ONNX or TorchScript, checked against PyTorch"),
    "report": ("cyclegan.report", "write report.html for a run: loss curves, sample grids, checkpoint, config"),
    "serve": ("cyclegan.serve", "a web page (Gradio) to try a trained model in the browser"),
    "download": ("cyclegan.download", "fetch an official dataset, pretrained generator or the FID network, safely"),
    "evaluate": ("cyclegan.evaluate", "FID and KID against real images; PSNR, SSIM, L1 with paired truth; cycle error"),
}


def usage() -> str:
    from cyclegan import __version__

    width = max(len(c) for c in COMMANDS)
    lines = [
        f"usage: cyclegan <command> [options]      (cyclegan {__version__})",
        "",
        "CycleGAN: unpaired image-to-image translation.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()),
        "",
        "Run 'cyclegan <command> --help' for a command's options.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from cyclegan import __version__

        print(f"cyclegan {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cyclegan: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
