"""``cspnet eval --checkpoint C [--data PATH]``: top-1, top-5, loss and a confusion-matrix PNG.

Everything the model needs (name, config overrides, classes, input size, normalisation) comes from
the checkpoint written by ``cspnet train``; ``--data`` defaults to the digits' held-out split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cspnet.cli.backend_options import add_backend_option, load_for_cli
from cspnet.cli.options import add_inference_precision


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a `cspnet train` checkpoint (top-1, top-5, loss, confusion matrix)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet train`")
    p.add_argument("--data", default="digits", help="'digits' (held-out split) or a folder: DATA/val/<class>/*, "
                   "or DATA/<class>/* (all of it is evaluated)")
    p.add_argument("--model", help="fail unless the checkpoint holds this model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate the raw weights, not the EMA")
    add_inference_precision(p)
    add_backend_option(p)
    p.add_argument("--output", metavar="DIR", help="where confusion_matrix.png and eval.json go "
                   "(default: the checkpoint's folder)")
    p.set_defaults(func=run)  # fmt: skip


def _dataset(data: str, img_size: int, class_names: list[str]):
    from cspnet.data import ImageFolder, load_digits_split

    if data == "digits":
        return load_digits_split(img_size)[1]
    root = Path(data)
    folder = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(folder, img_size, classes=class_names)


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from cspnet.training.plots import plot_confusion_matrix

    model = load_for_cli(args.checkpoint, args, expected_model=args.model, ema=args.ema, batch_size=args.batch_size)
    trained = model.info  # class names, input size and normalisation, from the checkpoint or the file
    dataset = _dataset(args.data, trained.img_size, trained.class_names)
    n = len(trained.class_names)
    confusion = torch.zeros(n, n, dtype=torch.long)
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    k = min(5, n)
    with torch.inference_mode():
        for images, targets in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers):
            logits = model.logits(model.preprocess(images))
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == targets).sum())
            top5 += int((best == targets[:, None]).any(1).sum())
            seen += len(targets)
            confusion.index_put_((targets, best[:, 0]), torch.ones_like(targets), accumulate=True)
    result = {"checkpoint": str(args.checkpoint), "model": trained.model_name, "precision": model.precision,
              "backend": model.backend, "images": seen,
              "top1": round(100 * top1 / seen, 4), "top5": round(100 * top5 / seen, 4),
              "loss": round(loss_sum / seen, 6)}  # fmt: skip
    out = Path(args.output) if args.output else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion_matrix(confusion, trained.class_names, out / "confusion_matrix.png")
    print(f"{trained.model_name} ({model.backend} {model.precision}) on {seen} images: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
          f"loss {result['loss']:.4f}  (confusion matrix: {out / 'confusion_matrix.png'})")
    return 0
