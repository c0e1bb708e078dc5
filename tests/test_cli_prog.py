"""Every subcommand's usage and error lines name the command typed, `dynrcnn SUB` (issue 29,
point 5): `dynrcnn make-synthetic` was `python -m dynrcnn.data.synthetic`, an unknown flag
was reported by the top-level parser (`dynrcnn: error: unrecognized arguments`), and the
one-line input errors read `dynrcnn: error: ...`. Nothing here trains or writes data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynrcnn.cli import main

SCRIPT = Path(sys.executable).parent / "dynrcnn"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMANDS = ("train", "eval", "predict", "plot", "compare", "export", "make-synthetic", "demo")


def run(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def refused(capsys, argv) -> str:
    """main(argv) refuses with status 2: an argparse error (SystemExit) or a one-line input
    error (returned); either way stdout is empty and stderr has no traceback."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2, argv
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err, err
    return err


def argparse_error(capsys, argv, needle: str) -> None:
    """`usage: dynrcnn SUB ...` then `dynrcnn SUB: error: ...` naming the command typed."""
    err = refused(capsys, argv)
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: dynrcnn {argv[0]} "), err
    assert lines[-1].startswith(f"dynrcnn {argv[0]}: error: ") and needle in lines[-1], err
    assert "python -m" not in err


def input_error(capsys, argv, needle: str) -> None:
    """The library's one line for known bad input, `dynrcnn SUB: error: ...`."""
    err = refused(capsys, argv)
    assert err.startswith(f"dynrcnn {argv[0]}: error: ") and err.count("\n") == 1, err
    assert needle in err, err


def test_help_of_the_console_script_names_the_command(tmp_path):
    """Through the installed script once (make-synthetic was `python -m ...`); every
    command's help in-process below (a process each cost ~5 s of CPU in make test)."""
    shown = run([str(SCRIPT), "make-synthetic", "--help"], tmp_path)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout.startswith("usage: dynrcnn make-synthetic "), shown.stdout[:200]
    assert "python -m" not in shown.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_names_it(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/somewhere/else/__main__.py"])  # not read for prog
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0 and err == "", err
    assert out.startswith(f"usage: dynrcnn {command} "), out[:200]
    assert "python -m" not in out
    assert list(tmp_path.iterdir()) == []


# per command: its required arguments, so that only the unknown flag is wrong
REQUIRED = {"train": [], "eval": [], "predict": ["--weights", "w.pth", "--image", "i.png"],
            "plot": ["run"], "compare": ["run"], "export": ["--weights", "w.pth", "--out", "o"],
            "make-synthetic": ["--out", "o"], "demo": []}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_is_the_subcommands_error(command, capsys, tmp_path, monkeypatch):
    """Was `usage: dynrcnn [-h] COMMAND ...` / `dynrcnn: error: unrecognized arguments`."""
    monkeypatch.chdir(tmp_path)
    argparse_error(capsys, [command, *REQUIRED[command], "--no-such-flag"],
                   "unrecognized arguments: --no-such-flag")
    assert list(tmp_path.iterdir()) == []


def test_bad_values_name_the_command(capsys, tmp_path, monkeypatch):
    """For each subcommand one value argparse refuses and one its checks refuse."""
    monkeypatch.chdir(tmp_path)
    nope = str(tmp_path / "nope.pth")

    argparse_error(capsys, ["train", "--iterations", "x"], "--iterations: invalid int")
    input_error(capsys, ["train", "--iterations", "0"], "--iterations must be >= 1, got 0")

    argparse_error(capsys, ["eval", "--arch", "nope"], "--arch: invalid choice")
    input_error(capsys, ["eval", "--weights", nope], f"--weights {nope}")

    argparse_error(capsys, ["predict"], "required: --weights, --image")
    input_error(capsys, ["predict", "--weights", nope, "--image", "nope.png"],
                "--image nope.png: no such file")

    argparse_error(capsys, ["plot"], "required: run_dir")
    input_error(capsys, ["plot", str(tmp_path)], "has no log.jsonl")

    argparse_error(capsys, ["compare"], "required: run_dirs")
    input_error(capsys, ["compare", "a", "--names", "x", "y"], "--names")

    argparse_error(capsys, ["export", "--weights", nope], "required: --out")
    input_error(capsys, ["export", "--weights", nope, "--out", "o.pth"], f"--weights {nope}")

    argparse_error(capsys, ["make-synthetic"], "required: --out")
    argparse_error(capsys, ["make-synthetic", "--out", "d", "--num-classes", "0"],
                   "--num-classes must be in 1..6, got 0")
    argparse_error(capsys, ["make-synthetic", "--out", "d", "--num-val", "-1"],
                   "--num-train, --num-val and --num-test must be >= 0")

    argparse_error(capsys, ["demo", "--iterations", "x"], "--iterations: invalid int")
    input_error(capsys, ["demo", "--image-size", "8", "--data", "d"],
                "--image-size must be >= 32, got 8")
    input_error(capsys, ["demo", "--interval", "0", "--data", "d"],
                "--interval must be >= 1, got 0")
    assert list(tmp_path.iterdir()) == []  # refused before any data was written


def test_make_synthetic_into_a_file_is_one_error_naming_out(capsys, tmp_path):
    """--out is a file: was a NotADirectoryError traceback."""
    afile = tmp_path / "afile"
    afile.write_text("")
    argparse_error(capsys, ["make-synthetic", "--out", str(afile), "--num-train", "1",
                            "--num-val", "1"], f"--out {afile}: cannot write")


def test_the_console_script_and_python_m_name_the_command(tmp_path):
    """Through the console script and `python -m dynrcnn` (what torchrun runs) the command
    is `dynrcnn SUB`; `python -m dynrcnn.data.synthetic` run directly keeps its own name."""
    bad = run([str(SCRIPT), "make-synthetic", "--out", "d", "--num-classes", "0"], tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.startswith("usage: dynrcnn make-synthetic ")
    assert bad.stderr.splitlines()[-1] == \
        "dynrcnn make-synthetic: error: --num-classes must be in 1..6, got 0"

    bad = run([sys.executable, "-m", "dynrcnn", "train", "--no-such-flag"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: dynrcnn train "), bad.stderr
    assert bad.stderr.splitlines()[-1] == \
        "dynrcnn train: error: unrecognized arguments: --no-such-flag"

    shown = run([sys.executable, "-m", "dynrcnn.data.synthetic", "--help"], tmp_path)
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: python -m dynrcnn.data.synthetic ")
    assert list(tmp_path.iterdir()) == []
