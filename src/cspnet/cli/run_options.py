"""The options of every training command, generated from its config class, and the run wrapper they share.

``cspnet train`` and ``cspnet detect train`` take one option per field of their config
(:class:`~cspnet.training.config.TrainConfig`, :class:`~cspnet.training.detection_config.DetectionTrainConfig`):
the flag is the field's name (``batch_size`` -> ``--batch-size``), its type and choices come from
the field, its help from the field's ``doc`` and default. Adding a field to a config adds the flag.

Every option defaults to ``None`` ("not given"), so that ``--resume`` can tell the flags a user chose
from the run's own settings (:func:`given_settings`); the config's defaults apply to the rest.

>>> import argparse
>>> from cspnet.training.config import TrainConfig
>>> parser = argparse.ArgumentParser()
>>> add_run_arguments(parser, TrainConfig)
>>> given_settings(parser.parse_args(["--epochs", "3", "--set", "partial_ratio=0.25"]), TrainConfig)
{'model_overrides': {'partial_ratio': 0.25}, 'epochs': 3}
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides

# Fields that are not flags of their own: the model overrides are `--set FIELD=VALUE`.
_NOT_FLAGS = {"model_overrides"}
# Booleans that are off by default and only switched on (`--resume`, `--channels-last`); the others
# (`--ema`, `--augment`) also have their `--no-` form.
_SWITCHES = {"resume", "channels_last", "grad_checkpointing"}


def _value_type(annotation: Any) -> Any:
    """The scalar type of a resolved field annotation (``int | None`` -> ``int``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _help(f: dataclasses.Field, default: Any) -> str:
    doc = f.metadata.get("doc", "")
    shown = f" (default {default})" if default not in (None, "", False) and "default" not in doc else ""
    return f"{doc}{shown}" if doc else (f"default {default}" if default is not None else "")


def add_run_arguments(parser: argparse.ArgumentParser, config_class: type, skip: Collection[str] = ()) -> None:
    """One option per field of ``config_class`` (see the module docstring), ``--set`` for the model
    overrides; ``skip`` names fields that are not offered."""
    defaults = config_class()
    hints = typing.get_type_hints(config_class)
    add_config_overrides(parser)
    parser.set_defaults(overrides=None)
    for f in dataclasses.fields(config_class):
        if f.name in _NOT_FLAGS or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = _value_type(hints[f.name])
        help_text = _help(f, default)
        if kind is bool:
            action: Any = "store_true" if f.name in _SWITCHES else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=None, help=help_text)
        elif "choices" in f.metadata:
            parser.add_argument(flag, choices=f.metadata["choices"], default=None, help=help_text)
        else:
            metavar = "FILE" if f.name == "pretrained" else None
            parser.add_argument(flag, type=kind, default=None, help=help_text, metavar=metavar)


def given_settings(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The config fields the user set on the command line (options left at ``None`` are not given)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    given: dict[str, Any] = {}
    overrides = getattr(args, "overrides", None)
    if overrides:
        given["model_overrides"] = parse_overrides(overrides)
    for name, value in vars(args).items():
        if name in fields and name not in _NOT_FLAGS and value is not None:
            given[name] = value
    return given


INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def fit_resumably(command: str, output: str, fit: Callable[[], Any]) -> Any:
    """``fit()`` as a command runs it. Returns the fit's result, or an exit status:

    * a signal (Ctrl-C, SIGTERM from a scheduler) prints the resume command and gives ``128 + signal``
      (130, 143), never 0: an unfinished run is not a success;
    * a run folder that cannot be written, or a run that diverged, is a one-line error (with the
      resume command when the run has a checkpoint to resume from).
    """
    from cspnet.cli.main import CLIError
    from cspnet.training.files import RunFolderError
    from cspnet.training.resumable import TrainingDiverged

    resume = f"{command} --output {output} --resume"
    try:
        return fit()
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", 2))
        print(f"{command}: interrupted; resume with: {resume}", file=sys.stderr, flush=True)
        return 128 + signum
    except RunFolderError as exc:
        resumable = (Path(output) / "last.ckpt").is_file()
        raise CLIError(f"{exc}{f'; once fixed, resume with: {resume}' if resumable else ''}") from exc
    except TrainingDiverged as exc:
        raise CLIError(f"{exc} in {Path(output) / 'last.ckpt'}") from exc


def run_training_command(args: argparse.Namespace, config_class: type) -> int:
    """What ``cspnet train`` and ``cspnet detect train`` do: build the config from the flags, fit it,
    print the task's result line (one process of a distributed run prints)."""
    from cspnet.training import fit
    from cspnet.training.runner import is_launch_process
    from cspnet.training.tasks import get_task

    given = given_settings(args, config_class)
    config = config_class(**given)
    result = fit_resumably(config.command, config.output, lambda: fit(config, given=set(given)))
    if isinstance(result, int):
        return result
    if is_launch_process():
        print(f"{get_task(config.task).result_line(result.metrics)} -> {result.output}")
    return 0
