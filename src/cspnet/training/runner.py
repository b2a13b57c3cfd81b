"""``fit``: one training run from a :class:`TrainConfig` (``load_trained`` lives in ``training/trained.py``)."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cspnet.training.config import TrainConfig

log = logging.getLogger(__name__)


def check_img_size(model: nn.Module, img_size: int) -> None:
    """Reject a side the network cannot take: non-positive, or smaller than its total stride."""
    if img_size < 1:
        raise ValueError(f"--img-size {img_size} is invalid: expected a positive integer")
    stride = max(f["reduction"] for f in model.feature_info)
    if img_size < stride:
        raise ValueError(
            f"--img-size {img_size} is too small for {model.name}: its feature map would vanish "
            f"(total stride {stride}); use at least {stride}"
        )


def _torchrun_world() -> tuple[int, int] | None:
    """(processes per node, nodes) when launched by torchrun, else None."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        return local, max(1, world // local)
    return None


@dataclass
class FitResult:
    metrics: dict[str, Any]
    output: Path


def fit(config: TrainConfig, callbacks: Sequence[Any] = (), verbose: bool = True) -> FitResult:
    """Train ``config.model`` on ``config.data``; everything lands in ``config.output``.

    Returns the final validation metrics (also in ``metrics.json``): ``top1``/``top5`` in percent,
    ``loss``, ``best_top1``, ``train_time_s``. Extra Lightning ``callbacks`` are for tests and tools.
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    if not log.isEnabledFor(logging.INFO):  # `cspnet -v` keeps Lightning's banner
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    from cspnet import create_model, get_model_entry
    from cspnet.training.callbacks import AtomicCheckpointIO, History, RunCheckpoints, plot_history
    from cspnet.training.datamodule import ImageDataModule, load_datasets, normalization, steps_per_epoch
    from cspnet.training.module import ClassifierModule

    config.validate()
    entry = get_model_entry(config.model)
    cfg = config.resolved(entry.input_size[-1])
    with torch.device("meta"):  # validates the overrides and the size without building weights
        check_img_size(create_model(cfg.model, num_classes=10, **cfg.model_overrides), cfg.img_size)
    out = Path(cfg.output)
    last = out / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
    if not cfg.resume and last.is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --output")

    torchrun = _torchrun_world()
    devices = cfg.devices or (torchrun[0] if torchrun else 1)
    num_nodes = cfg.num_nodes or (torchrun[1] if torchrun else 1)
    world = devices * num_nodes

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = load_datasets(cfg)
    classes = list(train_set.classes)
    mean, std = normalization(cfg)
    steps = steps_per_epoch(len(train_set), cfg.batch_size, world)
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    module = ClassifierModule(
        cfg.model, dict(cfg.model_overrides), len(classes), classes, cfg.img_size, mean, std, cfg.to_dict(), steps
    )
    data = ImageDataModule(cfg, train_set, val_set)

    out.mkdir(parents=True, exist_ok=True)
    history = History(out / "history.csv", verbose=verbose)
    accelerator = cfg.accelerator
    strategy: Any = "auto"
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        if not on_gpu:
            accelerator = "cpu"
        strategy = DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=cfg.precision if cfg.precision != "32" else "32-true",
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.limit_train_batches,
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        callbacks=[RunCheckpoints(out, cfg.checkpoint_every), history, *callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # RunCheckpoints writes last/best itself
        enable_progress_bar=verbose and os.isatty(2),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself
        deterministic=False,
        log_every_n_steps=10,
    )
    if trainer.is_global_zero:
        cfg.write(out)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The "dataloader is not resumable" notice: our sampler resumes from the module's checkpoint state.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if cfg.resume else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    m = trainer.callback_metrics
    metrics = {
        "model": cfg.model,
        "top1": round(float(m["val/top1"]), 4),
        "top5": round(float(m["val/top5"]), 4),
        "loss": round(float(m["val/loss"]), 6),
        "best_top1": round(float(trainer.callbacks[0].best), 4),
        "epochs": cfg.epochs,
        "train_time_s": round(history.elapsed(), 1),
        "this_session_s": round(time.perf_counter() - started, 1),
        "world_size": world,
    }
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_history(out / "history.csv", out / "learning_curves.png")
    return FitResult(metrics, out)
