"""Declarative model configs: one frozen dataclass per family, one instance per registered model.

Every field can be overridden from ``create_model(name, **overrides)``. Constraints live in the field
metadata (``bounded`` / ``one_of`` from :mod:`cspnet.fields`, shared with the training config, and
``positive_ints``) and are checked in ``__post_init__``, so an invalid value raises a
``ValueError`` that names the field and its valid range wherever the config is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cspnet.fields import bounded, check_field, one_of
from cspnet.layers.act import ACTIVATION_NAMES
from cspnet.layers.cross_stage import FUSIONS
from cspnet.layers.elastic import ELASTIC_POOLS, ELASTIC_UPSAMPLES

_Config = TypeVar("_Config", bound="ModelConfig")


def positive_ints(default: tuple[int, ...], doc: str = "") -> Any:
    """A tuple of positive integers (block counts, widths)."""
    return field(default=default, metadata={"positive_ints": True, "doc": doc})


def fusion_field() -> Any:
    """The ``fusion`` field every family declares: which partial transition its CSP stages get."""
    return one_of("csp", FUSIONS, doc="partial transition: csp (T, concat, U), fusion_first (concat, U), fusion_last (T, concat)")


def transition_b_ratio_field(default: float | None) -> Any:
    """The ``transition_b_ratio`` field: width of T over the blocks' output width (``None``: fill the
    stage width, see :func:`cspnet.layers.plan_stage`)."""
    return bounded(
        default, 0.0, 1.0, low_open=True, optional=True, doc="width of T / block-path width (None: fill the stage width)"
    )


class UnknownFieldError(ValueError, TypeError):
    """A config field that does not exist: bad input (a ``ValueError``, one line from the CLI) and, as
    for any unexpected keyword argument, a ``TypeError`` to Python callers."""


def elastic_pool_field(default: str) -> Any:
    """The ``elastic_pool`` field: the 2x2 pool that opens an ELASTIC block's half-resolution branch."""
    return one_of(default, ELASTIC_POOLS, doc="pool of the ELASTIC half-resolution branch: max (darknet) or avg (allenai)")


def elastic_upsample_field(default: str) -> Any:
    """The ``elastic_upsample`` field: how an ELASTIC block's half-resolution branch is upsampled back."""
    return one_of(
        default, ELASTIC_UPSAMPLES, doc="upsampling of the ELASTIC half-resolution branch: nearest (darknet) or bilinear (allenai)"
    )


@dataclass(frozen=True)
class ModelConfig:
    """Fields every family shares."""

    drop_rate: float = bounded(0.0, 0.0, 1.0, high_open=True, doc="dropout before the classifier")
    drop_path_rate: float = bounded(
        0.0, 0.0, 1.0, high_open=True, doc="stochastic depth, rising linearly to this rate over the blocks"
    )
    act: str = one_of("relu", ACTIVATION_NAMES, doc="activation of every conv block")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            check_field(f.name, value, meta, out_of_range="is out of range")  # bounded / one_of fields
            if meta.get("positive_ints"):
                if isinstance(value, list):
                    value = tuple(value)
                    object.__setattr__(self, f.name, value)
                if not isinstance(value, tuple) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
                ):
                    raise ValueError(f"{f.name}={value!r} is invalid: expected a non-empty tuple of positive integers")
        self.check()

    def check(self) -> None:
        """Cross-field constraints; families override this."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self: _Config, **overrides: Any) -> _Config:
        """A copy with ``overrides`` applied; unknown names raise :class:`UnknownFieldError` listing the valid ones."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise UnknownFieldError(
                f"unknown config field(s) {', '.join(unknown)} for {type(self).__name__}; "
                f"valid fields: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
