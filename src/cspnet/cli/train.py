"""``cspnet train``: train a registered model on the bundled digits or an image folder.

Examples::

    cspnet train                                   # CSPDenseNet-BC on the digits, a few minutes on a CPU
    cspnet train --model densenet_bc100 --data path/to/images --epochs 30 --img-size 32
    cspnet train --devices 2                       # DDP, 2 processes (gloo on CPU, nccl on GPUs)
    torchrun --nproc_per_node 2 -m cspnet.cli.main train --output runs/ddp
    cspnet train --output runs/exp --resume        # continue an interrupted run exactly
"""

from __future__ import annotations

import argparse

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.training.config import DEFAULT_MODEL, OPTIMIZERS, PRECISIONS, TrainConfig

_DEFAULTS = TrainConfig()


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cspnet train`` (``cspnet demo`` reuses the data and schedule ones)."""
    d = _DEFAULTS
    p.add_argument("--data", default=d.data, help="'digits' (bundled, default) or a folder: "
                   "DATA/train/<class>/*, DATA/val/<class>/*, or DATA/<class>/* (a seeded split is held out)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"per process (default {d.batch_size})")
    p.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.1, adamw 2e-3)")
    p.add_argument("--img-size", type=int, help="input side (default: 16 for digits, else the model's)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: 0 for digits, else 4)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = sub.add_parser("train", help="train a model (Lightning: CPU, GPUs, DDP, multi-node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model (default {DEFAULT_MODEL})")
    add_config_overrides(p)
    add_training_arguments(p)
    p.add_argument("--output", default=d.output, help=f"run folder (default {d.output})")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.ckpt")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--weight-decay", type=float, help="default: sgd 5e-4, adamw 0.05")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=d.ema,
                   help="evaluate and ship an exponential moving average of the weights (default on)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix alpha (0: off)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--hflip", type=float, help="horizontal flip probability (default: 0 for digits, else 0.5)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out share of a single class-folder data set")
    p.add_argument("--accelerator", default=d.accelerator, help="auto, cpu, gpu (Lightning's names)")
    p.add_argument("--devices", type=int, help="processes per node (default 1, or torchrun's)")
    p.add_argument("--num-nodes", type=int, help="machines (default 1, or torchrun's --nnodes)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"steps between mid-epoch last.ckpt saves (default {d.checkpoint_every}; 0: epoch ends only)")
    p.set_defaults(func=run)  # fmt: skip


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model,
        model_overrides=parse_overrides(args.overrides),
        data=args.data,
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        warmup_epochs=args.warmup_epochs,
        img_size=args.img_size,
        precision=args.precision,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        output=args.output,
        resume=args.resume,
        ema=args.ema,
        ema_decay=args.ema_decay,
        channels_last=args.channels_last,
        grad_checkpointing=args.grad_checkpointing,
        seed=args.seed,
        mixup=args.mixup,
        cutmix=args.cutmix,
        label_smoothing=args.label_smoothing,
        hflip=args.hflip,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
    )


def run(args: argparse.Namespace) -> int:
    from cspnet.training import fit

    result = fit(config_from_args(args))
    m = result.metrics
    if m.get("world_size", 1) == 1 or _is_rank_zero():
        print(f"{m['model']}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  "
              f"({m['train_time_s']:.0f}s) -> {result.output}")
    return 0


def _is_rank_zero() -> bool:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
