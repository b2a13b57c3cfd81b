"""``fit``: one training run of any task from its config (:class:`~cspnet.training.config.RunConfig`), in named steps.

The task (:mod:`cspnet.training.tasks`: classification, detection) supplies its data, module and
metrics; every step below is the same code for every task.

1. :func:`plan_run` validates the settings and the model, checks the run folder (writable, a run
   to resume or an empty one, not in use by another run) and, on ``resume``, restores the run's own
   settings from its checkpoint.
2. :func:`distributed_layout` reads how many processes and machines take part (torchrun or flags).
3. :func:`build_trainer` makes the Lightning trainer with the run's callbacks.
4. :func:`run_training` runs it, with Ctrl-C and SIGTERM made resumable and known notices filtered;
   a non-finite loss stops it (:class:`~cspnet.training.resumable.TrainingDiverged`).
5. :func:`final_metrics` and :func:`write_reports` produce ``metrics.json`` and the learning curves.

``load_trained`` (a model back from a checkpoint) lives in :mod:`cspnet.trained`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from cspnet.training.config import RESUME_MAY_CHANGE, RunConfig
from cspnet.training.tasks import Task, get_task

log = logging.getLogger(__name__)

_Config = TypeVar("_Config", bound=RunConfig)


@dataclass
class FitResult:
    metrics: dict[str, Any]
    output: Path


# -- 1. the plan: settings and run folder ----------------------------------------------------------
def explicit_fields(config: Any) -> set[str]:
    """The fields a library caller set: those that differ from the config class's defaults."""
    default = type(config)()
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}


def read_resume_checkpoint(path: Path, task: str, command: str) -> dict[str, Any]:
    """The ``last.ckpt`` of a run, checked to be a whole training checkpoint of ``task``."""
    from cspnet.convert import CheckpointError, load_torch_file

    if path.stat().st_size == 0:
        raise ValueError(f"--resume: {path} is empty (a write was cut off); remove it to start the run afresh")
    try:
        ckpt = load_torch_file(path, "checkpoint")
    except CheckpointError as exc:  # truncated, corrupt, refused, or not a torch file
        raise ValueError(f"--resume: {exc}; remove it to start the run afresh") from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("train_config"), dict) or "loops" not in ckpt:
        raise ValueError(f"--resume: {path} is not a `{command}` checkpoint (no training state in it)")
    if ckpt.get("task", "classification") != task:  # checkpoints before the task key were classification runs
        raise ValueError(f"--resume: {path} is not a `{command}` checkpoint (it is a {ckpt.get('task')} run)")
    return ckpt


def epochs_done(ckpt: dict[str, Any]) -> int:
    """Epochs a checkpointed run has finished (trained and validated): its last history row."""
    from cspnet.training.history import History

    for key, state in ckpt.get("callbacks", {}).items():
        if str(key).startswith(History.__name__) and isinstance(state, dict) and state.get("rows"):
            return max(int(row["epoch"]) for row in state["rows"])
    return 0


def resume_point(ckpt: dict[str, Any]) -> str:
    """Where a checkpointed run continues: ``"epoch 3 (batch 5 of it), step 45"``."""
    position = ckpt.get("cspnet_position") or {}
    epoch, batches = int(position.get("epoch", ckpt.get("epoch", 0))), int(position.get("batches", 0))
    within = f" (after its batch {batches})" if batches else ""
    return f"epoch {epoch + 1}{within}, step {int(ckpt.get('global_step', 0))}"


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
    restored: _Config = dataclasses.replace(saved, **{**changes, "resume": True, "output": config.output})
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


def run_settings(config: _Config, given: Collection[str] | None,
                 may_change: Collection[str] = RESUME_MAY_CHANGE) -> tuple[_Config, dict[str, Any] | None]:  # fmt: skip
    """The validated settings of the run in ``config.output`` and, for ``--resume``, its checkpoint:
    ``config`` for a new run (in an empty folder), the checkpoint's own with the allowed changes for ``--resume``."""
    config.validate()
    out = Path(config.output)
    last = out / "last.ckpt"
    if config.resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
        ckpt = read_resume_checkpoint(last, config.task, config.command)
        return resumed_config(config, ckpt, given, may_change), ckpt
    if last.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    return config, None


def prepare_run_folder(out: Path) -> None:
    """The run folder is writable (checked before any training) and free of killed writes' leftovers."""
    from cspnet.training.files import check_writable, remove_stale_temporaries

    check_writable(out)
    for stale in remove_stale_temporaries(out):
        log.info("removed %s, left by an interrupted write", stale)


@dataclass
class RunPlan:
    task: Task
    config: RunConfig  # resolved: every None default filled in
    output: Path
    resume_from: Path | None
    resume_point: str | None = None  # where a resumed run continues, as the user reads it


def plan_run(config: RunConfig, given: Collection[str] | None = None, task: Task | None = None) -> RunPlan:
    """Validate ``config`` and its model, then the run folder; on ``resume``, the settings come from the
    checkpoint. The model is built on the meta device (no weights) to check its overrides and the input side."""
    from cspnet.data.transforms import check_img_size
    from cspnet.models import create_model, get_model_entry

    config, ckpt = run_settings(config, given)
    out = Path(config.output)
    cfg = config.resolved(get_model_entry(config.model).input_size[-1])
    with torch.device("meta"):  # validates the overrides and the size without building weights
        check_img_size(cfg.side, create_model(cfg.model, num_classes=10, **cfg.model_overrides))
    _warn_if_bf16_is_emulated(cfg)
    prepare_run_folder(out)
    resume_from = out / "last.ckpt" if ckpt is not None else None
    task = task if task is not None else get_task(cfg.task)
    return RunPlan(task, cfg, out, resume_from, resume_point(ckpt) if ckpt is not None else None)


def _warn_if_bf16_is_emulated(cfg: RunConfig) -> None:
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


def distributed_layout(cfg: RunConfig) -> Layout:
    """Processes per node and nodes: the flags, else what torchrun says, else one process."""
    devices, nodes = 1, 1
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    return Layout(cfg.devices or devices, cfg.num_nodes or nodes)


def is_launch_process() -> bool:
    """Whether this process is the one the user started (global rank 0): not a process Lightning's
    launcher or torchrun started for another rank. Only it prints, locks and writes the run's reports."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return int(rank) == 0 and int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))) == 0


# -- 3. the trainer --------------------------------------------------------------------------------
@dataclass
class RunCallbacks:
    history: Any  # cspnet.training.history.History
    checkpoints: Any  # cspnet.training.callbacks.RunCheckpoints


def build_trainer(plan: RunPlan, layout: Layout, extra_callbacks: Sequence[Any], verbose: bool,
                  stop: StopOnSignal | None = None) -> tuple[Any, RunCallbacks]:  # fmt: skip
    """The Lightning trainer of a run, with the task's history columns and monitored metric."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from cspnet.precision import lightning_precision
    from cspnet.training.callbacks import AtomicCheckpointIO, EpochProgressBar, RunCheckpoints
    from cspnet.training.history import History

    cfg, out = plan.config, plan.output
    run = RunCallbacks(History(out / "history.csv", plan.task, verbose=verbose),
                       RunCheckpoints(out, cfg.checkpoint_every, monitor=plan.task.monitor))  # fmt: skip
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
        callbacks=[run.history, run.checkpoints, *([EpochProgressBar()] if progress else []),
                   *([stop_at_boundary(stop)] if stop is not None else []), *extra_callbacks],
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
class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (Ctrl-C: SIGINT, a scheduler: SIGTERM) after its last checkpoint
    was safe; ``signum`` says which, so that the command exits with ``128 + signum`` as the shell would."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class _Stop(Exception):
    """Raised inside the trainer when a stop was asked for. Not a KeyboardInterrupt: Lightning answers
    that with ``sys.exit(1)``, which a scheduler would read as an ordinary failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


RESUMABLE_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """SIGINT and SIGTERM ask the run to stop; the trainer stops at its next step boundary.

    The handler only records the request: an exception raised from a signal handler surfaces inside
    whatever code runs at that moment, and library code that turns exceptions into its own (Lightning's
    metric logging does) would report a stop as an error. :class:`StopAtBoundary` raises it from a
    callback instead, between steps and between validation batches, where nothing swallows it and no
    write is half done. A second signal of the same kind stops at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:
            raise _Stop(signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _Stop(self.signum)


def stop_at_boundary(request: StopOnSignal) -> Any:
    """The Lightning callback that raises the requested stop at the next step or validation batch."""
    import lightning as L

    class StopAtBoundary(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            request.check()

        def on_train_batch_end(self, *args: Any) -> None:
            request.check()

        def on_validation_batch_start(self, *args: Any) -> None:
            request.check()

        def on_validation_end(self, *args: Any) -> None:
            request.check()

    return StopAtBoundary()


@contextlib.contextmanager
def _resumable_signals(request: StopOnSignal) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``request`` for the duration (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in RESUMABLE_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def run_training(trainer: Any, module: Any, data: Any, resume_from: Path | None, request: StopOnSignal) -> None:
    """``trainer.fit``; a signal raises :class:`Interrupted` at the next step boundary (the last checkpoint safe)."""
    try:
        with _resumable_signals(request):
            trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
            request.check()  # a signal after the last boundary still means the job was stopped, not finished
    except _Stop as stop:
        raise Interrupted(stop.signum) from None
    except Exception:
        # A signal to the whole process group (a scheduler's SIGTERM, a terminal's Ctrl-C) also kills the
        # DataLoader workers, and the loader then fails with "worker ... killed by signal" before the next
        # step boundary: with a stop requested, that failure is the stop.
        if request.signum is not None:
            raise Interrupted(request.signum) from None
        raise
    if trainer.interrupted:
        raise Interrupted(signal.SIGINT)


# -- 5. results ------------------------------------------------------------------------------------
def final_metrics(plan: RunPlan, module: Any, run: RunCallbacks, layout: Layout, session_s: float) -> dict[str, Any]:
    """``metrics.json``: the last validation's metrics (from the checkpoint state when this session ran
    none) in the task's terms, with what every run reports."""
    from cspnet.training.tasks import _rounded

    last = run.checkpoints.last_metrics
    return {
        "model": plan.config.model,
        "task": plan.task.name,
        **plan.task.final_metrics(module, last),
        "loss": _rounded(last.get("loss"), 6),
        f"best_{plan.task.monitor}": _rounded(run.checkpoints.best, plan.task.digits),
        "epochs": plan.config.epochs,
        "train_time_s": round(run.history.elapsed(), 1),
        "this_session_s": round(session_s, 1),
        "world_size": layout.world,
    }


def write_reports(plan: RunPlan, metrics: dict[str, Any]) -> None:
    from cspnet.io import atomic_path, atomic_write_text, dumps_json
    from cspnet.training.plots import plot_history

    atomic_write_text(plan.output / "metrics.json", dumps_json(metrics))
    for name, panels in plan.task.figures.items():  # learning_curves.png, and e.g. detection's results.png
        with atomic_path(plan.output / name) as tmp:
            plot_history(plan.output / "history.csv", tmp, panels)


def fit(config: RunConfig, callbacks: Sequence[Any] = (), verbose: bool = True,
        given: Collection[str] | None = None, task: Task | None = None) -> FitResult:  # fmt: skip
    """Train ``config.model`` on ``config.data`` for the config's task; everything lands in ``config.output``.

    ``config`` is a :class:`~cspnet.training.TrainConfig` (classification) or a
    :class:`~cspnet.training.DetectionTrainConfig`. Returns the final validation metrics (also in
    ``metrics.json``): for classification ``top1``/``top5`` in percent and ``best_top1``; for
    detection COCO's ``map`` (mAP@[.5:.95]), ``map50``, ``map75``, ``mar100``, ``per_class_ap`` as
    fractions and ``best_map``; for both ``loss``, ``train_time_s``. Extra Lightning ``callbacks``
    are for tests and tools.

    With ``config.resume`` the run continues from ``output/last.ckpt`` with the run's own settings;
    ``given`` names the settings the caller chose (the CLI passes its explicit flags; by default,
    every field that differs from the config class's default), and one that contradicts the run is
    an error. Ctrl-C or SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt``); a non-finite
    loss raises :class:`~cspnet.training.resumable.TrainingDiverged`; the run then resumes from its
    last checkpoint exactly. While it runs, the run folder is locked against a second run.

    ``task`` replaces the config's registered task (:func:`~cspnet.training.tasks.get_task`) with a
    variant of it, e.g. one that reads other data (``docs/adding-a-family.md``, "Adding a task").
    """
    from cspnet.training.files import run_folder_lock

    with _quiet_lightning():
        plan = plan_run(config, given, task)
        with run_folder_lock(plan.output, enabled=is_launch_process()):
            return _fit(plan, callbacks, verbose)


def _fit(plan: RunPlan, callbacks: Sequence[Any], verbose: bool) -> FitResult:
    import lightning as L

    from cspnet.training.datamodule import RunDataModule, steps_per_epoch

    cfg, out, task = plan.config, plan.output, plan.task
    layout = distributed_layout(cfg)
    if plan.resume_point and verbose and is_launch_process():
        print(f"resuming {out} at {plan.resume_point}", flush=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = task.load_datasets(cfg)
    cfg = cfg.with_data(len(train_set), layout.world)  # defaults that depend on the data (a detector's batch)
    plan = dataclasses.replace(plan, config=cfg)
    classes = list(train_set.classes)
    mean, std = task.normalization(cfg)
    steps = steps_per_epoch(len(train_set), cfg.batch_size, layout.world)
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    module = task.module_class()(cfg.model, dict(cfg.model_overrides), len(classes), classes, cfg.side, mean, std,
                                 cfg.to_dict(), steps)  # fmt: skip
    if cfg.pretrained and not plan.resume_from:  # a resumed run's weights come from its checkpoint
        module.load_pretrained(cfg.pretrained)
    data = RunDataModule(cfg, train_set, val_set, task.collate())
    stop = StopOnSignal()
    trainer, run = build_trainer(plan, layout, callbacks, verbose, stop)
    if trainer.is_global_zero:
        cfg.write(out)
    started = time.perf_counter()
    run_training(trainer, module, data, plan.resume_from, stop)
    metrics = final_metrics(plan, module, run, layout, time.perf_counter() - started)
    if trainer.is_global_zero:
        write_reports(plan, metrics)
    return FitResult(metrics, out)
