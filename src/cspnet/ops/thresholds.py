"""The post-processing thresholds, in one place (stdlib only: the CLI reads them for its defaults
before it loads torch). The rule they parametrise is :mod:`cspnet.ops.postprocess`.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """The post-processing settings, checked when made; the field names are the keyword arguments of
    :func:`~cspnet.ops.postprocess.postprocess` and :func:`~cspnet.ops.postprocess.postprocess_numpy`.

    >>> PREDICT.replace(conf_threshold=0.5).conf_threshold
    0.5
    >>> PREDICT.replace(conf_threshold=1.5)
    Traceback (most recent call last):
    ...
    ValueError: conf_threshold=1.5 is invalid: expected 0 <= conf_threshold <= 1
    """

    conf_threshold: float
    """A (box, class) pair is a candidate when its score is strictly greater."""
    iou_threshold: float
    """NMS suppresses a same-class box whose IoU with a better one is strictly greater."""
    max_detections: int
    """At most this many detections per image (the best)."""
    max_candidates: int
    """At most this many candidates per image enter NMS (the best)."""

    def __post_init__(self) -> None:
        for name in ("conf_threshold", "iou_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}={value!r} is invalid: expected 0 <= {name} <= 1")
        for name in ("max_detections", "max_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")

    def replace(self, **changes: Any) -> Thresholds:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the post-processing functions: ``postprocess(b, s, size, **EVALUATE.kwargs())``."""
        return dataclasses.asdict(self)


PREDICT = Thresholds(conf_threshold=0.25, iou_threshold=0.45, max_detections=300, max_candidates=3000)
"""Prediction (``Detector.detect``, ``cspnet detect predict``, the exported NMS): confident boxes only."""

EVALUATE = Thresholds(conf_threshold=0.001, iou_threshold=0.6, max_detections=100, max_candidates=1000)
"""Evaluation (``cspnet detect val``, validation during training): COCO scores every detection, so the
score threshold is low (as COCO evaluations use), and COCO counts at most 100 per image."""
