"""``cspnet export``: write a model as ONNX or TorchScript and check the file against PyTorch.

Examples::

    cspnet export cspdarknet53 --format onnx --output cspdarknet53.onnx
    cspnet export cspdensenet121 --checkpoint weights.safetensors --num-classes 10 --format torchscript --output m.pt
    cspnet export --checkpoint runs/exp/last.ckpt --format onnx --output model.onnx   # name read from the checkpoint
    cspnet export cspdensenet_bc40_efm --format onnx --output det.onnx                  # a detector: `detect export`

The file is run (onnxruntime / ``torch.jit.load``) on a random batch of another size than the export
batch; the command fails if its outputs differ from PyTorch's by more than ``--tolerance`` relative.
``--output`` is checked before anything is built (a folder or an unwritable place is a one-line
error) and written through :func:`cspnet.io.write_checked`: a temporary file in the same folder,
checked, and moved into place only when it passed (a symlink at ``--output`` is replaced, its
target left alone); a file that failed its check, an interrupted export or a full disk leave
``--output`` as it was. A weight file whose classifier does
not match ``--num-classes`` loads without it, with a warning (the classifier stays random).

A detector (a registered detector, or a ``cspnet detect train`` checkpoint) is exported by
``cspnet detect export`` with the same file, weights, size, int8 and tolerance options: ONNX with
its decoding inside and its metadata (``cspnet detect export --help`` for NMS and class names).
"""

from __future__ import annotations

import argparse
from typing import Any

from cspnet.cli.backend_options import add_export_engine_options, export_engine_options

DEFAULT_TOLERANCE = 1e-4

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
    add_export_engine_options(p)
    p.set_defaults(func=run)  # fmt: skip


def build_model_from_args(args: argparse.Namespace) -> tuple[Any, int, Any]:
    """The model to export, with its weights, its input side and (for a ``cspnet train``
    checkpoint) the :class:`~cspnet.trained.TrainedModel` it came from, else ``None``.

    A ``cspnet train`` checkpoint brings its model name, config overrides, classes, input size and
    EMA weights (exactly what ``cspnet predict`` runs); any other weight file needs MODEL.
    """
    from cspnet.cli.main import CLIError
    from cspnet.metadata import check_img_size
    from cspnet.models import create_model, get_model_entry
    from cspnet.models.registry import require_classifier
    from cspnet.trained import is_training_checkpoint, load_trained

    if args.img_size is not None:
        check_img_size(args.img_size)  # the range before building anything; the stride below
    if args.num_classes is not None and args.num_classes < 1:
        raise CLIError(f"--num-classes {args.num_classes} is invalid: an exported file is a classifier with one "
                       "class name per output; give at least 1")  # fmt: skip

    if args.checkpoint and is_training_checkpoint(args.checkpoint):
        trained = load_trained(args.checkpoint, expected_model=args.model, task="classification")
        if args.num_classes is not None and args.num_classes != len(trained.class_names):
            raise CLIError(f"--num-classes {args.num_classes} contradicts the checkpoint's {len(trained.class_names)} classes")
        model, default_size = trained.model, trained.img_size
    else:
        trained = None
        if not args.model:
            raise CLIError("name the model (e.g. `cspnet export cspdarknet53 ...`): only `cspnet train` checkpoints say which it is")
        require_classifier(args.model, "cspnet export")
        num_classes = args.num_classes if args.num_classes is not None else 1000
        model = create_model(args.model, pretrained=args.checkpoint or False, num_classes=num_classes)
        default_size = get_model_entry(args.model).input_size[-1]
    img_size = args.img_size if args.img_size is not None else default_size
    check_img_size(img_size, model)
    return model, img_size, trained


def _is_detector(args: argparse.Namespace) -> bool:
    """Whether the model to export is a detector: a registered one, or a ``detect train`` checkpoint."""
    from cspnet.models import get_model_entry
    from cspnet.trained import is_training_checkpoint

    if args.checkpoint and is_training_checkpoint(args.checkpoint):
        from cspnet.convert import load_torch_file

        ckpt = load_torch_file(args.checkpoint, "training checkpoint")
        try:  # a checkpoint whose task and model disagree is the checkpoint reader's to report
            return bool(ckpt.get("task") == "detection" and get_model_entry(ckpt["model_name"]).task == "detection")
        except ValueError:
            return False
    return bool(args.model) and get_model_entry(args.model).task == "detection"


def _export_detector(args: argparse.Namespace) -> int:
    """``cspnet export`` of a detector: ``cspnet detect export`` with the options both commands have."""
    from cspnet.cli.detect import run_export
    from cspnet.cli.main import CLIError
    from cspnet.ops.thresholds import PREDICT

    if args.fmt != "onnx" or args.preprocessing_in_graph or not args.optimize or args.onnx_exporter != "torchscript":
        raise CLIError("a detector exports to ONNX with its decoding inside and its metadata (`cspnet detect "
                       "export`): use --format onnx without --preprocessing-in-graph, --no-optimize, --onnx-exporter")
    detect_args = argparse.Namespace(
        model=args.model, checkpoint=args.checkpoint, names=None, num_classes=args.num_classes, output=args.output,
        img_size=args.img_size, nms=False, conf=PREDICT.conf_threshold, iou=PREDICT.iou_threshold,
        max_detections=PREDICT.max_detections, int8=args.int8, calibration_data=args.calibration_data,
        calibration_images=args.calibration_images, backend="onnxruntime", precision="fp32", ema=True,
        int8_engine=args.int8_engine,
        tolerance=args.tolerance,
    )  # fmt: skip
    return run_export(detect_args)


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.export import EXPORT_FORMATS, export_model
    from cspnet.io import check_output_file

    if args.fmt not in EXPORT_FORMATS:
        raise CLIError(f"--format {args.fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}")
    if _is_detector(args):
        return _export_detector(args)
    output = check_output_file(args.output)
    if not args.tolerance >= 0:  # also NaN
        raise CLIError(f"--tolerance {args.tolerance} is invalid: expected a relative difference >= 0")
    model, img_size, trained = build_model_from_args(args)
    options = {"exporter": args.onnx_exporter} if args.fmt == "onnx" else {}
    engine_options = export_engine_options(args, model, img_size, trained)  # metadata, int8, preprocessing
    # A file that fails the check is not kept: export_model raises before moving it to --output.
    result = export_model(model, args.fmt, output, img_size, optimize=args.optimize, tolerance=args.tolerance,
                          **engine_options, **options)  # fmt: skip
    print(result.summary())
    return 0
