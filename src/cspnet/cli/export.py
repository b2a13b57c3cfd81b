"""``cspnet export``: write a model as ONNX or TorchScript and check the file against PyTorch.

Examples::

    cspnet export cspdarknet53 --format onnx --output cspdarknet53.onnx
    cspnet export cspdensenet121 --checkpoint weights.safetensors --num-classes 10 --format torchscript --output m.pt
    cspnet export --checkpoint runs/exp/last.ckpt --format onnx --output model.onnx   # name read from the checkpoint

The file is run (onnxruntime / ``torch.jit.load``) on a random batch of another size than the export
batch; the command fails if its outputs differ from PyTorch's by more than ``--tolerance`` relative.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_TOLERANCE = 1e-4

# Where a training checkpoint may keep the model's identity: top level or one of these sections.
_METADATA_SECTIONS = ("hyper_parameters", "hparams", "config", "meta", "metadata", "model_config")
_NAME_KEYS = ("model_name", "model", "arch", "name")
_OVERRIDE_KEYS = ("model_overrides", "overrides", "model_kwargs")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript (checked against PyTorch)",
        description="Export a model, folded for inference, to ONNX (dynamic batch) or TorchScript, then run the "
        "file on a batch of another size and compare it with PyTorch.",
    )
    p.add_argument("model", nargs="?", help="registered model name; optional when the checkpoint names it")
    p.add_argument("--checkpoint", metavar="FILE", help="weights: any file create_model(pretrained=...) reads, "
                   "or a `cspnet train` checkpoint (model name, overrides and classes are read from it)")
    p.add_argument("--format", required=True, dest="fmt", metavar="{onnx,torchscript}",
                   help="onnx (TorchScript-based exporter, opset 18) or torchscript (scripted and frozen)")
    p.add_argument("--output", required=True, metavar="FILE", help="file to write")
    p.add_argument("--img-size", type=int, metavar="N", help="input side used for export and the check "
                   "(default: the model's registered size)")
    p.add_argument("--num-classes", type=int, metavar="K", help="classifier outputs (default: the checkpoint's, else 1000)")
    p.add_argument("--onnx-exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter (default: torchscript, fast and robust; dynamo: torch.export-based)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="export the model as built (no conv/BN folding)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="R",
                   help=f"largest accepted relative difference from PyTorch (default {DEFAULT_TOLERANCE:g})")
    p.set_defaults(func=run)  # fmt: skip


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Model name, config overrides and class count stored in a training checkpoint (``{}`` if none).

    Reads ``torch.save`` files with ``weights_only=True`` (no code runs) and the ``__metadata__`` of
    ``.safetensors`` files. Keys are looked up at the top level and in Lightning's
    ``hyper_parameters`` (and similar) sections: ``model_name``/``model``/``arch``, ``num_classes``,
    ``model_overrides``/``overrides``, ``img_size`` (``cspnet train`` writes them at the top level).
    """
    import torch

    from cspnet.convert import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                obj: Any = dict(f.metadata() or {})
        elif path.suffix.lower() == ".weights":
            return {}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        return {}
    sections = [obj] + [obj[k] for k in _METADATA_SECTIONS if isinstance(obj.get(k), dict)]
    found: dict[str, Any] = {}
    for section in sections:
        for key in _NAME_KEYS:
            if isinstance(section.get(key), str) and "name" not in found:
                found["name"] = section[key]
        for key in ("num_classes", "img_size"):
            if key not in found and isinstance(section.get(key), (int, str)) and str(section[key]).isdigit():
                found[key] = int(section[key])
        for key in _OVERRIDE_KEYS:
            if isinstance(section.get(key), dict) and "overrides" not in found:
                found["overrides"] = dict(section[key])
    return found


def build_model_from_args(args: argparse.Namespace) -> tuple[Any, int]:
    """The model named by ``args.model`` / the checkpoint, with its weights, and its input side."""
    from cspnet import create_model, get_model_entry
    from cspnet.cli.main import CLIError

    meta = checkpoint_metadata(args.checkpoint) if args.checkpoint else {}
    name = args.model or meta.get("name")
    if not name:
        raise CLIError("name the model (e.g. `cspnet export cspdarknet53 ...`): the checkpoint does not say which it is")
    if args.model and meta.get("name") and meta["name"] != args.model:
        raise CLIError(f"the checkpoint was trained as {meta['name']!r}, not {args.model!r}; drop MODEL or fix it")
    entry = get_model_entry(name)
    num_classes = args.num_classes if args.num_classes is not None else meta.get("num_classes", 1000)
    model = create_model(
        name, pretrained=args.checkpoint or False, num_classes=num_classes, **meta.get("overrides", {})
    )
    img_size = args.img_size if args.img_size is not None else meta.get("img_size", entry.input_size[-1])
    if img_size < 1:
        raise CLIError(f"--img-size {img_size} is invalid: expected a positive integer")
    return model, img_size


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.export import EXPORT_FORMATS, export_model

    if args.fmt not in EXPORT_FORMATS:
        raise CLIError(f"--format {args.fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}")
    model, img_size = build_model_from_args(args)
    options = {"exporter": args.onnx_exporter} if args.fmt == "onnx" else {}
    result = export_model(model, args.fmt, args.output, img_size, optimize=args.optimize, **options)
    print(result.summary())
    if not result.max_rel_diff <= args.tolerance:  # also catches NaN
        raise CLIError(
            f"{result.path} does not reproduce PyTorch: relative difference {result.max_rel_diff:.3g} "
            f"exceeds {args.tolerance:g}"
        )
    return 0
