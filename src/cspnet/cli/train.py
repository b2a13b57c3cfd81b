"""``cspnet train``: train a registered model on the bundled digits or an image folder.

Examples::

    cspnet train                                   # CSPDenseNet-BC on the digits, a few minutes on a CPU
    cspnet train --model densenet_bc100 --data path/to/images --epochs 30 --img-size 32
    cspnet train --data path/to/images --pretrained best.ckpt   # fine-tune; a new head if the classes differ
    cspnet train --devices 2                       # DDP, 2 processes (gloo on CPU, nccl on GPUs)
    torchrun --nproc_per_node 2 -m cspnet.cli.main train --output runs/ddp
    cspnet train --output runs/exp --resume        # continue an interrupted run exactly

``--resume`` takes the run's own settings from its checkpoint: give only ``--output`` (and, to
extend a run, a larger ``--epochs``); a flag that contradicts the run is an error. Ctrl-C or SIGTERM
stops the run with the resume command (exit status 130 or 143).
"""

from __future__ import annotations

import argparse

from cspnet.cli.run_options import add_run_arguments, run_training_command
from cspnet.training.config import TrainConfig

# The options `cspnet demo` shares with `cspnet train` (the data and the schedule).
DEMO_FIELDS = ("data", "epochs", "batch_size", "lr", "img_size", "seed", "workers", "precision")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The data and schedule options of ``cspnet train``, which ``cspnet demo`` reuses."""
    from dataclasses import fields

    add_run_arguments(p, TrainConfig, skip=[f.name for f in fields(TrainConfig) if f.name not in DEMO_FIELDS])


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (Lightning: CPU, GPUs, DDP, multi-node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_run_arguments(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, TrainConfig)
