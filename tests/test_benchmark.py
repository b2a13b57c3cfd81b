"""``cspnet benchmark``: real measurements of small models, their table labels, one-line errors."""

from __future__ import annotations

import pytest

from cspnet.cli.benchmark import BenchSpec, describe_setup, markdown_table, measure, measure_isolated
from cspnet.cli.main import main

TINY = {"model": "cspdensenet_bc40", "batch_size": 2, "img_size": 16, "warmup": 1, "min_steps": 2, "min_seconds": 0.0}


@pytest.mark.parametrize(
    ("mode", "precision"), [("inference", "fp32"), ("inference", "bf16"), ("train", "fp32"), ("train", "bf16")]
)
def test_measure_reports_throughput_latency_and_memory(mode: str, precision: str) -> None:
    result = measure(BenchSpec(mode=mode, precision=precision, **TINY))
    assert result["steps"] >= 2 and result["img_per_s"] > 0 and result["latency_ms"] > 0
    assert result["peak_mib"] >= 0 and result["img_size"] == 16
    assert result["img_per_s"] == pytest.approx(2 / (result["latency_ms"] / 1e3))


def test_each_measurement_runs_in_a_fresh_process() -> None:
    result = measure_isolated(BenchSpec(tune_allocator=False, overrides={"partial_ratio": 0.25}, **TINY))
    assert result["model"] == "cspdensenet_bc40" and result["img_per_s"] > 0
    assert describe_setup(result) == "optimized, channels_last, default malloc, partial_ratio=0.25"
    assert markdown_table([result]).splitlines()[2].startswith("| cspdensenet_bc40 | inference | 2 | 16 | fp32 |")


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
