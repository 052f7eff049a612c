"""The ``cyclegan`` command: dispatch, help texts and exit codes."""

from __future__ import annotations

from conftest import run_cli

from cyclegan import cli
from tests_flags import REFERENCE_FLAGS


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_no_command_and_unknown_command_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["paint"]) == 2
    assert "unknown command 'paint'" in capsys.readouterr().err


def test_train_help_shows_every_reference_flag_with_its_default():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in REFERENCE_FLAGS.items():
        assert f"--{flag}" in text
        assert f"(default: {default})" in text, flag


def test_module_entry_points_agree():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cyclegan.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--lambda_cyc" in out.stdout
    assert run_cli("--version").stdout.startswith("cyclegan ")
