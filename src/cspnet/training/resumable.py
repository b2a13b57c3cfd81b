"""What every task's training module shares, so that exact resume and its guarantees are written once.

:class:`ResumableModule` builds the model from the registry (with the run's memory options), holds
the optimizer and the warm-up + cosine schedule, the EMA (updated in ``optimizer_step``), the
per-step seeding, fine-tuning from a file, the stop on a non-finite loss, and the checkpoint
contents that make a run resumable from any step: the data position for
:class:`~cspnet.data.ResumableSampler`, the epoch's running training loss, the EMA, the task and
what inference needs (model, classes, input size, normalisation). The classifier
(:class:`~cspnet.training.module.ClassifierModule`) and the detector
(:class:`~cspnet.training.detection_module.DetectorModule`) add their loss, metrics and inputs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn

from cspnet.training.config import RunConfig
from cspnet.training.ema import ModelEma
from cspnet.training.schedule import WarmupCosine

log = logging.getLogger(__name__)

# Step seeds: seed * _SEED_STRIDE + step * world + rank never collide for runs under 100k steps.
_SEED_STRIDE = 1_000_003


class TrainingDiverged(RuntimeError):
    """The loss became non-finite: the run stops, and its last checkpoint (written before) stays as it was."""


class ResumableModule(L.LightningModule):
    """The shared part of a task's training module: it builds ``cspnet.create_model(model_name,
    num_classes, **model_overrides)`` and everything around it; a subclass adds its loss and metrics.

    Hyper-parameters (saved in every checkpoint, so inference needs nothing else): ``model_name``,
    ``model_overrides``, ``num_classes``, ``class_names``, ``img_size``, ``mean``, ``std`` (the input
    normalisation of pixels in [0, 1]) and the whole resolved ``train_config``. ``CHECKPOINT_KEYS``
    are also written at the top level of every checkpoint, with ``task``, so that it is readable
    without Lightning (:mod:`cspnet.trained`).

    Randomness (augmentation, mixup, dropout) is re-seeded from ``(seed, global step, rank)`` at
    every step, so a run resumed from a mid-epoch checkpoint draws exactly what an uninterrupted
    run would.
    """

    TASK: str = ""  # the task name (cspnet.training.tasks), recorded in every checkpoint
    CONFIG: type[RunConfig]  # the task's config class: the saved train_config is read back with it
    CHECKPOINT_KEYS: tuple[str, ...] = ("model_name", "model_overrides", "num_classes", "class_names", "img_size",
                                        "mean", "std")  # fmt: skip
    cfg: Any

    def __init__(self, model_name: str, model_overrides: dict[str, Any], num_classes: int, class_names: list[str],
                 img_size: int, mean: list[float], std: list[float], train_config: dict[str, Any],
                 steps_per_epoch: int) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        from cspnet.data.transforms import Normalize
        from cspnet.models import create_model
        self.cfg = self.CONFIG.from_dict(train_config)
        model = create_model(model_name, num_classes=num_classes, **model_overrides)
        if self.cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)  # type: ignore[operator]
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.normalize = Normalize(mean, std)
        self.steps_per_epoch = steps_per_epoch
        self.ema = ModelEma(self.model, self.cfg.ema_decay) if self.cfg.ema else None
        self.train_loss = torchmetrics.MeanMetric()
        self.resume_position: dict[str, int] | None = None
        self.frozen = self._frozen_parts()
        backbone_file = getattr(self.cfg, "pretrained_backbone", None)
        if backbone_file and not self.cfg.resume:  # a resumed run's weights come from its checkpoint
            self.load_pretrained_backbone(backbone_file)

    def model_input(self, images: Tensor) -> Tensor:
        """uint8 images or ``[0, 1]`` floats ``(N, C, H, W)`` -> the model's normalised input (in the run's
        memory format)."""
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def inference_model(self) -> torch.nn.Module:
        """The weights to evaluate and ship: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def load_pretrained(self, path: str) -> None:
        """Start from the weights in ``path`` (fine-tuning); a classifier or head of another size is
        not loaded and stays freshly initialised, which is said at warning level."""
        from cspnet.convert.checkpoint import load_checkpoint

        for note in load_checkpoint(self.model, path):
            level = logging.WARNING if "not loaded" in note else logging.INFO
            log.log(level, "--pretrained %s: %s", path, note)
        if self.ema is not None:  # the average starts from the pretrained weights, not the random ones
            self.ema = ModelEma(self.model, self.cfg.ema_decay)

    # -- transfer learning: the backbone from a classifier's weights, freezing ---------------------
    def backbone(self) -> tuple[nn.Module, str, dict[str, Any]]:
        """``(module, name, overrides)``: the module holding the model's backbone (``stem``, ``stages``,
        ``final_norm``), and the registered classifier (name and config overrides) it is built as.
        A classifier is its own backbone; the detector module answers with its feature extractor."""
        return self.model, self.hparams["model_name"], dict(self.hparams["model_overrides"])

    def load_pretrained_backbone(self, path: str) -> None:
        """Start the backbone from the classification weights in ``path``, converted from their layout
        as ``create_model(pretrained=...)`` converts them (their classifier, if any, is left out)."""
        from cspnet.convert import CheckpointError, load_checkpoint
        from cspnet.models import create_model

        body, name, overrides = self.backbone()
        source = create_model(name, num_classes=0, **overrides)  # the classifier, headless
        for note in load_checkpoint(source, path):
            log.info("--pretrained-backbone %s: %s", path, note)
        state, own = source.state_dict(), body.state_dict()
        wanted = [k for k in own if not k.startswith("head.")]
        missing = [k for k in wanted if k not in state or state[k].shape != own[k].shape]
        if missing:  # cannot happen for a file that loaded into the same registered classifier
            raise CheckpointError(f"--pretrained-backbone {path}: does not fit the backbone ({', '.join(missing[:3])})")
        body.load_state_dict({k: state[k] for k in wanted}, strict=False)
        log.info("--pretrained-backbone %s: %d backbone tensors of %s loaded", path, len(wanted), name)
        if self.ema is not None:  # the average starts from the loaded weights
            self.ema = ModelEma(self.model, self.cfg.ema_decay)

    def _frozen_parts(self) -> list[nn.Module]:
        """The modules ``--freeze`` keeps fixed: the whole backbone, or its stem and first N stages."""
        freeze = getattr(self.cfg, "freeze", None)
        if freeze is None:
            return []
        from cspnet.training.detection_config import frozen_stages

        stages = frozen_stages(freeze)
        body = self.backbone()[0]
        blocks = list(body.get_submodule("stages").children())
        parts = [body.get_submodule("stem"), *blocks]
        if stages == -1:
            return [*parts, body.get_submodule("final_norm")]
        if stages is None or stages > len(blocks):
            raise ValueError(f"--freeze {freeze} is invalid: the backbone has {len(blocks)} stages")
        return parts[: 1 + stages]

    def freezing(self) -> bool:
        """Whether ``--freeze`` holds at the current epoch (``--freeze-epochs``: its first epochs only)."""
        epochs = getattr(self.cfg, "freeze_epochs", None)
        return bool(self.frozen) and (epochs is None or self.current_epoch < epochs)

    def apply_freeze(self) -> None:
        """Frozen parts take no gradient (the optimizer then leaves them and their weight decay alone)
        and keep their BatchNorm statistics (eval mode); parts past ``--freeze-epochs`` train again."""
        frozen = self.freezing()
        for part in self.frozen:
            for p in part.parameters():
                p.requires_grad_(not frozen)
            if frozen:
                part.eval()
            elif self.training:
                part.train()

    def train(self, mode: bool = True) -> ResumableModule:
        # Lightning puts the whole module in training mode after each validation: frozen BN stays in eval.
        super().train(mode)
        if mode and self.frozen and self._trainer is not None and self.freezing():
            for part in self.frozen:
                part.eval()
        return self

    # -- BatchNorm statistics of the evaluated weights ---------------------------------------------
    def calibration_batches(self, count: int) -> list[Tensor]:
        """Model inputs of ``count`` training images, the same every time (the task says how to read them;
        none by default: no calibration)."""
        return []

    def on_validation_epoch_start(self) -> None:
        count = getattr(self.cfg, "calibrate_bn", 0)
        if count and not self.trainer.sanity_checking:
            frozen = {id(m) for part in self.frozen for m in part.modules()} if self.freezing() else set()
            skip = tuple(f"{name}." for name, m in self.model.named_modules() if id(m) in frozen)
            calibrate_norms(self.inference_model(), self.calibration_batches(count), skip)

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.module.to(self.device)

    def on_train_epoch_start(self) -> None:
        self.apply_freeze()  # --freeze-epochs: the epoch the frozen parts start training

    def on_train_start(self) -> None:
        self.apply_freeze()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        # A checkpoint restores the schedule's own length; a resumed run with more --epochs stretches it.
        for config in self.trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", []):
                if isinstance(schedule, WarmupCosine):
                    schedule.warmup_steps, schedule.total_steps = self._schedule_steps()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Augmentation, mixup and dropout draw from the global RNG: seeded per step, a redone step
        # of a resumed run draws what it drew the first time.
        seed = self.cfg.seed * _SEED_STRIDE + self.global_step * self.trainer.world_size + self.global_rank
        torch.manual_seed(seed)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: callbacks (the periodic checkpoint) run before the
        # module's on_train_batch_end, and the checkpoint must hold the EMA of this very step.
        if self.ema is not None:
            self.ema.update(self.model)

    def track_loss(self, loss: Tensor) -> Tensor:
        """Every training step's loss goes through here: a non-finite one stops the run before its backward
        pass (:class:`TrainingDiverged`); a finite one joins the epoch's running mean and the logs."""
        # Every process takes the same decision (one of them stopping alone would leave the others waiting).
        value = loss.detach()
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(value)), all=False):
            raise TrainingDiverged(self._diverged_message(f"the training loss became {float(value)}"))
        self.train_loss.update(value)
        self.log("train/loss", value, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def check_finite_validation(self, loss: Tensor) -> None:
        """Stop the run when the validation loss is not finite (before this epoch's checkpoint is written)."""
        if not bool(torch.isfinite(loss)):
            raise TrainingDiverged(self._diverged_message(f"the validation loss became {float(loss)}"))

    def _diverged_message(self, what: str) -> str:
        epoch = self.current_epoch + 1
        return (f"training stopped at epoch {epoch}, step {self.global_step}: {what}; the run diverged (a lower "
                f"--lr or --weight-decay may help). Its last checkpoint, written before, is kept")  # fmt: skip

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_loss", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in self.model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay},
                                         {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        lr = float(cfg.lr) if cfg.lr is not None else 0.0  # resolved configs always have one
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        warmup, total = self._schedule_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, cfg.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _schedule_steps(self) -> tuple[int, int]:
        """(warm-up steps, total steps) of the learning-rate schedule."""
        total = self.steps_per_epoch * self.cfg.epochs
        return min(total, math.ceil(self.steps_per_epoch * self.cfg.warmup_epochs)), total

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A step can leave non-finite weights whose loss is only seen at the next step: never save them.
        if not all(bool(torch.isfinite(v).all()) for v in checkpoint["state_dict"].values() if v.is_floating_point()):
            raise TrainingDiverged(self._diverged_message("the weights became non-finite"))
        checkpoint["task"] = self.TASK
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()
        # Where the data stands: batches of this epoch already trained (see ResumableSampler).
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        checkpoint["cspnet_position"] = {"epoch": self.current_epoch, "batches": progress.processed}  # type: ignore[attr-defined]
        # The epoch's running mean training loss (torchmetrics keeps it out of the state dict).
        checkpoint["cspnet_train_loss"] = {"mean_value": self.train_loss.mean_value.detach().cpu(),
                                           "weight": self.train_loss.weight.detach().cpu()}  # fmt: skip
        for key in self.CHECKPOINT_KEYS:
            checkpoint[key] = self.hparams[key]  # top level too: readable without Lightning

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema_state_dict" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state_dict"])
        self.resume_position = checkpoint.get("cspnet_position")
        train_loss = checkpoint.get("cspnet_train_loss")
        if train_loss is not None and self.resume_position and self.resume_position["batches"]:
            self.train_loss.mean_value.copy_(train_loss["mean_value"])
            self.train_loss.weight.copy_(train_loss["weight"])
            self.train_loss._update_count = 1  # counted as updated: compute() then uses the restored state


@torch.no_grad()
def calibrate_norms(model: nn.Module, batches: list[Tensor], skip: tuple[str, ...] = ()) -> None:
    """Replace the running statistics of ``model``'s BatchNorm layers by those of ``batches`` (their plain
    average: momentum ``None``), the layers named in ``skip`` (prefixes: frozen parts) left as they are.

    Why: an evaluation normalises with the running statistics, which an optimizer step makes stale.
    A step moves the weights after the forward pass that measured them; BatchNorm's momentum (0.1)
    keeps about ten steps of them, and the first steps keep part of the initial mean 0, variance 1;
    the EMA's statistics are an average of the trained model's, not those of the averaged weights.
    After large steps (AdamW moves every weight by about the learning rate at its first steps) or
    with few of them (a small data set: a step or two per epoch), every layer of the evaluated
    network mis-scales its output and the error compounds through the depth: validation losses of
    1e8-1e10 after the 3 steps of ``cspnet detect train --limit-train-batches 3``, swinging by
    decades from epoch to epoch on a 40-image set. Measured again on the evaluated weights
    themselves, the statistics fit them (detectron2's and pycls' "precise BN" does this too).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    >>> calibrate_norms(net, [torch.full((4, 1, 2, 2), 3.0)])
    >>> bool(torch.allclose(net[1].running_mean, net[0](torch.full((1, 1, 1, 1), 3.0)).flatten()))
    True
    """
    norms = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]  # fmt: skip
    if not batches or not norms:
        return
    training = {m: m.training for m in model.modules()}
    momentum = {m: m.momentum for _, m in norms}
    model.train()
    for name, norm in norms:
        if name.startswith(skip) or name in {s[:-1] for s in skip}:
            norm.eval()  # a frozen layer keeps its statistics
        else:
            norm.reset_running_stats()
            norm.momentum = None
    for x in batches:
        model(x)
    for m, mode in training.items():
        m.train(mode)
    for norm, value in momentum.items():
        norm.momentum = value
