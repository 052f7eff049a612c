"""cyclegan download against a real HTTP server on 127.0.0.1 (with Range support), serving zip
archives and weights built here: whole and resumed downloads, checksums, zip-slip and zip-bomb
archives, a 404, a refused connection, and the download-then-train / download-then-translate
recipes end to end. Nothing is fetched from outside this machine."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, run_here
from PIL import Image
from safetensors.torch import load_file

from cyclegan.fetch import DownloadError, ExtractLimits, download, extract_tar, extract_zip
from cyclegan.models import ResnetGenerator


class Server:
    """Files by path; ``cut_after[path] = n`` sends only n bytes of the next full response for
    that path and drops the connection (an interrupted download)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.hold: dict[str, int] = {}  # path -> bytes sent before waiting for ``release`` (a stalled download)
        self.release = threading.Event()
        self.endless: set[str] = set()  # zeros until the client goes away, no Content-Length
        self.ranges: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path in outer.endless:
                    self.send_response(200)
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(bytes(65536))
                    except OSError:  # the client went away
                        return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                if (header := self.headers.get("Range")) is not None:
                    outer.ranges.append(header)
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if self.path in outer.cut_after:
                    body = body[: outer.cut_after.pop(self.path)]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.path in outer.hold:
                    n = outer.hold[self.path]
                    try:
                        self.wfile.write(body[:n])
                        self.wfile.flush()
                        outer.release.wait(120)
                        self.wfile.write(body[n:])
                    except OSError:  # the client went away
                        pass
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def jpeg_bytes(seed: int, size=(40, 36)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BILINEAR).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def dataset_zip(name: str, n: int = 4) -> bytes:
    """An archive in the official layout: NAME/trainA, trainB, testA, testB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, split in enumerate(("trainA", "trainB", "testA", "testB")):
            for i in range(n if split.startswith("train") else 2):
                zf.writestr(f"{name}/{split}/img_{i}.jpg", jpeg_bytes(10 * k + i))
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_dataset_downloads_extracts_and_trains(tmp_path, server):
    server.files["/datasets/horse2zebra.zip"] = dataset_zip("horse2zebra")
    result = run_here("download", "dataset", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    assert leftovers(data) == ["horse2zebra"]  # no archive, no temporary folder
    assert sorted(p.name for p in (data / "horse2zebra").iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert len(list((data / "horse2zebra" / "trainA").iterdir())) == 4
    # the recipe: train --dataset_name reads it
    train = run_here("train", "--dataset_name", "horse2zebra", *SMALL_RUN, "--max_steps", "2", "--logger", "none",
                    cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "training on data/horse2zebra (4 images in A, 4 in B)" in train.stderr
    # a second call finds it complete and fetches nothing
    again = run_here("download", "dataset", "horse2zebra", "--base_url", "http://127.0.0.1:9", cwd=tmp_path)
    assert again.returncode == 0 and "already there" in again.stderr


def test_train_names_the_download_command_for_a_missing_official_dataset(tmp_path, monkeypatch, caplog):
    result = run_here("train", "--dataset_name", "apple2orange", *SMALL_RUN, cwd=tmp_path)
    assert result.returncode == 2
    assert "cyclegan download dataset apple2orange" in result.stderr and "Traceback" not in result.stderr
    # A name both families have: pix2pix is pointed to its own (paired) archive.
    from cyclegan import train as train_module

    monkeypatch.chdir(tmp_path)
    assert train_module.main(["--model", "pix2pix", "--dataset_name", "facades", *SMALL_RUN, "--netG", "resnet"]) == 2
    assert "cyclegan download dataset pix2pix/facades" in caplog.text
    caplog.clear()
    assert train_module.main(["--dataset_name", "facades", *SMALL_RUN]) == 2
    assert "cyclegan download dataset facades'" in caplog.text


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    data = os.urandom(300_000)
    server.files["/big.bin"] = data
    server.cut_after["/big.bin"] = 120_000
    target = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="broke off"):
        download(f"{server.url}/big.bin", target, progress=False)
    part = tmp_path / ".big.bin.part"
    kept = part.stat().st_size
    assert not target.exists() and 0 < kept <= 120_000
    download(f"{server.url}/big.bin", target, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert target.read_bytes() == data and not part.exists()
    assert server.ranges == [f"bytes={kept}-"]  # one ranged request, from where it broke


def test_the_command_resumes_an_interrupted_model_download(tmp_path, server):
    weights = io.BytesIO()
    torch.save(ResnetGenerator(3, 3, ngf=8, n_blocks=1).state_dict(), weights)
    server.files["/pretrained_models/horse2zebra.pth"] = weights.getvalue()
    server.cut_after["/pretrained_models/horse2zebra.pth"] = len(weights.getvalue()) // 2
    first = run_here("download", "model", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert first.returncode == 1 and "broke off" in first.stderr and "Traceback" not in first.stderr
    assert not (tmp_path / "pretrained" / "horse2zebra.pth").exists()
    second = run_here("download", "model", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(server.ranges) == 1
    assert (tmp_path / "pretrained" / "horse2zebra.pth").read_bytes() == weights.getvalue()
    assert leftovers(tmp_path / "pretrained") == ["horse2zebra.pth"]


def test_download_then_translate_with_a_bare_model_name(tmp_path, server):
    net = ResnetGenerator(3, 3, ngf=8, n_blocks=1)
    weights = io.BytesIO()
    torch.save(net.state_dict(), weights)
    server.files["/pretrained_models/style_monet.pth"] = weights.getvalue()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(io.BytesIO(jpeg_bytes(1, size=(50, 30)))).save(photos / "p.png")
    before = run_here("translate", "--checkpoint", "style_monet", "--input", str(photos), "--output", "out",
                     cwd=tmp_path)
    assert before.returncode == 2 and "cyclegan download model style_monet" in before.stderr
    fetched = run_here("download", "model", "style_monet", "--base_url", server.url, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    result = run_here("translate", "--checkpoint", "style_monet", "--input", str(photos), "--output", "out",
                     "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "p.png") as out:
        assert out.size == (50, 30)


def test_a_checksum_mismatch_deletes_the_file(tmp_path, server):
    server.files["/inception.pt"] = b"not the network"
    out = tmp_path / "cache" / "inception.pt"
    result = run_here("download", "inception", "--url", f"{server.url}/inception.pt", "--output", str(out))
    assert result.returncode == 1
    assert "SHA-256" in result.stderr and "deleted" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(out.parent) == []
    good = hashlib.sha256(b"not the network").hexdigest()
    ok = run_here("download", "inception", "--url", f"{server.url}/inception.pt", "--output", str(out),
                 "--sha256", good)
    assert ok.returncode == 0 and out.read_bytes() == b"not the network"


def test_a_model_that_is_not_weights_is_refused(tmp_path, server):
    server.files["/pretrained_models/horse2zebra.pth"] = b"<html>moved</html>"
    result = run_here("download", "model", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert result.returncode == 1 and "not a generator's weights" in result.stderr
    assert leftovers(tmp_path / "pretrained") == []


def zip_with(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buffer.getvalue()


@pytest.mark.parametrize("members, links, why", [
    ({"horse2zebra/trainA/a.jpg": b"x", "../../evil.txt": b"pwned"}, None, "outside the target"),
    ({"horse2zebra/trainA/a.jpg": b"x", "/tmp/evil.txt": b"pwned"}, None, "outside the target"),
    ({"horse2zebra/trainA/a.jpg": b"x"}, {"horse2zebra/trainB": "../../../etc"}, "points outside"),
    ({"horse2zebra/trainA/zeros.jpg": bytes(30 * 2**20)}, None, "zip bomb"),
], ids=["dotdot", "absolute", "link", "bomb"])
def test_unsafe_archives_are_refused_and_nothing_is_left(tmp_path, server, members, links, why):
    server.files["/datasets/horse2zebra.zip"] = zip_with(members, links)
    result = run_here("download", "dataset", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert why in result.stderr and "Traceback" not in result.stderr
    assert leftovers(tmp_path / "data") == []  # no dataset folder, no archive, no temporary folder
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_extraction_limits_on_size_and_count(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_with({f"d/trainA/{i}.jpg": os.urandom(1000) for i in range(5)}))
    with pytest.raises(DownloadError, match="5 files, more than the 4"):
        extract_zip(archive, tmp_path / "d", ExtractLimits(max_files=4))
    with pytest.raises(DownloadError, match="GiB allowed"):
        extract_zip(archive, tmp_path / "d", ExtractLimits(max_bytes=4000))
    assert leftovers(tmp_path) == ["a.zip"]
    extract_zip(archive, tmp_path / "d", strip_top="d")
    assert len(list((tmp_path / "d" / "trainA").iterdir())) == 5


def test_every_member_counts_towards_the_bomb_limits(tmp_path):
    # Many members of 1 MiB of zeros: each one under the old 1 MiB threshold.
    archive = tmp_path / "many.zip"
    archive.write_bytes(zip_with({f"d/trainA/{i}.jpg": bytes(2**20) for i in range(40)}))
    with pytest.raises(DownloadError, match="zip bomb"):
        extract_zip(archive, tmp_path / "d")
    # Members too small for the per-member ratio add up: the ratio of the whole archive counts.
    small = tmp_path / "small.zip"
    small.write_bytes(zip_with({f"d/trainA/{i}.jpg": bytes(60 * 2**10) for i in range(600)}))
    with pytest.raises(DownloadError, match="together"):
        extract_zip(small, tmp_path / "d")
    assert leftovers(tmp_path) == ["many.zip", "small.zip"]


@pytest.mark.parametrize("members, why", [
    ({"d/trainA": b"a file", "d/trainA/a.jpg": b"x"}, "both a file and a folder"),
    ({"d/trainA/a.jpg": b"x", "d/trainA/a.jpg/b.jpg": b"y"}, "both a file and a folder"),
], ids=["file-then-folder", "folder-under-file"])
def test_a_file_and_a_folder_of_one_name_are_refused(tmp_path, members, why):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_with(members))
    with pytest.raises(DownloadError, match=why):
        extract_zip(archive, tmp_path / "d")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("d/trainA/a.jpg", b"x")
        zf.writestr("d/trainA/a.jpg", b"y")
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError, match="appears twice"):
        extract_zip(archive, tmp_path / "d")
    assert leftovers(tmp_path) == ["a.zip"]


def test_a_disk_error_while_extracting_keeps_the_archive(tmp_path, monkeypatch):
    import errno

    from cyclegan import fetch
    from cyclegan.errors import CycleGANError

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "d/trainA/a.jpg")

    monkeypatch.setattr(fetch, "_extract_member", full)
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_with({"d/trainA/a.jpg": b"x"}))
    with pytest.raises(CycleGANError, match="No space left on device.*the archive is kept") as caught:
        extract_zip(archive, tmp_path / "d")
    assert not isinstance(caught.value, DownloadError)  # not the archive's fault: download keeps it
    assert leftovers(tmp_path) == ["a.zip"]


def test_a_server_that_sends_forever_is_cut_off(tmp_path, server):
    server.endless.add("/datasets/horse2zebra.zip")
    with pytest.raises(DownloadError, match="more than the 1048576"):
        download(server.url + "/datasets/horse2zebra.zip", tmp_path / "x.zip", max_bytes=2**20)
    assert leftovers(tmp_path) == []
    result = run_here("download", "dataset", "horse2zebra", "--base_url", server.url, "--max_size", "300KB",
                     cwd=tmp_path)
    assert result.returncode == 1 and "more than the 300000" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(tmp_path / "data") == []
    # A size announced beyond the cap is refused before anything is read.
    server.files["/pretrained_models/horse2zebra.pth"] = bytes(5000)
    with pytest.raises(DownloadError, match="announces 5000 bytes"):
        download(server.url + "/pretrained_models/horse2zebra.pth", tmp_path / "m.pth", max_bytes=4000)
    assert leftovers(tmp_path) == ["data"]
    bad = run_here("download", "model", "horse2zebra", "--max_size", "lots", cwd=tmp_path)
    assert bad.returncode == 2 and "--max_size" in bad.stderr


def test_the_users_own_files_beside_the_dataset_are_left_alone(tmp_path, server):
    data = tmp_path / "data"
    (data / ".horse2zebra.new").mkdir(parents=True)
    (data / ".horse2zebra.new" / "mine.txt").write_text("mine")
    (data / "horse2zebra.zip").write_bytes(b"my own archive")
    server.files["/datasets/horse2zebra.zip"] = zip_with({"../evil.txt": b"x"})
    refused = run_here("download", "dataset", "horse2zebra", "--base_url", server.url, cwd=tmp_path)
    assert refused.returncode == 1
    server.files["/datasets/horse2zebra.zip"] = dataset_zip("horse2zebra")
    result = run_here("download", "dataset", "horse2zebra", "--base_url", server.url, "--keep_archive", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (data / "horse2zebra.zip").read_bytes() == b"my own archive"
    assert (data / ".horse2zebra.new" / "mine.txt").read_text() == "mine"
    assert (data / ".cyclegan-horse2zebra.zip").read_bytes() == server.files["/datasets/horse2zebra.zip"]
    assert leftovers(data) == [".cyclegan-horse2zebra.zip", ".horse2zebra.new", "horse2zebra", "horse2zebra.zip"]


def test_a_damaged_archive_is_refused(tmp_path):
    good = zip_with({"d/trainA/a.jpg": os.urandom(5000)})
    offset = good.index(b"d/trainA/a.jpg") + len("d/trainA/a.jpg") + 100  # inside the member's data
    archive = tmp_path / "a.zip"
    archive.write_bytes(good[:offset] + bytes([good[offset] ^ 0xFF]) + good[offset + 1:])
    with pytest.raises(DownloadError, match="damaged"):
        extract_zip(archive, tmp_path / "d")
    assert leftovers(tmp_path) == ["a.zip"]


def test_a_404_is_one_line_naming_the_address_and_status(tmp_path, server):
    result = run_here("download", "dataset", "maps", "--base_url", server.url, cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and f"{server.url}/datasets/maps.zip: HTTP 404" in lines[0]
    assert leftovers(tmp_path / "data") == []


def test_a_refused_connection_names_the_address(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_url = f"http://127.0.0.1:{port}"
    result = run_here("download", "model", "horse2zebra", "--base_url", env_url, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{env_url}/pretrained_models/horse2zebra.pth: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr and leftovers(tmp_path / "pretrained") == []


def test_the_base_url_comes_from_the_environment_too(tmp_path, server):
    weights = io.BytesIO()
    torch.save(ResnetGenerator(3, 3, ngf=8, n_blocks=1).state_dict(), weights)
    server.files["/pretrained_models/map2sat.pth"] = weights.getvalue()
    env = dict(os.environ, CYCLEGAN_BASE_URL=server.url, CYCLEGAN_PRETRAINED=str(tmp_path / "models"))
    result = subprocess.run([sys.executable, "-m", "cyclegan", "download", "model", "map2sat"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(load_file_or_pth(tmp_path / "models" / "map2sat.pth")) == sorted(
        ResnetGenerator(3, 3, ngf=8, n_blocks=1).state_dict())


def load_file_or_pth(path: Path) -> dict:
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def test_unknown_names_and_lists(tmp_path):
    bad = run_here("download", "dataset", "horses", cwd=tmp_path)
    assert bad.returncode == 2 and "not an official dataset" in bad.stderr and "horse2zebra" in bad.stderr
    listed = run_here("download", "model", "--list")
    assert listed.returncode == 0 and "style_vangogh" in listed.stdout and "cityscapes_label2photo" in listed.stdout


def test_ctrl_c_keeps_the_partial_download_for_the_next_call(tmp_path, server):
    data = os.urandom(4 * 2**20)
    server.files["/pretrained_models/zebra2horse.pth"] = data
    # Two of its four MiB, then nothing until the test ends: the interrupt always comes mid-download.
    server.hold["/pretrained_models/zebra2horse.pth"] = 2 * 2**20
    # Ctrl-C as a terminal sends it: SIGINT handled by default in the child, even where the suite
    # inherited it ignored (a shell script's `make test &`), which Python and its children keep.
    proc = subprocess.Popen([sys.executable, "-m", "cyclegan", "download", "model", "zebra2horse", "--base_url",
                             server.url], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = tmp_path / "pretrained" / ".zebra2horse.pth.part"
    end = time.monotonic() + 60
    while time.monotonic() < end and not (part.is_file() and part.stat().st_size > 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again" in stderr and "Traceback" not in stderr
    assert 0 < part.stat().st_size < len(data)
    assert not (tmp_path / "pretrained" / "zebra2horse.pth").exists()


# ---------------------------------------------------------------------------------------------
# .tar.gz archives (the official pix2pix datasets)


def tar_with(members: dict[str, bytes], special: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A .tar.gz of files, and of ``special`` members: name -> (tar type, link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (special or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("members, special, why", [
    ({"facades/train/1.jpg": b"x", "../../evil.txt": b"pwned"}, None, "outside the target"),
    ({"facades/train/1.jpg": b"x", "/tmp/evil.txt": b"pwned"}, None, "outside the target"),
    ({"facades/train/1.jpg": b"x"}, {"facades/val": (tarfile.SYMTYPE, "../../../etc")}, "points outside"),
    ({"facades/train/1.jpg": b"x"}, {"facades/val/p": (tarfile.LNKTYPE, "../etc/passwd")}, "points outside"),
    ({"facades/train/1.jpg": b"x"}, {"facades/train/tty": (tarfile.CHRTYPE, "")}, "a device or a fifo"),
    ({"facades/train/zeros.jpg": bytes(40 * 2**20)}, None, "tar bomb"),
    ({f"facades/train/{i}.jpg": bytes(60 * 2**10) for i in range(600)}, None, "tar bomb"),
], ids=["dotdot", "absolute", "symlink-out", "hardlink-out", "device", "bomb", "many-members-bomb"])
def test_unsafe_tar_archives_are_refused_and_nothing_is_left(tmp_path, server, monkeypatch, caplog, members,
                                                             special, why):
    from cyclegan import download as command

    monkeypatch.chdir(tmp_path)
    server.files["/datasets/facades.tar.gz"] = tar_with(members, special)
    assert command.main(["dataset", "pix2pix/facades", "--base_url", server.url]) == 1
    assert why in caplog.text and "the archive was deleted" in caplog.text
    assert leftovers(tmp_path / "data") == []  # no dataset folder, no archive, no temporary folder
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_tar_limits_layout_and_a_link_inside(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_with({f"d/train/{i}.jpg": os.urandom(1000) for i in range(5)},
                                 {"d/train/same.jpg": (tarfile.SYMTYPE, "0.jpg")}))
    with pytest.raises(DownloadError, match="more than the 4 files"):
        extract_tar(archive, tmp_path / "d", ExtractLimits(max_files=4))
    with pytest.raises(DownloadError, match="GiB allowed"):
        extract_tar(archive, tmp_path / "d", ExtractLimits(max_bytes=4000))
    assert leftovers(tmp_path) == ["a.tar.gz"]
    extract_tar(archive, tmp_path / "d", strip_top="d")  # the link inside is skipped, never followed
    assert leftovers(tmp_path / "d" / "train") == [f"{i}.jpg" for i in range(5)]
    for members in ({"d/train": b"a file", "d/train/a.jpg": b"x"}, {"d/a.jpg": b"x", "d/a.jpg/b.jpg": b"y"}):
        archive.write_bytes(tar_with(members))
        with pytest.raises(DownloadError, match="both a file and a folder"):
            extract_tar(archive, tmp_path / "e")
    pax = io.BytesIO()  # a header tarfile would read whole into memory
    with tarfile.open(fileobj=pax, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d/a.jpg")
        info.size, info.pax_headers = 1, {"comment": "x" * 5 * 2**20}
        tf.addfile(info, io.BytesIO(b"x"))
    archive.write_bytes(pax.getvalue())
    with pytest.raises(DownloadError, match="more than the 4194304"):
        extract_tar(archive, tmp_path / "e")
    assert leftovers(tmp_path) == ["a.tar.gz", "d"]


@pytest.mark.parametrize("damage", ["flipped", "cut", "crc", "not-gzip"])
def test_a_damaged_tar_archive_is_refused(tmp_path, damage):
    good = tar_with({"d/train/a.jpg": os.urandom(5000), "d/train/b.jpg": os.urandom(5000)})
    middle = len(good) // 2
    bad = {"flipped": good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:],
           "cut": good[:middle],
           "crc": good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:],  # the gzip trailer's CRC-32
           "not-gzip": b"<html>moved</html>"}[damage]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(bad)
    with pytest.raises(DownloadError, match="damaged"):
        extract_tar(archive, tmp_path / "d")
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_a_disk_error_while_extracting_a_tar_keeps_the_archive(tmp_path, monkeypatch):
    import errno

    from cyclegan import fetch
    from cyclegan.errors import CycleGANError

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "d/train/a.jpg")

    monkeypatch.setattr(fetch, "_write_tar_member", full)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_with({"d/train/a.jpg": b"x"}))
    with pytest.raises(CycleGANError, match="No space left on device.*the archive is kept") as caught:
        extract_tar(archive, tmp_path / "d")
    assert not isinstance(caught.value, DownloadError)  # not the archive's fault: download keeps it
    assert leftovers(tmp_path) == ["a.tar.gz"]
