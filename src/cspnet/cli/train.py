"""``cspnet train``: train a registered model on the bundled digits or an image folder.

Examples::

    cspnet train                                   # CSPDenseNet-BC on the digits, a few minutes on a CPU
    cspnet train --model densenet_bc100 --data path/to/images --epochs 30 --img-size 32
    cspnet train --data path/to/images --pretrained best.ckpt   # fine-tune; a new head if the classes differ
    cspnet train --devices 2                       # DDP, 2 processes (gloo on CPU, nccl on GPUs)
    torchrun --nproc_per_node 2 -m cspnet.cli.main train --output runs/ddp
    cspnet train --output runs/exp --resume        # continue an interrupted run exactly

``--resume`` takes the run's own settings from its checkpoint: give only ``--output`` (and, to
extend a run, a larger ``--epochs``); a flag that contradicts the run is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.training.config import ACCELERATORS, DEFAULT_MODEL, OPTIMIZERS, PRECISIONS, TrainConfig

_DEFAULTS = TrainConfig()

# Every option defaults to None ("not given"), so that --resume can tell the flags a user chose from
# the run's own settings; the TrainConfig defaults apply to the rest (shown in --help).
# dest -> TrainConfig field, where they differ.
_FIELD_OF = {"overrides": "model_overrides"}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cspnet train`` (``cspnet demo`` reuses the data and schedule ones)."""
    d = _DEFAULTS
    p.add_argument("--data", help="'digits' (bundled, default) or a folder: "
                   "DATA/train/<class>/*, DATA/val/<class>/*, or DATA/<class>/* (a seeded split is held out)")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"per process (default {d.batch_size})")
    p.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.1, adamw 2e-3)")
    p.add_argument("--img-size", type=int, help="input side (default: 16 for digits, else the model's)")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: 0 for digits, else 4)")
    p.add_argument("--precision", choices=PRECISIONS, help=f"default {d.precision}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = sub.add_parser("train", help="train a model (Lightning: CPU, GPUs, DDP, multi-node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"registered model (default {DEFAULT_MODEL})")
    add_config_overrides(p)
    p.set_defaults(overrides=None)
    add_training_arguments(p)
    p.add_argument("--output", help=f"run folder (default {d.output})")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --output from its last.ckpt, with its own settings")
    p.add_argument("--pretrained", metavar="FILE",
                   help="start from these weights (a cspnet checkpoint, torchvision/timm/darknet file); "
                   "a classifier of another size is re-initialised")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--weight-decay", type=float, help="default: sgd 5e-4, adamw 0.05")
    p.add_argument("--momentum", type=float, help=f"sgd momentum (default {d.momentum})")
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs}")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate and ship an exponential moving average of the weights (default on)")
    p.add_argument("--ema-decay", type=float, help=f"default {d.ema_decay}")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute blocks in backward (less memory)")
    p.add_argument("--mixup", type=float, help="mixup alpha (default 0: off)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha (default 0: off)")
    p.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing}")
    p.add_argument("--hflip", type=float, help="horizontal flip probability (default: 0 for digits, else 0.5)")
    p.add_argument("--crop-pct", type=float, help="evaluation resize: short side to img-size / crop-pct, then "
                   "a centre crop (default: 1.0 for digits, else 0.875)")
    p.add_argument("--val-fraction", type=float, help=f"held-out share of a single class-folder data set "
                   f"(default {d.val_fraction})")
    p.add_argument("--accelerator", choices=ACCELERATORS, help="default auto (Lightning's names)")
    p.add_argument("--devices", type=int, help="processes per node (default 1, or torchrun's)")
    p.add_argument("--num-nodes", type=int, help="machines (default 1, or torchrun's --nnodes)")
    p.add_argument("--checkpoint-every", type=int,
                   help=f"steps between mid-epoch last.ckpt saves (default {d.checkpoint_every}; 0: epoch ends only)")
    p.set_defaults(func=run)  # fmt: skip


def given_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the user set on the command line (options left at None are not given)."""
    fields = set(TrainConfig.__dataclass_fields__)
    given = {}
    for dest, value in vars(args).items():
        field = _FIELD_OF.get(dest, dest)
        if field in fields and value is not None:
            given[field] = parse_overrides(value) if field == "model_overrides" else value
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**given_settings(args))


INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def fit_resumably(command: str, output: str, fit: Callable[[], Any]) -> Any:
    """``fit()``; Ctrl-C prints the resume command (``None`` is returned: exit with
    :data:`INTERRUPTED`), and a run folder that cannot be written is a one-line error, with the
    resume command when the run has a checkpoint to resume from."""
    from pathlib import Path

    from cspnet.cli.main import CLIError
    from cspnet.training.files import RunFolderError

    resume = f"{command} --output {output} --resume"
    try:
        return fit()
    except KeyboardInterrupt:
        print(f"{command}: interrupted; resume with: {resume}", file=sys.stderr, flush=True)
        return None
    except RunFolderError as exc:
        resumable = (Path(output) / "last.ckpt").is_file()
        raise CLIError(f"{exc}{f'; once fixed, resume with: {resume}' if resumable else ''}") from exc


def run(args: argparse.Namespace) -> int:
    from cspnet.training import fit

    config = config_from_args(args)
    result = fit_resumably("cspnet train", config.output, lambda: fit(config, given=set(given_settings(args))))
    if result is None:
        return INTERRUPTED
    m = result.metrics
    if m.get("world_size", 1) == 1 or _is_rank_zero():
        loss = "n/a" if m["loss"] is None else f"{m['loss']:.4f}"
        print(f"{m['model']}: top-1 {_pct(m['top1'])}  top-5 {_pct(m['top5'])}  loss {loss}  "
              f"({m['train_time_s']:.0f}s) -> {result.output}")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _is_rank_zero() -> bool:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
