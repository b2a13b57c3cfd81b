"""Command-line options for the inference engines: ``--backend`` and export's int8 / metadata options.

``predict``, ``eval`` and ``benchmark`` take ``--backend``; ``export`` takes ``--int8
--calibration-data PATH|digits`` and ``--preprocessing-in-graph``. The helpers turn the library's
errors (a missing engine, a file that is not a model) into one-line CLI errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cspnet.precision import BACKENDS as BACKEND_CHOICES  # stdlib-only module: no torch at parse time


def add_backend_option(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """``--backend torch|onnxruntime|openvino`` (``multiple``: one or more, for ``benchmark``)."""
    help_text = ("inference engine: torch (PyTorch, folded, channels-last), onnxruntime, or openvino "
                 '(pip install "cspnet[openvino]"); default torch')  # fmt: skip
    if multiple:
        parser.add_argument("--backend", nargs="+", choices=BACKEND_CHOICES, default=["torch"], metavar="BACKEND",
                            help=help_text.replace("inference engine:", "one or more inference engines:"))  # fmt: skip
    else:
        parser.add_argument("--backend", choices=BACKEND_CHOICES, default="torch", help=help_text)


def check_backends_installed(backends: list[str]) -> None:
    """A one-line ``CLIError`` naming the pip extra for the first engine that is not installed."""
    from cspnet.cli.main import CLIError
    from cspnet.inference.engines import BackendNotInstalledError, import_backend

    for backend in backends:
        if backend == "torch":
            continue
        try:
            import_backend(backend)
        except BackendNotInstalledError as exc:
            raise CLIError(str(exc)) from exc


def warn_if_bf16_is_emulated() -> None:
    """Warn on stderr when the CPU has no native bf16 (bf16 is then several times slower than fp32)."""
    from cspnet.cpu import has_native_bf16

    if has_native_bf16() is False:
        print("cspnet: warning: this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag): bf16 is emulated "
              "and much slower than fp32 here", file=sys.stderr)  # fmt: skip


def load_for_cli(source: str | os.PathLike[str], args: argparse.Namespace, **options: Any) -> Any:
    """``cspnet.inference.load_model(source, args.backend, ...)`` with one-line errors.

    ``--precision fp32`` (the default) runs a file in the precision it was exported in (an int8
    file stays int8); ``bf16`` asks for bfloat16 compute.
    """
    from cspnet.cli.main import CLIError
    from cspnet.inference import BackendNotInstalledError, load_model

    check_backends_installed([args.backend])
    if not os.path.exists(source):  # never a registered name here: a random-weight model answers nothing
        raise CLIError(f"checkpoint file not found: {source}")
    precision = getattr(args, "precision", "fp32")
    if precision == "bf16":
        warn_if_bf16_is_emulated()
    options.setdefault("task", "classification")  # a detector goes to `cspnet detect ...`, which says so
    try:
        return load_model(source, args.backend, precision=None if precision == "fp32" else precision, **options)
    except BackendNotInstalledError as exc:
        raise CLIError(str(exc)) from exc


# --- export -----------------------------------------------------------------------------------------


def add_export_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--int8``, ``--calibration-data``, ``--calibration-images``, ``--preprocessing-in-graph``."""
    parser.add_argument("--int8", action="store_true",
                        help="onnx: post-training static int8 quantisation (onnxruntime, QDQ, per-channel), "
                        "calibrated on --calibration-data")  # fmt: skip
    parser.add_argument("--calibration-data", metavar="PATH|digits",
                        help="int8: 'digits' or an image folder (DATA/train/<class>/* or DATA/<class>/*) whose "
                        "images set the int8 ranges; images it does not use check the result")  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help="int8: images used for calibration (default 128)")  # fmt: skip
    parser.add_argument("--int8-engine", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="int8: the engine the file is for (onnxruntime: uint8 activations with a zero point; "
                        "openvino: symmetric int8, which its CPU plugin folds into int8 convolutions)")  # fmt: skip
    parser.add_argument("--preprocessing-in-graph", action="store_true",
                        help="the file takes uint8 (N, H, W, 3) RGB pixels and returns probabilities "
                        "(normalisation and softmax in the graph)")  # fmt: skip


def export_engine_options(args: argparse.Namespace, model: Any, img_size: int, trained: Any = None) -> dict[str, Any]:
    """Keyword arguments of ``export_model`` from the engine options: metadata, int8, preprocessing.

    The metadata (class names, mean and std) comes from ``trained`` (the checked
    :class:`~cspnet.trained.TrainedModel` of a ``cspnet train`` checkpoint) when there is one;
    otherwise class indices and ImageNet statistics.
    """
    from cspnet.cli.main import CLIError

    if args.int8 and not args.calibration_data:
        raise CLIError("--int8 needs --calibration-data PATH|digits (the images that set the int8 ranges)")
    if args.calibration_data and not args.int8:
        raise CLIError("--calibration-data is for --int8 only")
    if args.int8 and args.fmt != "onnx":
        raise CLIError(f"--int8 writes ONNX: use --format onnx, not {args.fmt}")
    if args.calibration_images is not None and args.calibration_images < 1:
        raise CLIError(f"--calibration-images {args.calibration_images} is invalid: expected a positive integer")
    if args.calibration_data and args.calibration_data != "digits" and not os.path.isdir(args.calibration_data):
        raise CLIError(f"--calibration-data {args.calibration_data}: not 'digits' and not a folder")
    return {
        "info": _export_info(args, model, img_size, trained),
        "preprocessing_in_graph": args.preprocessing_in_graph,
        "int8_calibration": args.calibration_data if args.int8 else None,
        "calibration_images": args.calibration_images,
        "int8_engine": args.int8_engine,
    }


def _export_info(args: argparse.Namespace, model: Any, img_size: int, trained: Any) -> Any:
    from cspnet.metadata import ModelInfo, default_info

    if trained is not None:
        from cspnet.data.transforms import run_crop_pct

        return ModelInfo(
            trained.name, tuple(trained.class_names), img_size, tuple(trained.mean), tuple(trained.std),
            **ModelInfo.resize_fields(run_crop_pct(trained.train_config)),  # type: ignore[arg-type]
        )  # fmt: skip
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    name = args.model or getattr(model, "name", "") or type(model).__name__
    return default_info(name, num_classes, img_size)
