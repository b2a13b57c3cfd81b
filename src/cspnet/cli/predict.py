"""``cspnet predict IMAGE... --checkpoint C [--topk K]``: the most likely classes of each image.

The model is rebuilt from the checkpoint (class names included) and folded for inference
(``cspnet.export.optimize_for_inference``: conv/BN folding, pools before 1x1 convs, channels-last;
``--precision bf16`` casts weights and inputs).
"""

from __future__ import annotations

import argparse
import logging

from cspnet.cli.backend_options import add_backend_option, load_for_cli
from cspnet.cli.options import add_inference_precision

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a `cspnet train` checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet train`, "
                   "or a .onnx / TorchScript file written by `cspnet export`")
    p.add_argument("--topk", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--model", help="fail unless the checkpoint holds this model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_inference_precision(p)
    add_backend_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from cspnet.cli.main import CLIError
    from cspnet.data import read_image

    if args.topk < 1:
        raise CLIError(f"--topk {args.topk} is invalid: expected a positive integer")
    model = load_for_cli(args.checkpoint, args, expected_model=args.model, batch_size=len(args.images))
    trained = model.info  # class names, input size and normalisation, from the checkpoint or the file
    images, names, failed = [], [], []
    for path in args.images:
        try:
            images.append(read_image(path, trained.img_size))
            names.append(path)
        except (ValueError, OSError) as exc:
            failed.append(path)
            log.warning("skipped %s", exc)
    if not images:
        raise CLIError(f"none of the {len(args.images)} image(s) can be read (first: {failed[0]})")
    if failed:
        print(f"cspnet predict: warning: skipped {len(failed)} unreadable image(s): {', '.join(failed[:3])}",
              file=sys.stderr)
    k = min(args.topk, len(trained.class_names))
    probs = model.probabilities(model.preprocess(torch.stack(images)))
    top = probs.topk(k, dim=1)
    results = [
        {"image": name, "predictions": [{"label": trained.class_names[int(i)], "probability": round(float(p), 6)}
                                        for p, i in zip(values, indices)]}
        for name, values, indices in zip(names, top.values, top.indices)
    ]  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in r["predictions"]))
    return 0
