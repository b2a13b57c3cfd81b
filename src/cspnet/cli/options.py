"""Command-line options that several subcommands share."""

from __future__ import annotations

import argparse
import ast
from typing import Any


def add_config_overrides(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    """``--set FIELD=VALUE`` (repeatable; ``--override`` is an alias): model config overrides."""
    parser.add_argument(
        "--set",
        "--override",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help="model config field, value read as a Python literal, e.g. --set partial_ratio=0.25 "
        f"--set 'block_config=(6, 6, 6)'; repeatable{help_suffix}",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["partial_ratio=0.25", "fusion=fusion_last"]`` -> ``{"partial_ratio": 0.25, "fusion": "fusion_last"}``.

    Values are Python literals (lists become tuples, as config fields hold tuples); anything that
    is not a literal (a bare word) is taken as a string.

    >>> parse_overrides(["partial_ratio=0.25", "fusion=fusion_last", "block_config=[6, 12]"])
    {'partial_ratio': 0.25, 'fusion': 'fusion_last', 'block_config': (6, 12)}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} is invalid: expected FIELD=VALUE, e.g. partial_ratio=0.25")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def positive_int(text: str) -> int:
    """An argparse ``type``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: expected a positive integer")
    return value


def add_crop_pct(parser: argparse.ArgumentParser) -> None:
    """``--crop-pct F``: the evaluation resize (timm's ``crop_pct``)."""
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        metavar="F",
        help="evaluation resize: the short side to img_size / F, then the centre img_size square "
        "(default: the run's, else 0.875 for folders, 1.0 for the digits)",
    )


def resolve_crop_pct(flag: float | None, train_config: dict[str, Any], data: str | None = None) -> float:
    """``--crop-pct`` if given, else the run's (:func:`cspnet.data.transforms.run_crop_pct`).

    >>> resolve_crop_pct(0.9, {"crop_pct": 0.95}), resolve_crop_pct(None, {"crop_pct": 0.95})
    (0.9, 0.95)
    """
    from cspnet.data.transforms import check_crop_pct, run_crop_pct

    return check_crop_pct(flag) if flag is not None else run_crop_pct(train_config, data)


from cspnet.precision import EAGER_INFERENCE_PRECISIONS as INFERENCE_PRECISIONS  # noqa: E402


def add_inference_precision(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16``: the dtype of the weights and inputs at inference."""
    parser.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="fp32",
        help="bf16: weights and inputs in bfloat16, about 2x faster on CPUs with AVX-512 BF16 or AMX "
        "(measure its accuracy on your data with `cspnet eval --precision bf16`); default fp32",
    )


def inference_dtype(precision: str) -> Any:
    """The torch dtype of an ``--precision`` choice.

    >>> inference_dtype("bf16")
    torch.bfloat16
    """
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
