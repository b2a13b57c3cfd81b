"""COCO box metrics computed by COCO's own evaluation code (faster-coco-eval, a faithful fast port of
pycocotools' ``COCOeval``; torchmetrics' mean average precision needs torchvision, which this project
cannot use).

:func:`coco_metrics` takes ground truth and detections per image as tensors and returns fractions
in [0, 1]: ``map`` (mAP@[.5:.95]), ``map50``, ``map75``, ``mar100`` (AR with 100 detections), the
small/medium/large splits, ``per_class`` AP (mAP@[.5:.95] of each class) and ``per_class_50``
(AP@.5 of each class). A value COCO leaves undefined (no ground truth of
that kind: COCOeval's ``-1``) is ``None``, never NaN.

>>> import torch
>>> truth = [{"boxes": torch.tensor([[10.0, 10, 30, 30]]), "labels": torch.tensor([0])}]
>>> found = [{"boxes": torch.tensor([[10.0, 10, 30, 30]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
>>> m = coco_metrics(truth, found, ["digit"])
>>> m["map"], m["map50"], m["per_class"], m["per_class_50"]
(1.0, 1.0, {'digit': 1.0}, {'digit': 1.0})
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from cspnet.ops.boxes import box_convert

STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")  # fmt: skip
"""COCOeval's twelve ``stats``, in its order."""


def _xywh(boxes: Tensor) -> list[list[float]]:
    # float64: the width of two float32 coordinates is then exact, as COCO's Python code would compute it.
    return box_convert(boxes.detach().float().cpu().double().reshape(-1, 4), "xyxy", "xywh").tolist()


def coco_ground_truth(truth: Sequence[dict[str, Tensor]], class_names: Sequence[str],
                      image_size: tuple[int, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """A COCO instances dict of ``truth`` (image ids 0..N-1, category ids = class indices)."""
    height, width = image_size or (0, 0)
    images = [{"id": i, "width": width, "height": height} for i in range(len(truth))]
    annotations: list[dict[str, Any]] = []
    for i, t in enumerate(truth):
        for box, label in zip(_xywh(t["boxes"]), t["labels"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    categories = [{"id": i, "name": str(name)} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(found: Sequence[dict[str, Tensor]], image_ids: Sequence[int] | None = None,
                 category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Detections as COCO's results format: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``."""
    results = []
    for i, f in enumerate(found):
        image_id = image_ids[i] if image_ids is not None else i
        for box, score, label in zip(_xywh(f["boxes"]), f["scores"].tolist(), f["labels"].tolist()):
            category = category_ids[int(label)] if category_ids is not None else int(label)
            results.append({"image_id": int(image_id), "category_id": int(category), "bbox": [round(v, 2) for v in box],
                            "score": round(float(score), 5)})  # fmt: skip
    return results


def _fraction(value: float) -> float | None:
    return None if value < 0 or value != value else round(float(value), 6)


def coco_metrics(truth: Sequence[dict[str, Tensor]], found: Sequence[dict[str, Tensor]],
                 class_names: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """COCO bbox metrics of ``found`` against ``truth`` (one dict per image, same order)."""
    import numpy as np
    from faster_coco_eval import COCO, COCOeval_faster  # type: ignore[import-untyped]

    if len(truth) != len(found):
        raise ValueError(f"{len(truth)} ground-truth images but {len(found)} detection lists")
    gt = coco_ground_truth(truth, class_names)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress lines
        coco_gt = COCO(gt)
        results = coco_results(found)
        coco_dt = coco_gt.loadRes(results) if results else COCO({**gt, "annotations": []})
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *args: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    metrics: dict[str, Any] = {name: _fraction(v) for name, v in zip(STAT_NAMES, stats)}
    if not gt["annotations"]:  # nothing to find: every AP is undefined
        metrics.update({name: None for name in STAT_NAMES})
    elif not results:  # there was something to find and nothing was found
        metrics.update({name: (0.0 if metrics[name] is not None else None) for name in STAT_NAMES})
    # precision: (IoU thresholds, recall points, classes, areas, max detections); area "all", 100 dets.
    precision = np.asarray(evaluator.eval["precision"]) if results else None
    per_class: dict[str, float | None] = {}
    per_class_50: dict[str, float | None] = {}
    present = {int(a["category_id"]) for a in gt["annotations"]}
    for k, name in enumerate(class_names):
        per_class[str(name)] = _class_ap(precision, k, None) if k in present else None
        per_class_50[str(name)] = _class_ap(precision, k, 0) if k in present else None
    metrics["per_class"] = per_class
    metrics["per_class_50"] = per_class_50
    return metrics


def _class_ap(precision: Any, k: int, iou_index: int | None) -> float:
    """AP of class ``k`` from COCOeval's precision array (area "all", 100 detections): the mean over the
    IoU thresholds (``iou_index=None``) or at one of them (0: IoU 0.5); 0 when nothing was detected."""
    if precision is None:
        return 0.0
    p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    p = p[p > -1]
    return round(float(p.mean()), 6) if p.size else 0.0
