"""Declarative field constraints for config dataclasses (no torch import: the CLI reads them at start-up).

A field declares its constraint in its metadata (:func:`bounded`, :func:`one_of`);
:func:`check_fields` checks them all and raises a ``ValueError`` that names the field, how the user
wrote it (``label``) and the valid range.

>>> from dataclasses import dataclass
>>> @dataclass
... class Recipe:
...     lr: float = bounded(0.1, 0.0, low_open=True)
>>> check_fields(Recipe(lr=float("inf")), label=lambda name, value: f"--{name} {value}")
Traceback (most recent call last):
...
ValueError: --lr inf is invalid: expected a finite number
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any


def bounded(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    integer: bool = False,
    doc: str = "",
) -> Any:
    """A numeric field with ``low <= value <= high`` (strict where ``low_open`` / ``high_open``).

    ``optional`` also admits ``None`` (a field whose default is derived from the others);
    ``integer`` rejects non-integers. Infinities and NaN are always rejected.
    """
    meta = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "optional": optional,
            "integer": integer, "doc": doc}  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


def one_of(default: Any, choices: tuple[Any, ...], doc: str = "") -> Any:
    """A field whose value must be one of ``choices``."""
    return dataclasses.field(default=default, metadata={"choices": choices, "doc": doc})


def range_text(name: str, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``"0.0 <= name < 1.0"``: the range of a :func:`bounded` field, as error messages show it."""
    parts = []
    if low is not None:
        parts.append(f"{low} {'<' if low_open else '<='} ")
    parts.append(name)
    if high is not None:
        parts.append(f" {'<' if high_open else '<='} {high}")
    return "".join(parts)


def _default_label(name: str, value: Any) -> str:
    return f"{name}={value!r}"


def check_field(name: str, value: Any, meta: Any, label: Callable[[str, Any], str] = _default_label,
                out_of_range: str = "is invalid") -> None:  # fmt: skip
    """Check one value against a field's metadata; ``label(name, value)`` is how the message names it,
    ``out_of_range`` what it says of a number outside the range (model configs: "is out of range")."""
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(repr(c) for c in meta["choices"])
        raise ValueError(f"{label(name, value)} is invalid: expected one of {choices}")
    if "low" not in meta or (meta["optional"] and value is None):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label(name, value)} is invalid: expected a number")
    if not math.isfinite(value):
        raise ValueError(f"{label(name, value)} is invalid: expected a finite number")
    if meta["integer"] and not isinstance(value, int):
        raise ValueError(f"{label(name, value)} is invalid: expected an integer")
    low, high, low_open, high_open = meta["low"], meta["high"], meta["low_open"], meta["high_open"]
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{label(name, value)} {out_of_range}: expected {range_text(name, low, high, low_open, high_open)}")


def check_fields(obj: Any, label: Callable[[str, Any], str] = _default_label, out_of_range: str = "is invalid") -> None:
    """Check every constrained field of the dataclass instance ``obj``."""
    for f in dataclasses.fields(obj):
        check_field(f.name, getattr(obj, f.name), f.metadata, label, out_of_range)
