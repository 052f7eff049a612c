"""How every command runs: the device it picks, its log lines, the signals that stop training,
and the one way a command's ``main`` reports a user error (``CycleGANError``: logged without a
traceback, its exit status returned)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cyclegan.errors import CycleGANError

__all__ = ["resolve_device", "setup_logging", "run_command", "StopSignals", "format_eta"]

log = logging.getLogger("cyclegan")


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda`` as a device; ``cuda`` without a GPU is a user error."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CycleGANError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def setup_logging() -> None:
    """Log lines to stderr, once per process (a no-op when the application configured logging)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_command(parser: Any, run: Callable[[Any], int | None], argv: Sequence[str] | None,
                logger: logging.Logger) -> int:
    """Parse ``argv`` with ``parser`` and ``run`` the result; a ``CycleGANError`` is logged, not
    raised, and its exit status returned (the shape of every command's ``main``)."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except CycleGANError as exc:
        logger.error("%s", exc)
        return exc.exit_code


def format_eta(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class StopSignals:
    """SIGINT / SIGTERM: the first asks training to stop after the current step (``signum`` is
    set); a second stops at once. Handlers are installed on entry (main thread only) and the
    previous ones restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a data-loader worker (forked with this handler): the main process decides
            return
        if self.signum is not None:  # second signal: default behaviour, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: stopping after this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
