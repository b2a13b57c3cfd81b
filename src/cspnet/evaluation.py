"""Evaluation as a library function: ``evaluate(model, data)`` for every task, and the data a run is evaluated on.

The commands (``cspnet eval``, ``cspnet detect val``) are thin wrappers around these.

* :func:`evaluation_set` is the data: what the user names, or (``data=None``) the held-out split of
  the data the checkpoint was trained on, exactly as training held it out.
* :func:`evaluate` runs every decodable image through the model and returns the task's metrics:
  top-1, top-5, loss and the confusion matrix of a classifier; COCO's mAP family of a detector.
  Images that cannot be decoded are left out and counted, never replaced.

>>> import torch
>>> from cspnet.data import load_digits_split
>>> from cspnet.inference import load_model
>>> model = load_model("cspdensenet_bc40", num_classes=10, img_size=16)
>>> result = evaluate(model, load_digits_split(16)[1], batch_size=128)
>>> result.images, result.skipped, 0 <= result.top1 <= 100
(359, 0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cspnet.ops.thresholds import EVALUATE


# -- the data ----------------------------------------------------------------------------------------
def evaluation_set(task: str, train_config: dict[str, Any], img_size: int, class_names: Sequence[str],
                   data: str | None = None, images: str | None = None, crop_pct: float = 1.0) -> Any:  # fmt: skip
    """The images to evaluate a ``task`` model on: ``data`` as given (with its ``images`` folder for COCO),
    or, with ``data=None``, the held-out split of the run's own data (``train_config``: the run's settings).

    Raises ``ValueError`` / ``FileNotFoundError`` with one line when the data does not fit the model.
    """
    if task == "detection":
        return _detection_set(train_config, img_size, class_names, data, images)
    return _classification_set(train_config, img_size, class_names, data, crop_pct)


def _classification_set(config: dict[str, Any], size: int, class_names: Sequence[str], data: str | None,
                        crop_pct: float) -> Any:  # fmt: skip
    from cspnet.data import ImageFolder, load_digits_split, load_folder_split

    own_split = data is None
    data = str(config.get("data") or "digits") if data is None else data
    if data == "digits":
        if len(class_names) != 10:
            raise ValueError(f"the checkpoint has {len(class_names)} classes, the digits 10: pass --data FOLDER")
        return load_digits_split(size, crop_pct=crop_pct)[1]
    root = Path(data)
    if own_split:
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root} (the run's data; pass --data to evaluate elsewhere)")
        if (root / "train").is_dir() and (root / "val").is_dir():  # no need to scan the training images
            return ImageFolder(root / "val", size, classes=list(class_names), crop_pct=crop_pct)
        val = load_folder_split(root, size, float(config.get("val_fraction", 0.2)), seed=0, crop_pct=crop_pct)[1]
        if list(getattr(val, "classes", class_names)) != list(class_names):
            raise ValueError(f"{root} no longer has the run's classes ({', '.join(class_names[:5])}...): pass --data")
        return val
    folder = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(folder, size, classes=list(class_names), crop_pct=crop_pct)


def _detection_set(config: dict[str, Any], size: int, class_names: Sequence[str], data: str | None,
                   images: str | None) -> Any:  # fmt: skip
    from cspnet.detection.data import DetectionImages, digits_detection_split, read_detection_source
    from cspnet.training.detection_config import DetectionTrainConfig
    from cspnet.training.tasks import get_task

    if data is None:  # the run's own validation split, exactly as training held it out
        cfg = DetectionTrainConfig.from_dict({**config, "img_size": size})
        if not cfg.is_digits and not Path(cfg.data).exists():
            raise FileNotFoundError(f"data not found: {cfg.data} (the run's data; pass --data to evaluate elsewhere)")
        val = get_task("detection").load_datasets(cfg)[1]
    elif data == "digits":
        val = digits_detection_split(size)[1]
    else:
        val = DetectionImages(read_detection_source(data, "val", images), size, classes=list(class_names))
    found = list(val.classes)
    if found != list(class_names):
        raise ValueError(f"the data's classes ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}) are not the "
                         f"checkpoint's ({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")  # fmt: skip
    return val


# -- running it --------------------------------------------------------------------------------------
class _Decodable:
    """Items of ``dataset`` with ``None`` for an image that cannot be decoded (no substitution)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.load = getattr(dataset, "load", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.load(i)


def _batches(dataset: Any, batch_size: int, workers: int, collate: Any) -> Any:
    from torch.utils.data import DataLoader

    from cspnet.progress import progress

    decodable: Any = _Decodable(dataset)  # a map-style dataset (DataLoader needs only len and getitem)
    loader = DataLoader(decodable, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return progress(loader, total=len(loader), desc="evaluating", unit="batch")  # a bar on a terminal only


@dataclass
class ClassificationResult:
    """Counts of a classifier's evaluation; ``top1``/``top5`` in percent, ``loss`` the mean cross-entropy."""

    confusion: Tensor
    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    images: int = 0
    skipped: int = 0

    def add(self, logits: Tensor, targets: Tensor, k: int) -> None:
        import torch.nn.functional as F

        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        best = logits.topk(k, dim=1).indices
        self.correct1 += int((best[:, 0] == targets).sum())
        self.correct5 += int((best == targets[:, None]).any(1).sum())
        self.images += len(targets)
        self.confusion.index_put_((targets, best[:, 0]), torch.ones_like(targets), accumulate=True)

    @property
    def top1(self) -> float:
        return 100 * self.correct1 / max(1, self.images)

    @property
    def top5(self) -> float:
        return 100 * self.correct5 / max(1, self.images)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.images)


def _collate_labels(items: list[Any]) -> tuple[Tensor, Tensor, int]:
    """A batch of the decodable ``(image, label)`` items and how many were not."""
    kept = [item for item in items if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(items)
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), len(items) - len(kept)


def evaluate_classifier(model: Any, dataset: Any, batch_size: int = 128, workers: int = 0) -> ClassificationResult:
    """Every decodable image of ``dataset`` through ``model`` (an :class:`~cspnet.inference.InferenceModel`,
    any engine); undecodable ones are counted in ``skipped``, not used."""
    num_classes = len(model.info.class_names)
    result = ClassificationResult(torch.zeros(num_classes, num_classes, dtype=torch.long))
    with torch.inference_mode():
        for images, targets, dropped in _batches(dataset, batch_size, workers, _collate_labels):
            result.skipped += dropped
            if len(targets):
                logits = model.logits(model.preprocess(images))
                if logits.shape[1] != num_classes:
                    raise ValueError(f"the model gives {logits.shape[1]} outputs for {num_classes} class names")
                result.add(logits, targets, min(5, num_classes))
    return result


@dataclass
class DetectionResult:
    """A detector's evaluation: COCO's metrics as fractions (``None`` where COCO leaves one undefined)."""

    metrics: dict[str, Any]
    images: int
    skipped: int = 0
    truth: list[dict[str, Tensor]] = field(default_factory=list, repr=False)
    found: list[dict[str, Tensor]] = field(default_factory=list, repr=False)


def _collate_boxes(items: list[Any]) -> tuple[Tensor, Tensor, int]:
    from cspnet.detection.data import collate_detection

    kept = [item for item in items if item is not None]
    if not kept:
        return torch.empty(0, dtype=torch.uint8), torch.zeros(0, 6), len(items)
    images, targets = collate_detection(kept)
    return images, targets, len(items) - len(kept)


def evaluate_detector(model: Any, dataset: Any, class_names: Sequence[str] | None = None,
                      conf: float = EVALUATE.conf_threshold, iou: float = EVALUATE.iou_threshold,
                      max_detections: int = EVALUATE.max_detections, batch_size: int = 32, workers: int = 0,
                      classes: Sequence[int] | None = None, on_batch: Any = None,
                      augment: bool = False) -> DetectionResult:  # fmt: skip
    """Every decodable image of ``dataset`` (letterboxed uint8 images with their boxes) through ``model``,
    scored by COCO's own evaluation with the post-processing and thresholds of training's validation.

    ``model`` is a :class:`~cspnet.inference.DetectionModel` on any engine (an exported file
    included), or a PyTorch :class:`~cspnet.models.detectors.Detector` taking pixels in [0, 1] (run on
    the torch engine). ``class_names`` default to the model's. ``classes``: score only these class
    ids (their boxes in the data and in the predictions; mAP over them). ``on_batch(images, found,
    first_index)``: called after each batch with its letterboxed images, its post-processed
    detections (input pixels) and the dataset index of its first item (e.g. to save them).
    ``augment``: test-time augmentation (:mod:`cspnet.detection.tta`).
    """
    from cspnet.detection.metrics import coco_metrics
    from cspnet.inference.detection import DetectionModel
    from cspnet.training.detection_module import split_targets

    runner = model if isinstance(model, DetectionModel) else DetectionModel.from_detector(model, img_size=_side(dataset))
    names = list(class_names if class_names is not None else runner.info.class_names)
    limits = EVALUATE.replace(conf_threshold=conf, iou_threshold=iou, max_detections=max_detections)
    runner.thresholds(conf, iou, max_detections)  # a file with NMS inside says here if it cannot honour them
    truth: list[dict[str, Tensor]] = []
    found: list[dict[str, Tensor]] = []
    skipped = seen = 0
    with torch.inference_mode():
        for images, targets, dropped in _batches(dataset, batch_size, workers, _collate_boxes):
            skipped += dropped
            if len(images):
                batch_found = runner.detect_letterboxed(images, limits, classes, augment)
                if on_batch is not None:
                    on_batch(images, batch_found, seen)
                found += batch_found
                truth += _only(split_targets(targets, images.shape[0]), classes)
            seen += len(images) + dropped
    # COCO averages over the classes with true boxes: with `classes`, those classes only.
    return DetectionResult(coco_metrics(truth, found, names), len(truth), skipped, truth, found)


def _side(dataset: Any) -> int:
    """The input side of a detection data set's letterboxed images."""
    size = getattr(dataset, "size", None)
    return int(size) if isinstance(size, int) else int(dataset[0][0].shape[-1])


def _only(truth: list[dict[str, Tensor]], classes: Sequence[int] | None) -> list[dict[str, Tensor]]:
    """Each image's true boxes of ``classes`` only (all for ``None``)."""
    if classes is None:
        return truth
    wanted = torch.tensor(list(classes))
    kept = []
    for t in truth:
        mask = torch.isin(t["labels"], wanted)
        kept.append({"boxes": t["boxes"][mask], "labels": t["labels"][mask]})
    return kept


def evaluate(model: Any, dataset: Any, **options: Any) -> ClassificationResult | DetectionResult:
    """Evaluate ``model`` on ``dataset`` for its task: a classifier (an
    :class:`~cspnet.inference.InferenceModel`) with :func:`evaluate_classifier`, a detector (a
    :class:`~cspnet.inference.DetectionModel` on any engine, or a PyTorch detector, whose
    ``class_names`` option names its classes) with :func:`evaluate_detector`."""
    if hasattr(model, "decode") or getattr(getattr(model, "info", None), "task", None) == "detection":
        return evaluate_detector(model, dataset, **options)
    return evaluate_classifier(model, dataset, **options)
