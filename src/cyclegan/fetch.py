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

``extract_tar(archive, target)`` does the same for a ``.tar.gz`` (the official pix2pix
datasets): it reads the members itself, never ``extractall``. A first pass reads every header
(and the whole gzip stream, so its CRC is checked) and refuses absolute paths, ``..``, links
that leave the target, devices, fifos and sparse files, a path twice or as a file and a folder,
and bombs: more members, more bytes or a higher ratio of the decompressed stream to the archive
than the limits allow (a tar.gz has one compressed stream, so the ratio is the whole archive's),
and any one read of more than 4 MiB (a pax or long-name header of gigabytes). The second pass
writes regular files and folders only, with this program's modes, and checks that it meets the
members the first pass checked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cyclegan.errors import CycleGANError
from cyclegan.utils import current_umask, fsync_dir

__all__ = ["DownloadError", "DownloadInterrupted", "download", "sha256_of", "ExtractLimits", "check_zip", "extract_zip",
           "check_tar", "extract_tar"]

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


def _check_layout(members: list[tuple[str, bool]], where: str) -> None:
    """Refuse two members with one path, and a file where another member needs a folder
    (``members``: each member's name and whether it is a folder)."""
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()
    for name, is_dir in members:
        path = _safe_name(name)
        if path is None:
            raise DownloadError(f"{where}: the member {name!r} would be written outside the target "
                                "folder (an absolute path or '..'); not extracted")
        if path in files or (not is_dir and path in folders):
            raise DownloadError(f"{where}: the path {name!r} appears twice (or as a file and a folder); "
                                "not extracted")
        (folders if is_dir else files).add(path)
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
    _check_layout([(info.filename, info.is_dir()) for info in members], where)
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


def _into_place(target: Path, strip_top: str | None, write: Callable[[Path], None]) -> Path:
    """``write`` the archive's members into a temporary folder beside ``target`` and rename that
    (or, with ``strip_top``, its only entry, a folder of that name) to ``target``; the temporary
    folder is removed whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # renamed into place: the mode of a plain mkdir, not 0700
    try:
        write(tmp)
        source = tmp
        entries = list(tmp.iterdir())
        if strip_top is not None and [e.name for e in entries] == [strip_top] and entries[0].is_dir():
            source = entries[0]
        os.replace(source, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _disk_error(where: str, folder: Path, exc: OSError) -> CycleGANError:
    """A disk full, a name the file system refuses: not the archive's fault, so it is kept."""
    return CycleGANError(f"{where}: could not be extracted into {folder} ({exc.strerror or exc}: "
                         f"{exc.filename or ''}); the archive is kept, fix this and run the same command again")


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

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            try:
                for info in zf.infolist():
                    _extract_member(zf, info, tmp, where)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # a CRC mismatch, a cut archive
                raise DownloadError(f"{where}: damaged ({exc}); delete it and download it again") from exc
            except OSError as exc:
                raise _disk_error(where, target.parent, exc) from exc

    return _into_place(target, strip_top, write)


# ---------------------------------------------------------------------------------------------
# .tar.gz (the official pix2pix datasets)

MAX_TAR_READ = 4 * 2**20  # one read of the tar stream: headers are a few KiB, file data comes in CHUNKs
TAR_HEADER_BYTES = 1024  # what one member may add to the stream beyond its data: its header and padding


class _BoundedStream:
    """The decompressed stream of a ``.tar.gz``, for ``tarfile``: read forward only, refused past
    ``cap`` bytes (a bomb) and for any one read of more than ``MAX_TAR_READ`` (tarfile reads a
    pax or GNU long-name header whole: one of gigabytes would fill the memory)."""

    def __init__(self, raw: gzip.GzipFile, cap: int, too_big: str, where: str) -> None:
        self.raw, self.cap, self.too_big, self.where, self.pos = raw, cap, too_big, where, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_TAR_READ:
            raise DownloadError(f"{self.where}: a tar header or read of {size} bytes, more than the {MAX_TAR_READ} "
                                "an archive of images needs; not extracted")
        if self.pos + size > self.cap:
            raise DownloadError(f"{self.where}: {self.too_big}; not extracted")
        data = self.raw.read(size)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the archive is read from the start only")
        if offset < self.pos:
            raise io.UnsupportedOperation("the archive is read forward only")
        while self.pos < offset and self.read(min(CHUNK, offset - self.pos)):
            pass
        return self.pos


def _open_tar_stream(archive: Path, limits: ExtractLimits, where: str) -> tuple[gzip.GzipFile, _BoundedStream]:
    """The archive's decompressed stream, capped: at the limits' bytes (and the members'
    headers), and, past ``SMALL_ARCHIVE``, at ``max_total_ratio`` times the archive's size."""
    packed = archive.stat().st_size
    by_size = limits.max_bytes + TAR_HEADER_BYTES * (limits.max_files + 2)
    by_ratio = max(SMALL_ARCHIVE, int(limits.max_total_ratio * max(1, packed)))
    if by_ratio < by_size:
        cap, why = by_ratio, (f"its {packed} bytes expand more than {limits.max_total_ratio:.0f} times "
                              "(past 32 MiB): a tar bomb")
    else:
        cap, why = by_size, f"expands to more than the {limits.max_bytes / 2**30:.0f} GiB allowed: a tar bomb"
    raw = gzip.open(archive, "rb")
    return raw, _BoundedStream(raw, cap, why, where)


def _member_kind(info: tarfile.TarInfo) -> str:
    """``file``, ``folder`` or ``link``: what this program extracts (or skips, for links)."""
    if info.isreg() and not info.issparse():
        return "file"
    if info.isdir():
        return "folder"
    if info.issym() or info.islnk():
        return "link"
    kind = "a sparse file" if info.issparse() else "a device or a fifo"
    raise DownloadError(f"{info.name!r} is {kind}: only files, folders and links inside the target are "
                        "extracted; not extracted")


def _check_tar_member(info: tarfile.TarInfo, where: str) -> str:
    """The member's kind; refused where its name or, for a link, its target leaves the folder."""
    try:
        kind = _member_kind(info)
    except DownloadError as exc:
        raise DownloadError(f"{where}: the member {exc}") from None
    if _safe_name(info.name) is None:
        raise DownloadError(f"{where}: the member {info.name!r} would be written outside the target folder (an "
                            "absolute path or '..'); not extracted")
    if kind == "link":  # a symbolic link is relative to its folder, a hard link to the archive's root
        base = PurePosixPath(info.name).parent if info.issym() else PurePosixPath()
        if PurePosixPath(info.linkname).is_absolute() or _safe_name(str(base / info.linkname)) is None:
            raise DownloadError(f"{where}: the link {info.name!r} -> {info.linkname!r} points outside the target "
                                "folder; not extracted")
    return kind


@contextlib.contextmanager
def _tar_errors(where: str, folder: Path) -> Iterator[None]:
    """What reading a damaged archive raises, as ``DownloadError``; a disk error as a
    ``CycleGANError`` that keeps the archive."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a cut or altered archive
        raise DownloadError(f"{where}: damaged ({exc}); delete it and download it again") from exc
    except OSError as exc:
        raise _disk_error(where, folder, exc) from exc


def check_tar(archive: Path, limits: ExtractLimits = ExtractLimits()) -> tuple[list[tarfile.TarInfo], int]:
    """Read every header of the ``.tar.gz`` ``archive`` (and the rest of its stream, so that its
    CRC is checked) and refuse it, before anything is written, for any of the reasons in this
    module's docstring; returns its members and the bytes their files hold."""
    where = str(archive)
    members: list[tarfile.TarInfo] = []
    total = 0
    with _tar_errors(where, archive.parent):
        raw, stream = _open_tar_stream(archive, limits, where)
        with raw, tarfile.TarFile(fileobj=stream, mode="r") as tf:  # type: ignore[arg-type]
            while (info := tf.next()) is not None:
                members.append(info)
                if len(members) > limits.max_files:
                    raise DownloadError(f"{where}: more than the {limits.max_files} files allowed; not extracted")
                if _check_tar_member(info, where) == "file":
                    total += info.size
                if total > limits.max_bytes:
                    raise DownloadError(f"{where}: expands to more than the {limits.max_bytes / 2**30:.0f} GiB "
                                        "allowed; not extracted")
                tf.members.clear()  # the headers are kept here, not twice
            while stream.read(CHUNK):  # to the end of the gzip stream: its CRC and length are checked there
                pass
    if not members:
        raise DownloadError(f"{where}: an empty archive; not extracted")
    _check_layout([(info.name, info.isdir()) for info in members], where)
    return members, total


def _write_tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo, root: Path, where: str) -> None:
    """One checked member: a folder made, a file written with this program's mode, a link skipped."""
    path = root / _safe_name(info.name)  # type: ignore[operator]  # checked by check_tar
    if info.isdir():
        path.mkdir(parents=True, exist_ok=True)
        return
    if not info.isreg():  # a link inside the folder: not needed for images, not followed
        log.warning("%s: skipping the link %s", where, info.name)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    src = tf.extractfile(info)
    written = 0
    with src as src_file, open(path, "wb") as dst:  # type: ignore[union-attr]  # a regular file has data
        for block in iter(lambda: src_file.read(CHUNK), b""):
            written += len(block)
            dst.write(block)
    if written != info.size:
        raise DownloadError(f"{where}: {info.name!r} holds {written} of the {info.size} bytes it declares")


def extract_tar(archive: Path, target: Path, limits: ExtractLimits = ExtractLimits(),
                strip_top: str | None = None) -> Path:
    """Extract the ``.tar.gz`` ``archive`` to ``target`` (which must not exist) as ``extract_zip``
    does a zip: checked whole first (``check_tar``), then written through a temporary folder
    beside ``target``; ``strip_top`` as there."""
    if target.exists():
        raise DownloadError(f"{target} exists already; remove it first")
    where = str(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    members, total = check_tar(archive, limits)
    _check_space(target.parent, total, archive)

    def write(tmp: Path) -> None:
        with _tar_errors(where, target.parent):
            raw, stream = _open_tar_stream(archive, limits, where)
            with raw, tarfile.TarFile(fileobj=stream, mode="r") as tf:  # type: ignore[arg-type]
                for k, checked in enumerate(members):
                    info = tf.next()
                    if info is None or (info.name, info.type, info.size, info.linkname) != (
                            checked.name, checked.type, checked.size, checked.linkname):
                        raise DownloadError(f"{where}: changed while it was extracted; not extracted")
                    _write_tar_member(tf, info, tmp, where)
                    tf.members.clear()

    return _into_place(target, strip_top, write)
