"""The small interface a task implements to run on the one training pipeline (:mod:`cspnet.training.runner`).

Everything a run does is the pipeline's: settings and resume, the run folder and its lock, the
processes, the seeded resumable data order, the optimizer, schedule and EMA, checkpoints, history,
non-finite-loss and signal handling, ``metrics.json``. A task supplies only what differs:

* its config class (:class:`~cspnet.training.config.RunConfig` subclass) and its data sets;
* how a batch is collated, and its LightningModule (a :class:`~cspnet.training.resumable.ResumableModule`);
* its validation metrics: the one ``best.ckpt`` follows (``monitor``), the ``history.csv``
  columns, the line printed after each epoch, and its part of ``metrics.json``;
* the parts of its training loss (``history.csv`` columns ``train_<part>_loss``: the epoch's mean);
* the panels of its learning-curves figures (``learning_curves.png``, and more in :attr:`Task.figures`).

Adding a task is writing one :class:`Task` subclass and registering it in :data:`TASKS`
(``docs/adding-a-family.md``, "Adding a task").

>>> get_task("detection").monitor, get_task("classification").val_metrics
('map', ('loss', 'top1', 'top5'))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cspnet.training.config import RunConfig, TrainConfig


@dataclass(frozen=True)
class Panel:
    """One panel of the learning-curves figure: ``(history column, legend label)`` pairs on one axis."""

    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    ylim: tuple[float, float] | None = None


class Task:
    """What a task supplies to the pipeline (see the module docstring). Subclasses set the class
    attributes and implement the methods; each method imports what it needs, so that reading a task's
    config does not load torch."""

    name: ClassVar[str]
    monitor: ClassVar[str]  # the val/<metric> best.ckpt keeps the highest of
    digits: ClassVar[int]  # decimals its metrics are reported with in metrics.json
    val_metrics: ClassVar[tuple[str, ...]]  # logged as val/<name>; history.csv columns val_<name>
    loss_parts: ClassVar[tuple[str, ...]] = ()  # logged as train/<part>_loss; history.csv: their epoch means
    panels: ClassVar[tuple[Panel, ...]]

    @property
    def figures(self) -> dict[str, tuple[Panel, ...]]:
        """The learning-curves figures a run writes (file name -> panels), all drawn by
        :func:`~cspnet.training.plots.plot_history` from ``history.csv``."""
        return {"learning_curves.png": self.panels}

    @property
    def config_class(self) -> type[RunConfig]:
        raise NotImplementedError

    def load_datasets(self, cfg: Any) -> tuple[Any, Any]:
        """``(train, val)`` data sets of a resolved config; both have ``.classes``."""
        raise NotImplementedError

    def collate(self) -> Callable[[Sequence[Any]], Any] | None:
        """The DataLoader ``collate_fn`` of a batch (``None``: PyTorch's default)."""
        return None

    def normalization(self, cfg: Any) -> tuple[list[float], list[float]]:
        """``(mean, std)`` the model's inputs are normalised with, per channel (pixels in [0, 1])."""
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]

    def module_class(self) -> type[Any]:
        """The task's LightningModule, a :class:`~cspnet.training.resumable.ResumableModule`."""
        raise NotImplementedError

    def epoch_summary(self, row: dict[str, Any], max_epochs: int | None) -> str:
        """The line printed after each epoch (``row``: the ``history.csv`` row)."""
        raise NotImplementedError

    def final_metrics(self, module: Any, last: dict[str, float]) -> dict[str, Any]:
        """The task's part of ``metrics.json`` from the last validation (``last``: ``val/*`` without the prefix)."""
        raise NotImplementedError

    def result_line(self, metrics: dict[str, Any]) -> str:
        """The line the CLI prints when a run ends."""
        raise NotImplementedError


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


class ClassificationTask(Task):
    name = "classification"
    monitor = "top1"
    digits = 4  # percent
    val_metrics = ("loss", "top1", "top5")
    panels = (
        Panel("loss", "cross-entropy", (("train_loss", "train (last batch)"), ("val_loss", "validation"))),
        Panel("validation accuracy", "accuracy (%)", (("val_top1", "top-1"), ("val_top5", "top-5"))),
    )

    @property
    def config_class(self) -> type[RunConfig]:
        return TrainConfig

    def load_datasets(self, cfg: Any) -> tuple[Any, Any]:
        from cspnet.data import load_digits_split, load_folder_split

        crop_pct = cfg.crop_pct if cfg.crop_pct is not None else 1.0  # resolved configs always have one
        if cfg.is_digits:
            return load_digits_split(cfg.side, crop_pct=crop_pct)
        return load_folder_split(cfg.data, cfg.side, cfg.val_fraction, seed=0, crop_pct=crop_pct)

    def normalization(self, cfg: Any) -> tuple[list[float], list[float]]:
        from cspnet.data.digits import DIGITS_MEAN, DIGITS_STD
        from cspnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        mean, std = (DIGITS_MEAN, DIGITS_STD) if cfg.is_digits else (IMAGENET_MEAN, IMAGENET_STD)
        return list(mean), list(std)

    def module_class(self) -> type[Any]:
        from cspnet.training.module import ClassifierModule

        return ClassifierModule

    def epoch_summary(self, row: dict[str, Any], max_epochs: int | None) -> str:
        return (f"epoch {row['epoch']}/{max_epochs}: train loss {_fmt(row['train_loss'], '.4f')}  "
                f"val loss {_fmt(row['val_loss'], '.4f')}  top1 {_fmt(row['val_top1'], '.2f')}%  "
                f"top5 {_fmt(row['val_top5'], '.2f')}%  ({row['elapsed_s']:.0f}s)")  # fmt: skip

    def final_metrics(self, module: Any, last: dict[str, float]) -> dict[str, Any]:
        return {"top1": _rounded(last.get("top1"), self.digits), "top5": _rounded(last.get("top5"), self.digits)}

    def result_line(self, metrics: dict[str, Any]) -> str:
        loss = _fmt(metrics["loss"], ".4f")
        return (f"{metrics['model']}: top-1 {_fmt(metrics['top1'], '.2f')}%  top-5 {_fmt(metrics['top5'], '.2f')}%  "
                f"loss {loss}  ({metrics['train_time_s']:.0f}s)")  # fmt: skip


COCO_METRICS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar1", "mar10", "mar100")


class DetectionTask(Task):
    name = "detection"
    monitor = "map"
    digits = 6  # fractions
    val_metrics = ("loss", "map", "map50", "map75", "mar100")
    panels = (
        Panel("loss", "YOLOv3 loss", (("train_loss", "train (last batch)"), ("val_loss", "validation"))),
        Panel("validation mAP", "COCO AP (fraction)", (("val_map", "mAP@[.5:.95]"), ("val_map50", "mAP@.5")), (0, 1)),
    )
    loss_parts = ("box", "obj", "cls")
    results_panels = (
        Panel("training box loss", "mean per step over the epoch", (("train_box_loss", "box"),)),
        Panel("training objectness loss", "mean per step over the epoch", (("train_obj_loss", "objectness"),)),
        Panel("training class loss", "mean per step over the epoch", (("train_cls_loss", "class"),)),
        Panel("loss (box + objectness + class)", "YOLOv3 loss", (("train_loss", "train (last batch)"),
                                                                  ("val_loss", "validation"))),  # fmt: skip
        Panel("validation accuracy", "fraction (COCO)", (("val_map", "mAP@[.5:.95]"), ("val_map50", "mAP@.5"),
                                                         ("val_mar100", "recall AR@100")), (0, 1)),  # fmt: skip
    )

    @property
    def figures(self) -> dict[str, tuple[Panel, ...]]:
        return {**super().figures, "results.png": self.results_panels}

    @property
    def config_class(self) -> type[RunConfig]:
        from cspnet.training.detection_config import DetectionTrainConfig

        return DetectionTrainConfig

    def load_datasets(self, cfg: Any) -> tuple[Any, Any]:
        from cspnet.detection.data import (
            DetectionImages,
            digits_detection_split,
            read_detection_source,
            read_yolo,
        )
        from cspnet.detection.data.readers import require_boxes
        from cspnet.detection.data.split import hold_out

        if cfg.is_digits:
            return digits_detection_split(cfg.side)
        train = read_detection_source(cfg.data, "train", cfg.images)
        if cfg.val_data is not None:
            val = read_detection_source(cfg.val_data, "val", cfg.val_images)
        elif cfg.data.lower().endswith((".yaml", ".yml")) and _yaml_has_split(cfg.data, "val"):
            val = read_yolo(cfg.data, "val")
        else:
            train, val = hold_out(train, cfg.val_fraction)
            require_boxes(train)  # the share left to train on may have lost every box
        train_set = DetectionImages(train, cfg.side)
        return train_set, DetectionImages(val, cfg.side, classes=train_set.classes)

    def collate(self) -> Callable[[Sequence[Any]], Any] | None:
        from cspnet.detection.data import collate_detection

        return collate_detection

    def module_class(self) -> type[Any]:
        from cspnet.training.detection_module import DetectorModule

        return DetectorModule

    def epoch_summary(self, row: dict[str, Any], max_epochs: int | None) -> str:
        return (f"epoch {row['epoch']}/{max_epochs}: train loss {_fmt(row['train_loss'], '.4f')}  val loss "
                f"{_fmt(row['val_loss'], '.4f')}  mAP {_fmt(row['val_map'], '.4f')}  mAP@.5 {_fmt(row['val_map50'], '.4f')}"
                f"  ({row['elapsed_s']:.0f}s)")  # fmt: skip

    def final_metrics(self, module: Any, last: dict[str, float]) -> dict[str, Any]:
        coco = module.coco  # the last validation's full COCO metrics, gathered from every process
        return {**{name: coco.get(name) for name in COCO_METRICS}, "per_class_ap": coco.get("per_class", {}),
                "per_class_ap50": coco.get("per_class_50", {}), "val_images": coco.get("images")}  # fmt: skip

    def result_line(self, metrics: dict[str, Any]) -> str:
        return (f"{metrics['model']}: mAP {_fmt(metrics['map'], '.4f')}  mAP@.5 {_fmt(metrics['map50'], '.4f')}  "
                f"mAP@.75 {_fmt(metrics['map75'], '.4f')}  ({metrics['train_time_s']:.0f}s)")  # fmt: skip


def _yaml_has_split(path: str, split: str) -> bool:
    from cspnet.detection.data.readers import load_data_yaml

    return load_data_yaml(path).get(split) is not None


def _rounded(value: float | None, digits: int) -> float | None:
    """JSON has no NaN: a missing or non-finite metric is ``null``."""
    import math

    return round(value, digits) if value is not None and math.isfinite(value) else None


TASKS: dict[str, Task] = {task.name: task for task in (ClassificationTask(), DetectionTask())}
"""Every task the pipeline runs, by name (the ``task`` of a model's registry entry and of a checkpoint)."""


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}") from None
