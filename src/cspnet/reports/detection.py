"""The pictures and the per-class table of ``cspnet detect val``: what a detector finds and misses, per class.

From one evaluation's ground truth and detections (:class:`~cspnet.evaluation.DetectionResult`: boxes in
input pixels, detections at the evaluation's low score threshold), :func:`write_val_report` writes beside
``val.json``:

* ``pr_curve.png``: precision against recall at IoU 0.5, one line per class and their mean ("all
  classes"), each labelled with its AP@.5. The curves are COCO's: detections sorted by score, each
  matched to the unmatched ground-truth box of its class and image it overlaps most (IoU >= 0.5),
  precision made non-increasing from the right and read at 101 recall points; the mean of those 101
  points is the AP COCO reports (tested against faster-coco-eval).
* ``f1_curve.png``: F1 (the harmonic mean of precision and recall) of the detections scoring at least
  a confidence, against that confidence, per class and averaged over the classes; the best mean F1 and
  its confidence are marked: the threshold that balances missed objects against false detections.
* ``confusion_matrix.png``: detections scoring above ``detect predict``'s threshold (0.25) matched to
  ground-truth boxes of any class by IoU (best overlaps first, each box used once). Rows: the true class,
  with a last row "background" for detections that match no object (false detections); columns: the
  predicted class, with a last column "background" for objects no detection matched (missed). Cells
  hold counts; colour is the share of the row.

:func:`per_class_table` is the table ``detect val`` prints: per class the objects, COCO's AP@.5 and
AP@[.5:.95], and the precision and recall at the confidence of the best mean F1 (``n/a`` where no
threshold finds anything: an F1 of 0 everywhere).

>>> import torch
>>> truth = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])}]
>>> found = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "scores": torch.tensor([0.9, 0.8]),
...           "labels": torch.tensor([0, 0])}]
>>> matches = match_detections(truth, found, 2)
>>> [m.true_positive.tolist() for m in matches], [m.objects for m in matches]
([[True, False], []], [1, 1])
>>> detection_confusion(truth, found, 2).tolist()   # the cat box (class 1) was called class 0
[[1, 0, 0], [1, 0, 0], [0, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cspnet.ops.boxes import box_iou
from cspnet.ops.thresholds import PREDICT
from cspnet.training.plots import new_figure, plot_confusion_matrix

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds
CONFIDENCES = np.linspace(0.0, 1.0, 1001)  # where the F1 curve is read
MATCH_IOU = 0.5  # a detection is correct when it overlaps its object by at least this (mAP@.5's rule)
FIGURES = ("pr_curve.png", "f1_curve.png", "confusion_matrix.png")


@dataclass
class ClassMatches:
    """One class's detections over the whole set, highest score first, and how many objects it has."""

    scores: np.ndarray  # (D,) float
    true_positive: np.ndarray  # (D,) bool: matched an object of the class (IoU >= MATCH_IOU)
    objects: int

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall after each detection (in score order)."""
        tp = np.cumsum(self.true_positive)
        fp = np.cumsum(~self.true_positive)
        return tp / np.maximum(tp + fp, np.finfo(np.float64).eps), tp / max(self.objects, 1)


def match_detections(truth: Sequence[dict[str, Tensor]], found: Sequence[dict[str, Tensor]],
                     num_classes: int, iou_threshold: float = MATCH_IOU) -> list[ClassMatches]:  # fmt: skip
    """COCO's matching at one IoU threshold, per class: in each image, detections in score order each
    take the unmatched ground-truth box of their class they overlap most, if by ``iou_threshold`` or more."""
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    objects = [0] * num_classes
    for t, f in zip(truth, found):
        for k in range(num_classes):
            gt = t["boxes"][t["labels"] == k].double()
            objects[k] += len(gt)
            mine = f["labels"] == k
            if not bool(mine.any()):
                continue
            s = f["scores"][mine].double()
            order = torch.sort(s, descending=True, stable=True).indices
            boxes, s = f["boxes"][mine].double()[order], s[order]
            scores[k].append(s.numpy())
            hits[k].append(_greedy(box_iou(boxes, gt).numpy() if len(gt) else np.zeros((len(boxes), 0)), iou_threshold))
    result = []
    for k in range(num_classes):
        class_scores = np.concatenate(scores[k]) if scores[k] else np.zeros(0)
        class_hits = np.concatenate(hits[k]) if hits[k] else np.zeros(0, dtype=bool)
        rank = np.argsort(-class_scores, kind="mergesort")  # stable, as COCO's accumulate
        result.append(ClassMatches(class_scores[rank], class_hits[rank], objects[k]))
    return result


def _greedy(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Rows (detections, best first) each take the free column they overlap most, if by ``threshold``."""
    taken = np.zeros(iou.shape[1], dtype=bool)
    hit = np.zeros(iou.shape[0], dtype=bool)
    for d in range(iou.shape[0]):
        candidates = np.where(taken, -1.0, iou[d])
        if candidates.size and candidates.max() >= threshold:
            taken[int(candidates.argmax())] = hit[d] = True
    return hit


def interpolated_precision(m: ClassMatches) -> np.ndarray:
    """COCO's precision at :data:`RECALL_POINTS`: the best precision at that recall or beyond (0 past the
    highest recall reached); its mean is the class's AP."""
    out = np.zeros(len(RECALL_POINTS))
    if not len(m.scores) or not m.objects:
        return out
    precision, recall = m.precision_recall()
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    valid = index < len(recall)
    out[valid] = envelope[index[valid]]
    return out


def f1_by_confidence(m: ClassMatches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, F1)`` at each of :data:`CONFIDENCES`, of the detections scoring at least it
    (precision is 1 where no detection is left, where F1 is then 0 as recall is)."""
    kept = np.searchsorted(-m.scores, -CONFIDENCES, side="right")  # detections with score >= confidence
    tp = np.concatenate([[0], np.cumsum(m.true_positive)])[kept]
    precision = np.where(kept > 0, tp / np.maximum(kept, 1), 1.0)
    recall = tp / max(m.objects, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).eps)
    return precision, recall, f1


def detection_confusion(truth: Sequence[dict[str, Tensor]], found: Sequence[dict[str, Tensor]], num_classes: int,
                        conf_threshold: float = PREDICT.conf_threshold, iou_threshold: float = MATCH_IOU) -> Tensor:  # fmt: skip
    """``(C + 1, C + 1)`` counts, rows the true class, columns the predicted one, index ``C`` the background:
    detections above ``conf_threshold`` matched to ground truth of any class, highest IoU pairs first
    (IoU >= ``iou_threshold``), each box at most once."""
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.long)
    background = num_classes
    for t, f in zip(truth, found):
        keep = f["scores"] > conf_threshold
        boxes, labels = f["boxes"][keep].double(), f["labels"][keep].long()
        true_labels = t["labels"].long()
        iou = box_iou(t["boxes"].double(), boxes).numpy() if len(boxes) and len(true_labels) else np.zeros((0, 0))
        pairs = np.argwhere(iou >= iou_threshold)
        pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="mergesort")] if len(pairs) else pairs
        used_true, used_found = set(), set()
        for i, j in pairs.tolist():
            if i not in used_true and j not in used_found:
                used_true.add(i)
                used_found.add(j)
                matrix[true_labels[i], labels[j]] += 1
        for i in set(range(len(true_labels))) - used_true:
            matrix[true_labels[i], background] += 1  # missed
        for j in set(range(len(labels))) - used_found:
            matrix[background, labels[j]] += 1  # a detection of nothing
    return matrix


# -- the pictures ------------------------------------------------------------------------------------
@dataclass
class ValCurves:
    """Everything the pictures and the table show, computed once."""

    class_names: list[str]
    matches: list[ClassMatches]
    precision: np.ndarray  # (C, 101) interpolated precision
    f1: np.ndarray  # (C, len(CONFIDENCES))
    p_at: np.ndarray  # (C, len(CONFIDENCES))
    r_at: np.ndarray  # (C, len(CONFIDENCES))
    present: np.ndarray  # (C,) bool: the class has ground truth

    @property
    def mean_f1(self) -> np.ndarray:
        return self.f1[self.present].mean(0) if self.present.any() else np.zeros(len(CONFIDENCES))

    @property
    def best(self) -> int:
        """Index into :data:`CONFIDENCES` of the best mean F1 (the highest confidence of equal ones)."""
        f1 = self.mean_f1
        return int(len(f1) - 1 - np.argmax(f1[::-1]))


def val_curves(truth: Sequence[dict[str, Tensor]], found: Sequence[dict[str, Tensor]],
               class_names: Sequence[str]) -> ValCurves:  # fmt: skip
    matches = match_detections(truth, found, len(class_names))
    curves = [f1_by_confidence(m) for m in matches]
    return ValCurves(list(class_names), matches, np.stack([interpolated_precision(m) for m in matches]),
                     np.stack([c[2] for c in curves]), np.stack([c[0] for c in curves]),
                     np.stack([c[1] for c in curves]), np.array([m.objects > 0 for m in matches]))  # fmt: skip


def _class_lines(ax: Any, x: np.ndarray, ys: np.ndarray, curves: ValCurves, labels: list[str]) -> None:
    """One thin line per class with ground truth; a legend entry each for up to 20 classes."""
    named = int(curves.present.sum()) <= 20
    for k in np.flatnonzero(curves.present):
        ax.plot(x, ys[k], linewidth=1, alpha=0.8 if named else 0.4,
                label=labels[k] if named else None, color=None if named else "grey")  # fmt: skip


def _finish(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)


def plot_pr_curve(curves: ValCurves, ap50: dict[str, float | None], out_png: Path) -> None:
    fig = new_figure(9, 6)
    ax = fig.subplots()
    labels = [f"{name} {_num(ap50.get(name))}" for name in curves.class_names]
    _class_lines(ax, RECALL_POINTS, curves.precision, curves, labels)
    if curves.present.any():
        mean = curves.precision[curves.present].mean(0)
        ax.plot(RECALL_POINTS, mean, linewidth=3, color="tab:blue",
                label=f"all classes {float(mean.mean()):.3f} mAP@.5")  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no ground-truth boxes: nothing to recall", ha="center")
    _finish(ax, "Precision-recall curve (a detection is correct at IoU >= 0.5; legend: AP@.5)",
            "recall (share of the objects found)", "precision (share of the detections that are correct)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def plot_f1_curve(curves: ValCurves, out_png: Path) -> None:
    fig = new_figure(9, 6)
    ax = fig.subplots()
    _class_lines(ax, CONFIDENCES, curves.f1, curves, [str(n) for n in curves.class_names])
    if curves.present.any():
        mean, best = curves.mean_f1, curves.best
        ax.plot(CONFIDENCES, mean, linewidth=3, color="tab:blue",
                label=f"all classes: best {mean[best]:.2f} at {CONFIDENCES[best]:.3f}")  # fmt: skip
        ax.axvline(CONFIDENCES[best], color="tab:blue", linestyle=":", linewidth=1)
    _finish(ax, "F1 against the confidence threshold (detections scoring at least it; IoU >= 0.5)",
            "confidence threshold", "F1 (harmonic mean of precision and recall)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_val_report(truth: Sequence[dict[str, Tensor]], found: Sequence[dict[str, Tensor]],
                     class_names: Sequence[str], metrics: dict[str, Any], out: Path) -> tuple[ValCurves, list[Path]]:  # fmt: skip
    """Write the three pictures (module docstring) into ``out``, atomically; returns the curves and the files."""
    from cspnet.io import atomic_path

    curves = val_curves(truth, found, class_names)
    confusion = detection_confusion(truth, found, len(class_names))
    names = [*map(str, class_names), "background"]
    written = []
    for name, draw in zip(FIGURES, (lambda p: plot_pr_curve(curves, metrics.get("per_class_50", {}), p),
                                    lambda p: plot_f1_curve(curves, p),
                                    lambda p: plot_confusion_matrix(
                                        confusion, names, p, title=f"Detection confusion matrix: detections "
                                        f"scoring > {PREDICT.conf_threshold} matched\nto objects of any class at IoU "
                                        f">= {MATCH_IOU}; colour: share of the row",
                                        xlabel="predicted class (background: the object was missed)",
                                        ylabel="true class (background: a detection of no object)",
                                        shade_rows=True))):  # fmt: skip
        with atomic_path(out / name) as tmp:
            draw(tmp)
        written.append(out / name)
    return curves, written


def per_class_table(curves: ValCurves, metrics: dict[str, Any]) -> list[str]:
    """The table ``detect val`` prints: one row per class and one for all, aligned."""
    from cspnet.reports.tables import aligned_table

    best = curves.best
    useful = curves.present.any() and curves.mean_f1[best] > 0  # else no threshold finds anything: no P and R

    def at(values: np.ndarray, k: int | None) -> str:
        if not useful or (k is not None and not curves.present[k]):
            return "n/a"
        return _num(float(values[curves.present, best].mean() if k is None else values[k, best]))

    rows = [["all", str(sum(m.objects for m in curves.matches)), _num(metrics.get("map50")), _num(metrics.get("map")),
             at(curves.p_at, None), at(curves.r_at, None)]]  # fmt: skip
    for k, name in enumerate(curves.class_names):
        rows.append([str(name), str(curves.matches[k].objects), _num(metrics.get("per_class_50", {}).get(name)),
                     _num(metrics.get("per_class", {}).get(name)), at(curves.p_at, k), at(curves.r_at, k)])  # fmt: skip
    where = f"@{CONFIDENCES[best]:.3f}" if useful else ""
    header = ["class", "objects", "AP@.5", "AP@[.5:.95]", f"P{where}", f"R{where}"]
    return aligned_table(header, rows)
