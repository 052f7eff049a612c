"""How every command fails: one line and an exit status, the traceback only when asked for."""

from __future__ import annotations

import argparse
import logging

import pytest
from conftest import run_here

from cyclegan import report as report_module
from cyclegan.errors import CycleGANError
from cyclegan.runtime import report_failure, run_command, split_debug

log = logging.getLogger("cyclegan.test")


def failing(exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise exc
    return run


@pytest.mark.parametrize("exc,code,says", [
    (CycleGANError("--flag 3: use 1"), 2, "--flag 3: use 1"),
    (PermissionError(13, "Permission denied", "/some/where.png"), 2, "/some/where.png: Permission denied"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (MemoryError(), 1, "out of memory"),
    (ZeroDivisionError("division by zero"), 1, "internal error (ZeroDivisionError: division by zero)"),
])
def test_every_failure_is_one_line_and_a_status(exc, code, says, caplog):
    parser = argparse.ArgumentParser()
    assert run_command(parser, failing(exc), [], log) == code
    assert says in caplog.text
    assert "Traceback" not in caplog.text and len(caplog.records) == 1


def test_debug_adds_the_traceback_from_the_flag_anywhere_or_the_environment(caplog, monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--x")
    assert run_command(parser, failing(ZeroDivisionError("boom")), ["--debug", "--x", "1"], log) == 1
    assert "Traceback" in caplog.text and "ZeroDivisionError: boom" in caplog.text
    assert split_debug(["a", "--debug", "b"]) == (["a", "b"], True)
    monkeypatch.setenv("CYCLEGAN_DEBUG", "1")
    assert split_debug(["a"]) == (["a"], True)
    monkeypatch.setenv("CYCLEGAN_DEBUG", "0")
    assert split_debug(["a"]) == (["a"], False)


def test_an_os_error_without_a_file_is_still_one_line(caplog):
    assert report_failure(OSError(28, "No space left on device"), log) == 2
    assert "No space left on device" in caplog.text


def test_a_real_command_reports_an_internal_error_in_one_line(tmp_path, monkeypatch, caplog):
    (tmp_path / "config.json").write_text("{}")

    def broken(run_dir, output=None):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(report_module, "write_report", broken)
    assert report_module.main([str(tmp_path)]) == 1
    assert "internal error (RuntimeError: something inside broke)" in caplog.text and "--debug" in caplog.text
    assert "Traceback" not in caplog.text


def test_every_command_takes_debug():
    commands = ("train", "demo", "translate", "export", "evaluate", "report", "serve", "download dataset")
    for command in commands:
        result = run_here(*command.split(), "--help")
        assert result.returncode == 0 and "--debug" in result.stdout, command


def test_a_collective_failing_for_a_lost_peer_is_said_so_only_in_a_multi_process_job(caplog):
    from cyclegan.distributed import DistEnv, lost_peer
    from cyclegan.errors import PeerLost

    two, one = DistEnv(rank=0, world_size=2), DistEnv()
    nccl = RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error")
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection reset by peer "
                        "[10.0.0.2]:4711. This is typically caused by a remote worker crashing.")
    for exc, env in ((nccl, one), (RuntimeError("shape mismatch"), two), (CycleGANError("reset by peer"), two),
                     (ValueError("connection closed by peer"), two)):
        assert lost_peer(exc, env) is None, exc
    said = lost_peer(gloo, two)
    assert "lost another process of this 2-process job (the process group: Connection reset by peer " \
           "[10.0.0.2]:4711)" in said
    assert "remote process exited" in lost_peer(nccl, two)
    assert report_failure(PeerLost(said), log) == 1 and "bug in cyclegan" not in caplog.text
