"""Files from the network, safely: a resumable download and a safe archive extraction.

``download(url, target)`` writes to ``.<name>.part`` beside ``target`` and renames it into place
only when it is whole (its size is the server's, and its SHA-256 the one given, if any), and
stops at a byte cap (``max_bytes``: a server that sends forever fills no disk); an
interrupted download is continued with an HTTP Range request on the next call, and a server
that ignores the range is read from the start again. Any failure to reach the server is a
``DownloadError`` naming the address and the HTTP status or socket error.

``extract_zip(archive, target)`` refuses archives with absolute paths, ``..`` components,
links that leave the target, a path twice or as both a file and a folder, and archives whose
uncompressed size, file count or compression ratio (of any member over 64 KiB, and of all of
them together) is absurd (zip bombs), and archives that would not fit on the disk, before
writing anything; it extracts into a temporary folder beside
``target`` and renames that into place, so ``target`` is either absent or complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cyclegan.errors import CycleGANError
from cyclegan.utils import current_umask, fsync_dir

__all__ = ["DownloadError", "DownloadInterrupted", "download", "sha256_of", "ExtractLimits", "check_zip", "extract_zip"]

log = logging.getLogger("cyclegan.fetch")

CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(CycleGANError):
    """The server could not be reached, refused the file, or sent something else than expected."""

    exit_code = 1


class DownloadInterrupted(DownloadError):
    """Ctrl-C during a download: what came is kept for the next call."""

    exit_code = 130


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(target: Path) -> Path:
    """Where the download of ``target`` grows until it is whole."""
    return target.with_name(f".{target.name}.part")


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "cyclegan-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) addresses only
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix the server knows: start again
            return None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from exc


def _resumed_total(response, offset: int) -> tuple[bool, int | None]:
    """Whether the response continues at ``offset`` (206 with a matching Content-Range), and the
    whole file's size when the server says it."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return True, None if match.group(2) == "*" else int(match.group(2))
        return False, None
    return False, int(length) if length is not None else None


class _Oversized(Exception):
    """The server sent more than the cap."""


def _too_big(url: str, what: str, max_bytes: int) -> str:
    return (f"{url}: the server {what}, more than the {max_bytes} expected at most; nothing was kept. If the file "
            "has really grown, pass a larger --max_size")


def download(url: str, target: Path, sha256: str | None = None, timeout: float = TIMEOUT_S,
             progress: bool | None = None, check: Callable[[Path], None] | None = None,
             max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``target`` (resuming a partial download), check it, and rename it into
    place; returns ``target``. A SHA-256 mismatch deletes the download, and so does a
    ``DownloadError`` raised by ``check`` (called with the whole file before the rename). More
    than ``max_bytes`` (announced by the server, or sent) stops it and deletes what came."""
    from tqdm import tqdm

    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// addresses are fetched")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset, timeout)
    resumed, total = _resumed_total(response, offset) if response is not None else (False, None)
    if offset and not resumed:  # no partial content for this offset: start again
        log.info("%s does not continue this partial download: starting %s again", url, target.name)
        if response is not None:
            response.close()
        offset, response = 0, _open(url, 0, timeout)
        resumed, total = _resumed_total(response, 0)
    elif offset:
        log.info("continuing %s at %d bytes", target.name, offset)
    with response:
        if max_bytes is not None and total is not None and total > max_bytes:
            part.unlink(missing_ok=True)
            raise DownloadError(_too_big(url, f"announces {total} bytes", max_bytes))
        show = sys.stderr.isatty() if progress is None else progress
        with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
            disable=not show, leave=False,
        ) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    if max_bytes is not None and f.tell() + len(block) > max_bytes:
                        raise _Oversized
                    f.write(block)
                    bar.update(len(block))
            except _Oversized:
                f.close()
                part.unlink(missing_ok=True)
                raise DownloadError(_too_big(url, f"sent more than {max_bytes} bytes", max_bytes)) from None
            except OSError as exc:  # the connection dropped: keep what came, for the next call
                raise DownloadError(
                    f"{url}: the download broke off at {f.tell()} bytes ({exc}); run the same command again "
                    f"to continue it ({part} is kept)"
                ) from exc
            except KeyboardInterrupt:
                f.flush()
                raise DownloadInterrupted(f"{url}: interrupted at {f.tell()} bytes; run the same command again to "
                                          f"continue it ({part} is kept)") from None
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
    if total is not None and size != total:
        raise DownloadError(f"{url}: the download broke off at {size} of {total} bytes; run the same command "
                            f"again to continue it ({part} is kept)")
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: SHA-256 {got} is not the expected {sha256.lower()}; the file was deleted. "
                                "If the file has changed upstream, pass its checksum with --sha256")
    if check is not None:
        try:
            check(part)
        except DownloadError:
            part.unlink()
            raise
    os.replace(part, target)
    fsync_dir(target.parent)
    return target


@dataclass(frozen=True)
class ExtractLimits:
    """What an archive may expand to before it counts as a zip bomb. The official datasets are
    JPEG folders: at most a few GB, tens of thousands of files, compressed hardly at all."""

    max_bytes: int = 64 * 2**30
    max_files: int = 500_000
    max_ratio: float = 200.0  # uncompressed / compressed, for any member of more than 64 KiB
    max_total_ratio: float = 50.0  # uncompressed / compressed, all members together, past 32 MiB


SMALL_MEMBER = 64 * 2**10
SMALL_ARCHIVE = 32 * 2**20


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _safe_name(name: str) -> PurePosixPath | None:
    """The member's path inside the target, or None when it would leave it."""
    if "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    return path


def _check_layout(members: list[zipfile.ZipInfo], where: str) -> None:
    """Refuse two members with one path, and a file where another member needs a folder."""
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()
    for info in members:
        path = _safe_name(info.filename)
        if path is None:
            raise DownloadError(f"{where}: the member {info.filename!r} would be written outside the target "
                                "folder (an absolute path or '..'); not extracted")
        if path in files or (not info.is_dir() and path in folders):
            raise DownloadError(f"{where}: the path {info.filename!r} appears twice (or as a file and a folder); "
                                "not extracted")
        (folders if info.is_dir() else files).add(path)
        folders.update(path.parents)
    clash = files & folders
    if clash:
        raise DownloadError(f"{where}: {sorted(map(str, clash))[0]!r} is both a file and a folder; not extracted")


def check_zip(zf: zipfile.ZipFile, where: str, limits: ExtractLimits = ExtractLimits()) -> int:
    """Refuse a zip-slip or zip-bomb archive before anything is written; returns the bytes it
    expands to. Every member counts: its declared size (checked again while extracting), its
    compression ratio, and the ratio and size of all of them together."""
    members = zf.infolist()
    if len(members) > limits.max_files:
        raise DownloadError(f"{where}: {len(members)} files, more than the {limits.max_files} allowed; not extracted")
    _check_layout(members, where)
    total = packed = 0
    for info in members:
        if _is_link(info):
            link = zf.read(info).decode("utf-8", "replace")
            inside = _safe_name(str(PurePosixPath(info.filename).parent / link))
            if PurePosixPath(link).is_absolute() or inside is None:
                raise DownloadError(f"{where}: the link {info.filename!r} -> {link!r} points outside the target "
                                    "folder; not extracted")
        total += info.file_size
        packed += info.compress_size
        if info.file_size > SMALL_MEMBER and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise DownloadError(f"{where}: {info.filename!r} expands {info.file_size / max(1, info.compress_size):.0f}"
                                f" times (more than {limits.max_ratio:.0f}): a zip bomb; not extracted")
    if total > limits.max_bytes:
        raise DownloadError(f"{where}: expands to {total / 2**30:.1f} GiB, more than the "
                            f"{limits.max_bytes / 2**30:.0f} GiB allowed; not extracted")
    if total > SMALL_ARCHIVE and total > limits.max_total_ratio * max(1, packed):
        raise DownloadError(f"{where}: its {len(members)} files expand {total / max(1, packed):.0f} times together "
                            f"(more than {limits.max_total_ratio:.0f}): a zip bomb; not extracted")
    return total


def _check_space(folder: Path, needed: int, archive: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed + 64 * 2**20 > free:
        raise CycleGANError(f"{archive} expands to {needed / 2**20:.0f} MiB but {folder} has {free / 2**20:.0f} MiB "
                            f"free: make room and run the same command again (the archive is kept)")


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, where: str) -> None:
    path = root / _safe_name(info.filename)  # type: ignore[operator]  # checked by check_zip
    if info.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    if _is_link(info):  # a link inside the folder: not needed for images, not followed
        log.warning("%s: skipping the link %s", where, info.filename)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(path, "wb") as dst:
        for block in iter(lambda: src.read(CHUNK), b""):
            written += len(block)
            if written > info.file_size:  # the header lied about the size
                raise DownloadError(f"{where}: {info.filename!r} holds more than the {info.file_size} bytes it "
                                    "declares; not extracted")
            dst.write(block)


def extract_zip(archive: Path, target: Path, limits: ExtractLimits = ExtractLimits(),
                strip_top: str | None = None) -> Path:
    """Extract ``archive`` to ``target`` (which must not exist) through a temporary folder beside
    it. With ``strip_top``, an archive whose members all lie under the folder ``strip_top/``
    (the official datasets' layout) has that folder become ``target``."""
    if target.exists():
        raise DownloadError(f"{target} exists already; remove it first")
    where = str(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"{where}: not a readable zip archive ({exc})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf:
        _check_space(target.parent, check_zip(zf, where, limits), archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # renamed into place: the mode of a plain mkdir, not 0700
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                for info in zf.infolist():
                    _extract_member(zf, info, tmp, where)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # a CRC mismatch, a cut archive
                raise DownloadError(f"{where}: damaged ({exc}); delete it and download it again") from exc
            except OSError as exc:  # the disk filled, a name the file system refuses: not the archive's fault
                raise CycleGANError(f"{where}: could not be extracted into {target.parent} ({exc.strerror or exc}: "
                                    f"{exc.filename or ''}); the archive is kept, fix this and run the same command "
                                    "again") from exc
        source = tmp
        entries = list(tmp.iterdir())
        if strip_top is not None and [e.name for e in entries] == [strip_top] and entries[0].is_dir():
            source = entries[0]
        os.replace(source, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
