"""``cspnet``'s two kinds of failure: the user's (one line ``error: ...``, exit 2) and cspnet's own
bugs (one line ``internal error (a bug in cspnet) ...`` with how to report it, exit 1).

A ``TypeError`` is a bug, not bad input: the places that used to let one reach the user as an
input error (unknown config fields) now raise a ``ValueError``.
"""

from __future__ import annotations

import builtins
import errno
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cspnet.cli.models
from cspnet.cli.main import BUG_EXIT, USER_ERROR_EXIT, USER_ERRORS, CLIError, main
from cspnet.convert import CheckpointError
from cspnet.models.config import UnknownFieldError


def _raising(exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cspnet models` (the lightest command) raises ``exc``."""

    def run(args: object) -> int:
        raise exc

    monkeypatch.setattr(cspnet.cli.models, "run", run)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _builtin_exceptions() -> list[BaseException]:
    """One instance of every built-in ``Exception`` class that can be made from a message."""
    found = []
    for cls in vars(builtins).values():
        # BrokenPipeError is the reader going away (`cspnet models | head -1`): a quiet exit 141.
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, Warning | BrokenPipeError):
            try:
                found.append(cls("something went wrong"))
            except TypeError:  # UnicodeDecodeError and friends need more arguments
                continue
    return found


@pytest.mark.parametrize("exc", _builtin_exceptions(), ids=lambda e: type(e).__name__)
def test_every_exception_is_one_line_and_only_user_errors_exit_2(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _raising(exc, monkeypatch)
    code = main(["models"])
    err = _one_line(capsys)
    if isinstance(exc, USER_ERRORS):
        assert code == USER_ERROR_EXIT == 2 and err.startswith("cspnet models: error: "), err
    else:
        assert code == BUG_EXIT == 1, err
        assert err.startswith(f"cspnet models: internal error (a bug in cspnet): {type(exc).__name__}"), err
        assert "something went wrong" in err and "`cspnet -v models ...`" in err  # what happened, how to report


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (CLIError("--topk 0 is invalid"), "--topk 0 is invalid"),
        (CheckpointError("w.pt: refused"), "w.pt: refused"),
        (UnknownFieldError("unknown config field(s) x"), "unknown config field(s) x"),
        (ValueError("first\nsecond"), "first | second"),
        # the system's reason and the file, without Python's "[Errno 28]" prefix
        (OSError(errno.ENOSPC, "No space left on device", "out/m.onnx"), "out/m.onnx: No space left on device"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.png"), "x.png: No such file or directory"),
        (PermissionError(errno.EACCES, "Permission denied", "a", None, "b"), "a -> b: Permission denied"),
        (FileNotFoundError("model file not found: m.onnx"), "model file not found: m.onnx"),
        (MemoryError(), "out of memory"),
        (ModuleNotFoundError("No module named 'openvino'"), "No module named 'openvino'"),
    ],
)
def test_user_errors_read_as_one_plain_line(
    exc: BaseException, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _raising(exc, monkeypatch)
    assert main(["models"]) == 2
    err = _one_line(capsys)
    assert err == f"cspnet models: error: {expected}" or err.startswith(f"cspnet models: error: {expected}"), err
    assert "[Errno" not in err


@pytest.mark.parametrize("exc", [ValueError("bad input"), TypeError("a bug")], ids=["user", "bug"])
def test_verbose_shows_the_traceback_of_either_kind(exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    _raising(exc, monkeypatch)
    with pytest.raises(type(exc)):
        main(["-v", "models"])


def test_a_bug_in_a_real_run_exits_1_with_the_report_hint() -> None:
    """In a process of its own, as a user runs it: no traceback, status 1."""
    code = ("import sys, cspnet.cli.models as m\n"
            "def run(args): return {}['missing']\n"
            "m.run = run\n"
            "from cspnet.cli.main import main\n"
            "sys.exit(main(['models']))\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("cspnet models: internal error (a bug in cspnet): KeyError: 'missing'; please "
                                  "report it with the traceback that `cspnet -v models ...` prints")  # fmt: skip


# --- what used to reach the user as a TypeError -------------------------------------------------------------


def test_an_unknown_config_field_is_a_value_error_and_still_a_type_error() -> None:
    from cspnet.models import create_model

    for kind in (ValueError, TypeError):  # bad input for the CLI; an unexpected keyword for Python callers
        with pytest.raises(kind, match=r"unknown config field\(s\) nosuch"):
            create_model("cspdensenet_bc40", nosuch=1)


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "cspdensenet_bc40", "--set", "nosuch=1"],
        ["benchmark", "cspdensenet_bc40", "--set", "nosuch=1"],
        ["profile", "--compare", "cspdensenet_bc40", "densenet_bc40", "--set", "partial_rate=0.5"],
    ],
)
def test_unknown_config_fields_from_the_command_line_are_user_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "unknown config field(s)" in _one_line(capsys)


# Values a user may type after --set FIELD=: wrong types, out of range, odd literals.
SET_VALUES = st.sampled_from(
    ["0", "-1", "2", "0.5", "1e9", "nan", "inf", "True", "None", "'x'", "(1, 2)", "()", "[0]", "[1, -1]", "{}",
     "{'a': 1}", "b'x'", "1j", "((1,),)", "fusion_last", "silu", "(0, 0, 0, 0)", "'csp'"]
)  # fmt: skip
FIELDS = st.sampled_from(
    ["partial_ratio", "fusion", "growth_rate", "block_config", "act", "transition_b_ratio", "in_chans", "drop_rate",
     "memory_efficient", "num_classes", "stem_width", "bn_size", "compression"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)  # every field x value pair (13 x 23): about 7 s
@given(field=FIELDS, value=SET_VALUES)
def test_any_set_override_is_a_result_or_a_user_error_never_a_bug(field: str, value: str) -> None:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["profile", "cspdensenet_bc40", "--img-size", "32", "--set", f"{field}={value}"])
    print(field, value, code, err.getvalue())  # shown when the example fails
    assert code in (0, 2), err.getvalue()
    assert len(err.getvalue().strip().splitlines()) <= 1


def test_predict_names_each_unreadable_image_and_the_reason_without_errno(
    tmp_path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np
    from PIL import Image

    from cspnet.export import export_model
    from cspnet.models import create_model

    model = export_model(create_model("cspdensenet_bc40", num_classes=3), "onnx", tmp_path / "m.onnx", 32).path
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "text.png").write_text("not an image")
    bad = [tmp_path / "missing.png", tmp_path / "folder", tmp_path / "loop", tmp_path / "text.png"]
    (tmp_path / "folder").mkdir()
    argv = ["predict", *map(str, bad), str(good), "--checkpoint", str(model), "--backend", "onnxruntime"]
    assert main(argv) == 0
    err = capsys.readouterr().err + caplog.text  # the summary line, and one warning per image
    assert "[Errno" not in err and "Traceback" not in err, err
    for reason in ("No such file or directory", "Is a directory", "Too many levels of symbolic links"):
        assert reason in err, err
    assert main([*argv[:-5], *argv[-4:]]) == 2  # only unreadable images: one line naming the first
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"cspnet predict: error: none of the 4 image(s) can be read (first: {bad[0]})", err
