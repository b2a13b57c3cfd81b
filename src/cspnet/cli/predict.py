"""``cspnet predict IMAGE... --checkpoint C [--topk K]``: the most likely classes of each image.

``--checkpoint`` is a ``cspnet train`` checkpoint (the model is rebuilt with its class names and
folded for inference: conv/BN folding, pools before 1x1 convs, channels-last) or a file written by
``cspnet export`` (``.onnx``, TorchScript), which carries its class names and preprocessing.
``--backend`` picks the engine; ``--precision bf16`` computes in bfloat16. Images get the
evaluation resize (``--crop-pct``, as in ``cspnet eval``). An image that cannot be read (missing,
not an image, truncated, larger than Pillow's decompression-bomb limit) is skipped with a warning;
the others are still classified.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cspnet.cli.backend_options import add_backend_option, load_for_cli
from cspnet.cli.options import add_crop_pct, add_inference_precision, positive_int

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a `cspnet train` checkpoint or an exported file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet train`, "
                   "or a .onnx / TorchScript file written by `cspnet export`")
    p.add_argument("--topk", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--model", help="fail unless the checkpoint holds this model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_inference_precision(p)
    add_crop_pct(p)
    add_backend_option(p)
    p.set_defaults(func=run)  # fmt: skip


def _crop_pct(args: argparse.Namespace, model: Any) -> float | None:
    """--crop-pct, else the run's (a training checkpoint), else the exported file's rule."""
    from cspnet.cli.options import resolve_crop_pct

    if args.crop_pct is None and model.trained is None:
        return model.info.crop_pct  # None: the file's images were stretched, not cropped
    return resolve_crop_pct(args.crop_pct, model.trained.train_config if model.trained is not None else {})


def _classify(model: Any, batch: list[tuple[str, Any]], k: int) -> list[dict[str, Any]]:
    """The top ``k`` classes of each ``(name, uint8 image)``."""
    import torch

    probs = model.probabilities(model.preprocess(torch.stack([image for _, image in batch])))
    top = probs.topk(k, dim=1)
    names = model.info.class_names
    return [
        {"image": name, "predictions": [{"label": names[int(i)], "probability": round(float(p), 6)}
                                        for p, i in zip(values, indices)]}
        for (name, _), values, indices in zip(batch, top.values, top.indices)
    ]  # fmt: skip


def _predict_all(args: argparse.Namespace, model: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable image of ``args.images``, in batches of ``--batch-size``; and the unreadable ones."""
    from cspnet.data import read_image

    crop_pct = _crop_pct(args, model)
    k = min(args.topk, len(model.info.class_names))
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    pending: list[tuple[str, Any]] = []
    for path in args.images:
        try:
            pending.append((path, read_image(path, model.info.img_size, crop_pct)))
        except (ValueError, OSError) as exc:  # one bad image is reported, the others still predicted
            failed.append(path)
            log.warning("skipped %s", exc)
        if len(pending) == args.batch_size:
            results += _classify(model, pending, k)
            pending = []
    if pending:
        results += _classify(model, pending, k)
    return results, failed


def run(args: argparse.Namespace) -> int:
    import sys

    from cspnet.cli.main import CLIError
    from cspnet.data.transforms import check_crop_pct
    from cspnet.io import dumps_json

    if args.crop_pct is not None:
        check_crop_pct(args.crop_pct)  # before the checkpoint is read
    if args.topk < 1:
        raise CLIError(f"--topk {args.topk} is invalid: expected a positive integer")
    model = load_for_cli(args.checkpoint, args, expected_model=args.model,
                         batch_size=min(args.batch_size, len(args.images)))  # fmt: skip
    results, failed = _predict_all(args, model)
    if not results:
        raise CLIError(f"none of the {len(args.images)} image(s) can be read (first: {failed[0]})")
    if failed:
        print(f"cspnet predict: warning: skipped {len(failed)} unreadable image(s): {', '.join(failed[:3])}",
              file=sys.stderr)
    if args.json:
        print(dumps_json(results), end="")  # NaN probabilities (a broken model) as null: valid JSON
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in r["predictions"]))
    return 0
