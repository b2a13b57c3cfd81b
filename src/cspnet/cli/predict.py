"""``cspnet predict IMAGE... --checkpoint C [--topk K]``: the most likely classes of each image.

The model is rebuilt from the checkpoint (class names included) and folded for inference
(``cspnet.export.optimize_for_inference``: conv/BN folding, pools before 1x1 convs, channels-last;
``--precision bf16`` casts weights and inputs). Images get the evaluation resize (``--crop-pct``, as
in ``cspnet eval``). An image that cannot be read (missing, not an image, truncated, larger than
Pillow's decompression-bomb limit) is skipped with a warning; the others are still classified.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cspnet.cli.options import add_crop_pct, add_inference_precision, inference_dtype, positive_int

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a `cspnet train` checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet train`")
    p.add_argument("--topk", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--model", help="fail unless the checkpoint holds this model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_inference_precision(p)
    add_crop_pct(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from cspnet.cli.main import CLIError
    from cspnet.cli.options import resolve_crop_pct
    from cspnet.data import read_image
    from cspnet.data.transforms import check_crop_pct
    from cspnet.export import optimize_for_inference
    from cspnet.io import dumps_json
    from cspnet.training import load_trained

    if args.crop_pct is not None:
        check_crop_pct(args.crop_pct)  # before the checkpoint is read
    if args.topk < 1:
        raise CLIError(f"--topk {args.topk} is invalid: expected a positive integer")
    trained = load_trained(args.checkpoint, expected_model=args.model)
    crop_pct = resolve_crop_pct(args.crop_pct, trained.train_config)
    dtype = inference_dtype(args.precision)
    model = optimize_for_inference(trained.model, dtype=dtype)
    k = min(args.topk, len(trained.class_names))
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    pending: list[tuple[str, torch.Tensor]] = []

    def classify(batch: list[tuple[str, torch.Tensor]]) -> None:
        x = trained.preprocess(torch.stack([image for _, image in batch]))
        with torch.inference_mode():
            probs = model(x.to(dtype=dtype, memory_format=torch.channels_last)).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for (name, _), values, indices in zip(batch, top.values, top.indices):
            predictions = [{"label": trained.class_names[int(i)], "probability": round(float(p), 6)}
                           for p, i in zip(values, indices)]  # fmt: skip
            results.append({"image": name, "predictions": predictions})

    for path in args.images:
        try:
            pending.append((path, read_image(path, trained.img_size, crop_pct)))
        except (ValueError, OSError) as exc:  # one bad image is reported, the others still predicted
            failed.append(path)
            log.warning("skipped %s", exc)
        if len(pending) == args.batch_size:
            classify(pending)
            pending = []
    if pending:
        classify(pending)
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
