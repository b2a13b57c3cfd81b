"""``fit``: one training run from a :class:`TrainConfig`, in named steps.

1. :func:`plan_run` validates the settings, checks the run folder (writable, a run to resume or an
   empty one) and, on ``resume``, restores the run's own settings from its checkpoint.
2. :func:`distributed_layout` reads how many processes and machines take part (torchrun or flags).
3. :func:`build_trainer` makes the Lightning trainer with the run's callbacks.
4. :func:`run_training` runs it, with Ctrl-C made resumable and known notices filtered.
5. :func:`final_metrics` and :func:`write_reports` produce ``metrics.json`` and the learning curves.

``load_trained`` (a model back from a checkpoint) lives in :mod:`cspnet.trained`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from cspnet.training.config import RESUME_MAY_CHANGE, TrainConfig

log = logging.getLogger(__name__)



class ResumableConfig(Protocol):
    """What resuming needs of a run's config (:class:`TrainConfig`, ``DetectionTrainConfig``)."""

    epochs: int
    output: str
    resume: bool

    def validate(self) -> None: ...

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any: ...


_Config = TypeVar("_Config", bound=ResumableConfig)


def check_img_size(model: nn.Module, img_size: int) -> None:
    """Reject a side the network cannot take: non-positive, or smaller than its total stride."""
    if img_size < 1:
        raise ValueError(f"--img-size {img_size} is invalid: expected a positive integer")
    feature_info: Any = model.feature_info  # every registered model has one
    stride = max(int(f["reduction"]) for f in feature_info)
    if img_size < stride:
        raise ValueError(
            f"--img-size {img_size} is too small for {model.name}: its feature map would vanish "
            f"(total stride {stride}); use at least {stride}"
        )


@dataclass
class FitResult:
    metrics: dict[str, Any]
    output: Path


# -- 1. the plan: settings and run folder ----------------------------------------------------------
def explicit_fields(config: Any) -> set[str]:
    """The fields a library caller set: those that differ from the config class's defaults."""
    default = type(config)()
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}


def read_resume_checkpoint(path: Path, task: str | None = None, command: str = "cspnet train") -> dict[str, Any]:
    """The ``last.ckpt`` of a run, checked to be a whole training checkpoint (of ``task``, when given)."""
    if path.stat().st_size == 0:
        raise ValueError(f"--resume: {path} is empty (a write was cut off); remove it to start the run afresh")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not a torch file
        raise ValueError(f"--resume: {path} cannot be read ({type(exc).__name__}); it is truncated or not a "
                         "checkpoint") from exc  # fmt: skip
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("train_config"), dict) or "loops" not in ckpt:
        raise ValueError(f"--resume: {path} is not a `{command}` checkpoint (no training state in it)")
    if task is not None and ckpt.get("task", "classification") != task:
        raise ValueError(f"--resume: {path} is not a `{command}` checkpoint (it is a {ckpt.get('task', 'classification')} run)")
    return ckpt


def epochs_done(ckpt: dict[str, Any]) -> int:
    """Epochs a checkpointed run has finished (trained and validated): its last history row."""
    for key, state in ckpt.get("callbacks", {}).items():
        if str(key).startswith("History") and state.get("rows"):
            return max(int(row["epoch"]) for row in state["rows"])
    return 0


def restore_run_config(config: _Config, saved: _Config, given: Collection[str],
                       may_change: Collection[str] = RESUME_MAY_CHANGE) -> _Config:  # fmt: skip
    """The run's own settings, with the changes a resumption may make (``may_change``).

    A given setting that contradicts the run is a one-line error naming both values.
    """
    conflicts = [
        f"--{name.replace('_', '-')} {getattr(config, name)!r} (the run has {getattr(saved, name)!r})"
        for name in sorted(given)
        if name not in may_change and getattr(config, name) != getattr(saved, name)
    ]
    if conflicts:
        raise ValueError(f"--resume: {'; '.join(conflicts)}: a resumed run keeps its settings; "
                         "drop these flags or start a new run in another --output")  # fmt: skip
    changes = {name: getattr(config, name) for name in given if name in may_change}
    restored: _Config = dataclasses.replace(saved, **{**changes, "resume": True, "output": config.output})  # type: ignore[type-var]
    if restored.epochs != saved.epochs:  # resume takes effect on the LR schedule in ResumableModule
        log.warning("--resume: training for %d epochs instead of %d; the learning-rate schedule is stretched "
                    "to the new end", restored.epochs, saved.epochs)  # fmt: skip
    return restored


def resumed_config(config: _Config, ckpt: dict[str, Any], given: Collection[str] | None,
                   may_change: Collection[str] = RESUME_MAY_CHANGE) -> _Config:  # fmt: skip
    """``config`` as the run in ``ckpt`` had it, with the allowed changes; validated."""
    saved: _Config = type(config).from_dict(ckpt["hyper_parameters"]["train_config"])
    config = restore_run_config(config, saved, explicit_fields(config) if given is None else set(given), may_change)
    done = epochs_done(ckpt)
    if config.epochs < done:
        raise ValueError(f"--epochs {config.epochs} is invalid: this run has already trained {done} epochs")
    config.validate()
    return config


def run_settings(config: _Config, given: Collection[str] | None, task: str, command: str,
                 may_change: Collection[str] = RESUME_MAY_CHANGE) -> _Config:  # fmt: skip
    """The validated settings of the run in ``config.output``: ``config`` for a new run (in an
    empty folder), the checkpoint's own with the allowed changes for ``--resume``."""
    config.validate()
    out = Path(config.output)
    last = out / "last.ckpt"
    if config.resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
        return resumed_config(config, read_resume_checkpoint(last, task, command), given, may_change)
    if last.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    return config


def prepare_run_folder(out: Path) -> None:
    """The run folder is writable (checked before any training) and free of killed writes' leftovers."""
    from cspnet.training.files import check_writable, remove_stale_temporaries

    check_writable(out)
    for stale in remove_stale_temporaries(out):
        log.info("removed %s, left by an interrupted write", stale)


@dataclass
class RunPlan:
    config: TrainConfig  # resolved: every None default filled in
    output: Path
    resume_from: Path | None


def plan_run(config: TrainConfig, given: Collection[str] | None = None) -> RunPlan:
    """Validate ``config`` and the run folder; on ``resume``, the settings come from the checkpoint."""
    from cspnet import create_model, get_model_entry

    config = run_settings(config, given, "classification", "cspnet train")
    out = Path(config.output)
    cfg = config.resolved(get_model_entry(config.model).input_size[-1])
    with torch.device("meta"):  # validates the overrides and the size without building weights
        check_img_size(create_model(cfg.model, num_classes=10, **cfg.model_overrides), cfg.side)
    _warn_if_bf16_is_emulated(cfg)
    prepare_run_folder(out)
    return RunPlan(cfg, out, out / "last.ckpt" if cfg.resume else None)


def _warn_if_bf16_is_emulated(cfg: TrainConfig) -> None:
    """bf16 on a CPU without native support runs emulated: measured 8x slower than fp32 on an AVX2 machine."""
    from cspnet.cpu import has_native_bf16

    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    if cfg.precision == "bf16" and on_cpu and has_native_bf16() is False:
        log.warning("--precision bf16: this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag); "
                    "it is emulated and much slower than --precision fp32 here")  # fmt: skip


# -- 2. processes and machines ---------------------------------------------------------------------
@dataclass
class Layout:
    devices: int  # processes per node
    num_nodes: int

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes


class TrainerSettings(Protocol):
    """What :func:`distributed_layout` and :func:`build_trainer` read of a run's config (the
    classification and the detection configs both have these fields)."""

    accelerator: str
    precision: str
    epochs: int
    devices: int | None
    num_nodes: int | None
    checkpoint_every: int
    limit_train_batches: int | None


def distributed_layout(cfg: TrainerSettings) -> Layout:
    """Processes per node and nodes: the flags, else what torchrun says, else one process."""
    devices, nodes = 1, 1
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    return Layout(cfg.devices or devices, cfg.num_nodes or nodes)


# -- 3. the trainer --------------------------------------------------------------------------------
@dataclass
class RunCallbacks:
    history: Any  # cspnet.training.history.History
    checkpoints: Any  # cspnet.training.callbacks.RunCheckpoints


def build_trainer(cfg: TrainerSettings, out: Path, layout: Layout, extra_callbacks: Sequence[Any], verbose: bool,
                  run: RunCallbacks | None = None) -> tuple[Any, RunCallbacks]:  # fmt: skip
    """The trainer; ``run`` replaces the classifier's history and checkpoint callbacks (detection's)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from cspnet.precision import lightning_precision
    from cspnet.training.callbacks import AtomicCheckpointIO, EpochProgressBar, RunCheckpoints
    from cspnet.training.history import History

    if run is None:
        run = RunCallbacks(History(out / "history.csv", verbose=verbose), RunCheckpoints(out, cfg.checkpoint_every))
    accelerator: str = cfg.accelerator
    strategy: Any = "auto"
    if layout.world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        accelerator = accelerator if on_gpu else "cpu"
        strategy = DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo")
    progress = verbose and os.isatty(2)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=layout.devices,
        num_nodes=layout.num_nodes,
        strategy=strategy,
        precision=lightning_precision(cfg.precision),  # type: ignore[arg-type]
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.limit_train_batches,
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        # History first: the epoch-end checkpoint must hold the epoch's history row.
        callbacks=[run.history, run.checkpoints, *([EpochProgressBar()] if progress else []), *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # RunCheckpoints writes last/best itself
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself
        deterministic=False,
        log_every_n_steps=1,
    )
    return trainer, run


# -- 4. running it ---------------------------------------------------------------------------------
class _Interrupted(Exception):
    """Ctrl-C during training. Not a KeyboardInterrupt: Lightning answers that with ``sys.exit(1)``."""


@contextlib.contextmanager
def _resumable_ctrl_c() -> Iterator[None]:
    """Turn SIGINT into :class:`_Interrupted` for the duration (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# Lightning notices that are expected in these runs and say nothing the user can act on.
_KNOWN_NOTICES = (
    ".*dataloader is not resumable.*",  # ResumableSampler resumes from the module's checkpoint state
    ".*does not have many workers.*",  # the digits live in memory; folder runs choose their workers
    ".*LeafSpec.*is deprecated.*",
    ".*is smaller than the logging interval.*",
    ".*Checkpoint directory .* exists and is not empty.*",
)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's banner and known notices off for one run (``cspnet -v`` keeps the banner); the
    logger level and warning filters are restored afterwards."""
    import lightning.pytorch  # noqa: F401  (its import sets the logger up: change the level after it)

    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if not log.isEnabledFor(logging.INFO):
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _KNOWN_NOTICES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        logger.setLevel(level)


def run_training(trainer: Any, module: Any, data: Any, resume_from: Path | None) -> None:
    """``trainer.fit``; Ctrl-C raises ``KeyboardInterrupt`` after the last checkpoint is safe."""
    try:
        with _resumable_ctrl_c():
            trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    except _Interrupted:
        raise KeyboardInterrupt from None
    if trainer.interrupted:
        raise KeyboardInterrupt


# -- 5. results ------------------------------------------------------------------------------------
def _rounded(value: float | None, digits: int) -> float | None:
    """JSON has no NaN: a missing or non-finite metric is ``null``."""
    return round(value, digits) if value is not None and math.isfinite(value) else None


def final_metrics(cfg: TrainConfig, run: RunCallbacks, layout: Layout, session_s: float) -> dict[str, Any]:
    """The last validation's metrics (from the checkpoint state when this session ran none)."""
    last = run.checkpoints.last_metrics
    return {
        "model": cfg.model,
        "top1": _rounded(last.get("top1"), 4),
        "top5": _rounded(last.get("top5"), 4),
        "loss": _rounded(last.get("loss"), 6),
        "best_top1": _rounded(run.checkpoints.best, 4),
        "epochs": cfg.epochs,
        "train_time_s": round(run.history.elapsed(), 1),
        "this_session_s": round(session_s, 1),
        "world_size": layout.world,
    }


def write_reports(out: Path, metrics: dict[str, Any]) -> None:
    from cspnet.training.files import atomic_write_bytes
    from cspnet.training.plots import plot_history

    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode())
    plot_history(out / "history.csv", out / "learning_curves.png")


def fit(config: TrainConfig, callbacks: Sequence[Any] = (), verbose: bool = True,
        given: Collection[str] | None = None) -> FitResult:  # fmt: skip
    """Train ``config.model`` on ``config.data``; everything lands in ``config.output``.

    Returns the final validation metrics (also in ``metrics.json``): ``top1``/``top5`` in percent,
    ``loss``, ``best_top1``, ``train_time_s``. Extra Lightning ``callbacks`` are for tests and tools.

    With ``config.resume`` the run continues from ``output/last.ckpt`` with the run's own settings;
    ``given`` names the settings the caller chose (the CLI passes its explicit flags; by default,
    every field that differs from :class:`TrainConfig`'s default), and one that contradicts the
    run is an error. Ctrl-C raises ``KeyboardInterrupt``; the run then resumes from its last
    checkpoint exactly.
    """
    with _quiet_lightning():
        return _fit(config, callbacks, verbose, given)


def _fit(config: TrainConfig, callbacks: Sequence[Any], verbose: bool, given: Collection[str] | None) -> FitResult:
    import lightning as L

    from cspnet.training.datamodule import ImageDataModule, load_datasets, normalization, steps_per_epoch
    from cspnet.training.module import ClassifierModule

    plan = plan_run(config, given)
    cfg, out = plan.config, plan.output
    layout = distributed_layout(cfg)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = load_datasets(cfg)
    classes = list(train_set.classes)
    mean, std = normalization(cfg)
    steps = steps_per_epoch(len(train_set), cfg.batch_size, layout.world)
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    module = ClassifierModule(
        cfg.model, dict(cfg.model_overrides), len(classes), classes, cfg.side, mean, std, cfg.to_dict(), steps
    )
    if cfg.pretrained and not plan.resume_from:  # a resumed run's weights come from its checkpoint
        module.load_pretrained(cfg.pretrained)
    data = ImageDataModule(cfg, train_set, val_set)
    trainer, run = build_trainer(cfg, out, layout, callbacks, verbose)
    if trainer.is_global_zero:
        cfg.write(out)
    started = time.perf_counter()
    run_training(trainer, module, data, plan.resume_from)
    metrics = final_metrics(cfg, run, layout, time.perf_counter() - started)
    if trainer.is_global_zero:
        write_reports(out, metrics)
    return FitResult(metrics, out)
