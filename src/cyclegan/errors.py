"""The one user-facing error type.

Raised for bad input (a missing folder, an unreadable image, a flag out of range); its message
names the file or flag at fault and what to do. The command line prints it without a traceback
and exits with status 2.
"""

from __future__ import annotations

__all__ = ["CycleGANError", "BadImageError", "TrainingDiverged", "PeerLost", "TrainingStopped"]


class CycleGANError(Exception):
    """An error in what the user gave us, with a message that says what to do about it."""

    exit_code = 2


class BadImageError(CycleGANError):
    """An image that was good when the run started could not be read during training (changed,
    removed, or its disk failed). The message is one line naming the file; the run saves first."""


class TrainingDiverged(CycleGANError):
    """A loss became NaN or infinite; the run stopped, keeping its last good checkpoint."""

    exit_code = 3


class PeerLost(CycleGANError):
    """In a multi-process job, a collective failed because another process is gone: that one
    failed first and says why; this one only stops too (status 1, not the user's input)."""

    exit_code = 1


class TrainingStopped(Exception):
    """Training stopped on a signal after saving; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
