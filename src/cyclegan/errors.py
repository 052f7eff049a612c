"""The one user-facing error type.

Raised for bad input (a missing folder, an unreadable image, a flag out of range); its message
names the file or flag at fault and what to do. The command line prints it without a traceback
and exits with status 2.
"""

from __future__ import annotations

__all__ = ["CycleGANError"]


class CycleGANError(Exception):
    """An error in what the user gave us, with a message that says what to do about it."""

    exit_code = 2
