"""Anchors fitted to a data set's boxes, as darknet's ``calc_anchors`` and YOLOv5's AutoAnchor do (the ideas).

Every measure here is the one the loss assigns anchors by: the *shape IoU* of a box and an anchor
centred on each other (:func:`cspnet.detection.loss.shape_iou`).

* **Quality** of a set of anchors for some boxes (:func:`anchor_quality`): the *best possible recall*
  (BPR), the share of boxes whose best anchor has a shape IoU of at least :data:`RECALL_IOU` (0.25: a
  box of the anchor's aspect at most twice or half its side), and the mean of every box's best shape
  IoU (darknet's "avg IoU").
* **Fitting** (:func:`fit_anchors`): k-means of the boxes' sizes with the distance ``1 - shape IoU``
  (k-means++ seeding, then Lloyd iterations with the cluster medians: a few huge boxes do not drag a
  centre), then a genetic refinement: for ``generations`` rounds every anchor side is multiplied by a
  random factor around 1 and the mutant is kept when the mean best IoU rises. Every draw comes from a
  ``torch.Generator`` seeded with ``seed``: the same boxes give the same anchors on every machine.
* The fitted anchors replace the model's only when they raise the mean best IoU by at least
  :data:`MIN_IOU_GAIN` without recalling fewer boxes (:meth:`AnchorFit.better`); they are sorted by
  area and split evenly over the scales, smallest on the finest (:meth:`AnchorFit.grid`), as the
  detectors hold them.

Why the mean IoU and not the BPR decides: on the real-photo set of ``benchmarks/real_photos.py`` at
128 px the small detector's stock anchors already recall every box (BPR 1.0, at shape IoU 0.25 and
0.5 alike), yet fitted ones raise the mean best IoU from 0.70 to 0.88 and mAP@.5 after 15 epochs from
0.47 to 0.60 (``docs/detection.md``, "The recipe for your data"). A BPR threshold would not have fitted them.

>>> wh = torch.tensor([[10.0, 10.0]] * 50 + [[40.0, 20.0]] * 50)
>>> fit = fit_anchors(wh, stock=((80.0, 80.0), (90.0, 90.0)), seed=0)
>>> fit.before.bpr, fit.after.bpr, fit.anchors
(0.0, 1.0, ((10.0, 10.0), (40.0, 20.0)))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cspnet.detection.loss import shape_iou

RECALL_IOU = 0.25
"""A box counts as recallable when some anchor's shape IoU with it reaches this."""
MIN_IOU_GAIN = 0.02
"""Fitted anchors replace the model's when they raise the mean best shape IoU by at least this."""
MAX_FIT_BOXES = 20_000
"""The most boxes fitted on (a seeded sample of larger sets: the fit does not need more)."""


@dataclass(frozen=True)
class AnchorQuality:
    """How well anchors fit boxes: best possible recall and mean best shape IoU, both in [0, 1]."""

    bpr: float
    mean_iou: float

    def __str__(self) -> str:
        return f"best possible recall {self.bpr:.3f}, mean best IoU {self.mean_iou:.3f}"


@dataclass(frozen=True)
class AnchorFit:
    """The result of :func:`fit_anchors`: the anchors (``(w, h)`` in input pixels, by area) and their
    quality before (the stock anchors) and after; ``boxes``: how many boxes they were fitted on."""

    anchors: tuple[tuple[float, float], ...]
    before: AnchorQuality
    after: AnchorQuality
    boxes: int

    @property
    def better(self) -> bool:
        """Whether the fitted anchors are worth using: mean best IoU up by :data:`MIN_IOU_GAIN`, BPR not down."""
        return self.after.mean_iou >= self.before.mean_iou + MIN_IOU_GAIN and self.after.bpr >= self.before.bpr

    def grid(self, scales: int) -> Tensor:
        """The anchors as a detector holds them: ``(scales, A, 2)``, smallest on the finest scale."""
        return torch.tensor(self.anchors, dtype=torch.float32).reshape(scales, -1, 2)


def anchor_quality(wh: Tensor, anchors: Tensor) -> AnchorQuality:
    """BPR and mean best shape IoU of ``anchors`` ``(K, 2)`` for box sizes ``wh`` ``(N, 2)``.

    >>> anchor_quality(torch.tensor([[4.0, 4.0], [20.0, 20.0]]), torch.tensor([[4.0, 4.0]]))
    AnchorQuality(bpr=0.5, mean_iou=0.52)
    """
    if len(wh) == 0:
        return AnchorQuality(1.0, 1.0)
    best = _best_iou(wh, anchors)
    return AnchorQuality(round(float((best >= RECALL_IOU).float().mean()), 6), round(float(best.mean()), 6))


def fit_anchors(wh: Tensor, stock: tuple[tuple[float, float], ...], seed: int = 0,
                generations: int = 1000) -> AnchorFit:  # fmt: skip
    """Fit ``len(stock)`` anchors to box sizes ``wh`` ``(N, 2)`` (see the module docstring).

    The stock anchors are returned (``after == before``) when the fit is not :attr:`~AnchorFit.better`
    (fewer distinct boxes than anchors, or boxes they already fit). Raises ``ValueError`` when there
    are no boxes.
    """
    wh = wh.detach().float().reshape(-1, 2).clamp(min=1e-3)
    if len(wh) == 0:
        raise ValueError("no boxes to fit anchors to")
    generator = torch.Generator().manual_seed(seed)
    if len(wh) > MAX_FIT_BOXES:
        wh = wh[torch.randperm(len(wh), generator=generator)[:MAX_FIT_BOXES]]
    stock_tensor = torch.tensor(stock, dtype=torch.float32).reshape(-1, 2)
    before = anchor_quality(wh, stock_tensor)
    k = len(stock_tensor)
    if len(torch.unique(wh, dim=0)) < k:  # too few distinct boxes to place k anchors
        return AnchorFit(_by_area(stock_tensor), before, before, len(wh))
    anchors = _refine(wh, _kmeans(wh, k, generator), generations, generator)
    fit = AnchorFit(_by_area(anchors), before, anchor_quality(wh, anchors), len(wh))
    return fit if fit.better else AnchorFit(_by_area(stock_tensor), before, before, len(wh))


# -- the fit ---------------------------------------------------------------------------------------
def _best_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    return shape_iou(wh, anchors).amax(1)


def _by_area(anchors: Tensor) -> tuple[tuple[float, float], ...]:
    order = torch.argsort(anchors.prod(1), stable=True)
    return tuple((round(float(w), 2), round(float(h), 2)) for w, h in anchors[order].tolist())


def _kmeans(wh: Tensor, k: int, generator: torch.Generator, iterations: int = 300) -> Tensor:
    """k-means with the distance ``1 - shape IoU``: k-means++ seeding, median updates."""
    centres = wh[torch.randint(len(wh), (1,), generator=generator)]
    while len(centres) < k:  # k-means++: the next centre drawn in proportion to its squared distance
        distance = (1 - shape_iou(wh, centres).amax(1)).pow(2)
        if float(distance.sum()) <= 0:
            break
        centres = torch.cat([centres, wh[torch.multinomial(distance, 1, generator=generator)]])
    assigned = torch.full((len(wh),), -1, dtype=torch.long)
    for _ in range(iterations):
        nearest = shape_iou(wh, centres).argmax(1)
        if torch.equal(nearest, assigned):
            break
        assigned = nearest
        centres = torch.stack([wh[assigned == c].median(0).values if bool((assigned == c).any()) else centres[c]
                               for c in range(len(centres))])  # fmt: skip
    return centres


def _refine(wh: Tensor, anchors: Tensor, generations: int, generator: torch.Generator,
            probability: float = 0.9, sigma: float = 0.1) -> Tensor:  # fmt: skip
    """Mutate the anchors ``generations`` times, keeping a mutant that raises the mean best IoU."""
    best, fitness = anchors, float(_best_iou(wh, anchors).mean())
    for _ in range(generations):
        mutate = torch.rand(best.shape, generator=generator) < probability
        factor = 1 + sigma * torch.randn(best.shape, generator=generator) * mutate
        candidate = best * factor.clamp(0.3, 3.0)
        score = float(_best_iou(wh, candidate).mean())
        if score > fitness:
            best, fitness = candidate, score
    return best


def training_box_sizes(dataset: object) -> Tensor:
    """``(N, 2)`` widths and heights, in input pixels, of every box of a detection training set.

    Read from the records and their letterboxes for :class:`~cspnet.detection.data.DetectionImages`
    (no image is decoded), item by item for any other set (the embedded digits: tensors in memory).
    """
    from cspnet.detection.data import DetectionImages

    if isinstance(dataset, DetectionImages):
        sizes = []
        for i, record in enumerate(dataset.records):
            lb = dataset.letterbox(i)
            side = record.boxes[:, 2:] - record.boxes[:, :2]
            sizes.append(side * torch.tensor([lb.scale_x, lb.scale_y]))
        return torch.cat(sizes) if sizes else torch.zeros(0, 2)
    rows = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[index, arg-type]
    if not rows:
        return torch.zeros(0, 2)
    boxes = torch.cat(rows)[:, 1:5]
    return boxes[:, 2:] - boxes[:, :2]
