"""``fit_detector``: one detection run from a :class:`DetectionTrainConfig`, in the classifier's named steps.

The trainer, the distributed layout, Ctrl-C handling, atomic checkpoints and ``history.csv`` are
the classification job's (:mod:`cspnet.training.runner`); what differs is the data, the module, the
monitored metric (``map``) and the reports (COCO metrics, a detection learning-curve figure).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from cspnet.detection.training.config import DETECTION_RESUME_MAY_CHANGE, DetectionTrainConfig
from cspnet.training.history import History
from cspnet.training.runner import (
    FitResult,
    RunCallbacks,
    _quiet_lightning,
    _rounded,
    prepare_run_folder,
    run_settings,
)

log = logging.getLogger(__name__)


class DetectionHistory(History):
    """``history.csv`` with the detection columns: validation loss, mAP, mAP@.5, mAP@.75, AR@100."""

    VAL_METRICS = ("loss", "map", "map50", "map75", "mar100")

    def summary(self, row: dict[str, Any], max_epochs: int | None) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        return (f"epoch {row['epoch']}/{max_epochs}: train loss {fmt(row['train_loss'], '.4f')}  val loss "
                f"{fmt(row['val_loss'], '.4f')}  mAP {fmt(row['val_map'], '.4f')}  mAP@.5 {fmt(row['val_map50'], '.4f')}"
                f"  ({row['elapsed_s']:.0f}s)")  # fmt: skip


@dataclasses.dataclass
class DetectionPlan:
    config: DetectionTrainConfig
    output: Path
    resume_from: Path | None


def plan_detection_run(config: DetectionTrainConfig, given: Collection[str] | None = None) -> DetectionPlan:
    """Validate ``config`` and the run folder; on ``resume``, the settings come from the checkpoint."""
    from cspnet import get_model_entry

    config = run_settings(config, given, "detection", "cspnet detect train", DETECTION_RESUME_MAY_CHANGE)
    out = Path(config.output)
    entry = get_model_entry(config.model)
    if entry.task != "detection":
        raise ValueError(f"--model {config.model} is not a detector; choose one of "
                         f"`cspnet models --task detection` (default {DetectionTrainConfig().model})")  # fmt: skip
    cfg = config.resolved(entry.input_size[-1])
    prepare_run_folder(out)
    return DetectionPlan(cfg, out, out / "last.ckpt" if cfg.resume else None)


def detection_metrics(cfg: DetectionTrainConfig, module: Any, run: RunCallbacks, world: int, session_s: float
                      ) -> dict[str, Any]:  # fmt: skip
    """``metrics.json``: the last validation's COCO metrics (fractions in [0, 1]; ``null``, never NaN)."""
    coco = module.coco
    last = run.checkpoints.last_metrics
    return {
        "model": cfg.model,
        **{name: coco.get(name) for name in ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                                             "mar1", "mar10", "mar100")},  # fmt: skip
        "per_class_ap": coco.get("per_class", {}),
        "val_images": coco.get("images"),  # every process's share, gathered
        "loss": _rounded(last.get("loss"), 6),
        "best_map": _rounded(run.checkpoints.best, 6),
        "epochs": cfg.epochs,
        "train_time_s": round(run.history.elapsed(), 1),
        "this_session_s": round(session_s, 1),
        "world_size": world,
    }


def plot_detection_history(history_csv: Path, out_png: Path) -> None:
    """Loss and mAP / mAP@.5 per epoch, side by side (Agg canvas, no pyplot)."""
    from matplotlib.figure import Figure

    from cspnet.training.history import read_history

    rows = read_history(history_csv)
    if not rows:
        return

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_map = fig.subplots(1, 2)
    ax_loss.plot(epochs, column("train_loss"), marker="o", label="train (last batch)")
    ax_loss.plot(epochs, column("val_loss"), marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="YOLOv3 loss", title="loss")
    ax_loss.legend()
    ax_map.plot(epochs, column("val_map"), marker="o", label="mAP@[.5:.95]")
    ax_map.plot(epochs, column("val_map50"), marker="o", label="mAP@.5")
    ax_map.set(xlabel="epoch", ylabel="COCO AP (fraction)", title="validation mAP", ylim=(0, 1))
    ax_map.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def fit_detector(config: DetectionTrainConfig, callbacks: Sequence[Any] = (), verbose: bool = True,
                 given: Collection[str] | None = None) -> FitResult:  # fmt: skip
    """Train ``config.model`` on ``config.data``; everything lands in ``config.output``.

    Returns (and writes to ``metrics.json``) the final validation's COCO metrics: ``map``
    (mAP@[.5:.95]), ``map50``, ``map75``, ``mar100``, ``per_class_ap`` as fractions, ``loss``,
    ``best_map``, ``train_time_s``. Resume, Ctrl-C and ``given`` behave as in :func:`cspnet.training.fit`.
    """
    with _quiet_lightning():
        return _fit(config, callbacks, verbose, given)


def _fit(config: DetectionTrainConfig, callbacks: Sequence[Any], verbose: bool, given: Collection[str] | None) -> FitResult:
    import lightning as L

    from cspnet.detection.training.datamodule import DetectionDataModule, load_detection_datasets
    from cspnet.detection.training.module import DetectorModule
    from cspnet.training.callbacks import RunCheckpoints
    from cspnet.training.datamodule import steps_per_epoch
    from cspnet.training.files import atomic_write_bytes
    from cspnet.training.runner import build_trainer, distributed_layout, run_training

    plan = plan_detection_run(config, given)
    cfg, out = plan.config, plan.output
    assert cfg.img_size is not None
    layout = distributed_layout(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = load_detection_datasets(cfg)
    classes = list(train_set.classes)
    steps = steps_per_epoch(len(train_set), cfg.batch_size, layout.world)
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    module = DetectorModule(cfg.model, dict(cfg.model_overrides), len(classes), classes, cfg.img_size, cfg.to_dict(), steps)
    if cfg.pretrained and not plan.resume_from:
        module.load_pretrained(cfg.pretrained)
    data = DetectionDataModule(cfg, train_set, val_set)
    run = RunCallbacks(DetectionHistory(out / "history.csv", verbose=verbose),
                       RunCheckpoints(out, cfg.checkpoint_every, monitor="map"))  # fmt: skip
    trainer, run = build_trainer(cfg, out, layout, callbacks, verbose, run=run)
    if trainer.is_global_zero:
        cfg.write(out)
    started = time.perf_counter()
    run_training(trainer, module, data, plan.resume_from)
    metrics = detection_metrics(cfg, module, run, layout.world, time.perf_counter() - started)
    if trainer.is_global_zero:
        atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode())
        plot_detection_history(out / "history.csv", out / "learning_curves.png")
    return FitResult(metrics, out)
