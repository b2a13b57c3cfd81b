"""``cspnet benchmark``: real measurements of small models, their table labels, one-line errors."""

from __future__ import annotations

import pytest

from cspnet.cli.benchmark import describe_setup, markdown_table
from cspnet.cli.main import main
from cspnet.inference.benchmark import BenchSpec, measure, measure_isolated

TINY = {"model": "cspdensenet_bc40", "batch_size": 2, "img_size": 16, "warmup": 1, "min_steps": 2, "min_seconds": 0.0}


@pytest.mark.parametrize(
    ("mode", "precision"), [("inference", "fp32"), ("inference", "bf16"), ("train", "fp32"), ("train", "bf16")]
)
def test_measure_reports_throughput_latency_and_memory(mode: str, precision: str) -> None:
    result = measure(BenchSpec(mode=mode, precision=precision, **TINY))
    assert result["steps"] >= 2 and result["img_per_s"] > 0 and result["latency_ms"] > 0
    assert result["peak_mib"] >= 0 and result["img_size"] == 16
    assert result["img_per_s"] == pytest.approx(2 / (result["latency_ms"] / 1e3))
    assert result["cpu_ms_per_img"] > 0


def test_each_measurement_runs_in_a_fresh_process() -> None:
    result = measure_isolated(BenchSpec(tune_allocator=False, overrides={"partial_ratio": 0.25}, **TINY))
    assert result["model"] == "cspdensenet_bc40" and result["img_per_s"] > 0
    assert describe_setup(result) == "optimized, channels_last, default malloc, partial_ratio=0.25"
    assert markdown_table([result]).splitlines()[2].startswith("| cspdensenet_bc40 | inference | torch | 2 | 16 | fp32 |")


def test_setup_labels_name_what_was_measured() -> None:
    base = {"mode": "inference", "optimize": True, "channels_last": True, "compile": False}
    assert describe_setup({**base, "compile": True}) == "optimized, channels_last, compile"
    assert describe_setup({**base, "optimize": False, "channels_last": False}) == "eager"
    assert describe_setup({**base, "mode": "train"}) == "channels_last"  # training is never folded


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["benchmark", "nosuchnet"], "unknown model"),
        (["benchmark", "densenet_bc40", "--batch-size", "0"], "--batch-size 0 is invalid"),
        (["benchmark", "densenet_bc40", "--set", "partial_ratio=2"], "partial_ratio=2 is out of range"),
    ],
)
def test_bad_input_is_a_one_line_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_measurement_engine_keeps_its_old_address_and_one_vocabulary() -> None:
    import cspnet.cli.benchmark as cli
    import cspnet.inference.benchmark as engine
    import cspnet.precision
    from cspnet.cli.backend_options import BACKEND_CHOICES
    from cspnet.inference import BACKENDS

    assert cli.measure_isolated is engine.measure_isolated and cli.BenchSpec is engine.BenchSpec
    # the same objects, not equal copies: one definition each (cspnet.precision, the engine's MODES)
    assert cli.PRECISIONS is engine.PRECISIONS is cspnet.precision.PRECISIONS and cli.MODES is engine.MODES
    assert BACKEND_CHOICES is BACKENDS is engine.BACKENDS is cspnet.precision.BACKENDS


@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8")])
def test_engines_are_measured_through_the_inference_interface(backend: str, precision: str) -> None:
    result = measure(BenchSpec(backend=backend, precision=precision, **TINY))
    assert result["img_per_s"] > 0 and result["backend"] == backend and result["threads"] >= 1
    setup = describe_setup(result)
    assert setup.startswith("ORT_ENABLE_ALL" if backend == "onnxruntime" else "THROUGHPUT hint")
    assert ("calibrated on 32 digits" in setup) == (precision == "int8")


@pytest.mark.slow  # four fresh measuring processes
def test_one_table_with_a_row_per_backend_and_precision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cspnet.cpu

    monkeypatch.setattr(cspnet.cpu, "has_native_bf16", lambda: False)  # as on an AVX2-only CPU
    argv = ["benchmark", "cspdensenet_bc40", "--batch-size", "1", "--img-size", "16", "--seconds", "0",
            "--backend", "torch", "onnxruntime", "--precision", "fp32", "bf16", "int8"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert sum(line.startswith("| model |") for line in lines) == 1  # the table is printed once
    rows = [line.split(" | ")[2:6:3] for line in lines[2:]]  # backend, precision
    assert rows == [["torch", "fp32"], ["torch", "bf16"], ["onnxruntime", "fp32"], ["onnxruntime", "int8"]]
    assert "no native bf16" in captured.err and "much slower" in captured.err
    assert "skipped: cspdensenet_bc40 inference torch int8" in captured.err
    assert "onnxruntime bf16 (onnxruntime runs fp32, int8)" in captured.err


def test_a_training_row_on_an_engine_is_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "densenet_bc40", "--mode", "train", "--backend", "openvino"]) == 2
    assert "nothing to measure" in capsys.readouterr().err
