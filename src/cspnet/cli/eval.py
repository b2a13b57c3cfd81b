"""``cspnet eval --checkpoint C [--data PATH]``: top-1, top-5, loss and a confusion-matrix PNG.

Everything the model needs (name, config overrides, classes, input size, normalisation) comes from
the checkpoint written by ``cspnet train``. Without ``--data`` the run's own held-out split is
evaluated: the digits' for a digits run, the folder's ``val/`` or its seeded split for a folder run
(the checkpoint records the folder in ``train_config``). The evaluation resize follows timm's
``crop_pct`` (``--crop-pct``, default: the run's, else 0.875 for folders and 1.0 for the digits).
Images that cannot be decoded are left out and counted (``skipped_images`` in ``eval.json``).
"""

from __future__ import annotations

import argparse

from cspnet.cli.backend_options import add_backend_option, load_for_cli
from cspnet.cli.options import add_crop_pct, add_inference_precision, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a `cspnet train` checkpoint or an exported file (top-1, top-5, loss, confusion matrix)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet train`, "
                   "or a .onnx / TorchScript file written by `cspnet export`")
    p.add_argument("--data", default=None, help="'digits' (held-out split) or a folder: DATA/val/<class>/*, "
                   "or DATA/<class>/* (all of it is evaluated); default: the held-out split of the data "
                   "the checkpoint was trained on")
    p.add_argument("--model", help="fail unless the checkpoint holds this model")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate the raw weights, not the EMA")
    add_inference_precision(p)
    add_crop_pct(p)
    add_backend_option(p)
    p.add_argument("--output", metavar="DIR", help="where confusion_matrix.png and eval.json go "
                   "(default: the checkpoint's folder)")
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.detect import _output_folder
    from cspnet.cli.main import CLIError
    from cspnet.cli.options import resolve_crop_pct
    from cspnet.data.transforms import check_crop_pct
    from cspnet.evaluation import evaluate_classifier, evaluation_set
    from cspnet.io import atomic_path, atomic_write_text, dumps_json
    from cspnet.training.plots import plot_confusion_matrix

    if args.crop_pct is not None:
        check_crop_pct(args.crop_pct)  # before the checkpoint is read
    if args.workers < 0:
        raise CLIError(f"--workers {args.workers} is invalid: expected 0 or more")
    out = _output_folder(args.output, args.checkpoint)  # a read-only folder fails now, not after the evaluation
    model = load_for_cli(args.checkpoint, args, expected_model=args.model, ema=args.ema, batch_size=args.batch_size)
    info = model.info  # class names, input size and normalisation, from the checkpoint or the file
    run_config = model.trained.train_config if model.trained is not None else {}  # an exported file has none
    # --crop-pct, else the run's, else what an exported file records, else the data's default.
    use_file = args.crop_pct is None and not run_config and info.crop_pct is not None
    crop_pct = info.crop_pct if use_file else resolve_crop_pct(args.crop_pct, run_config, args.data)
    dataset = evaluation_set("classification", run_config, info.img_size, info.class_names, args.data,
                             crop_pct=crop_pct)  # fmt: skip
    tally = evaluate_classifier(model, dataset, args.batch_size, args.workers)
    if not tally.images:
        raise CLIError(f"none of the {tally.skipped} image(s) could be decoded")
    seen = tally.images
    result = {"checkpoint": str(args.checkpoint), "model": info.model_name, "backend": model.backend,
              "precision": model.precision, "weights": model.trained.weights if model.trained is not None else "file",
              "crop_pct": crop_pct, "images": seen, "skipped_images": tally.skipped,
              "top1": round(tally.top1, 4), "top5": round(tally.top5, 4), "loss": round(tally.loss, 6)}  # fmt: skip
    atomic_write_text(out / "eval.json", dumps_json(result))  # a NaN loss is written as null
    with atomic_path(out / "confusion_matrix.png") as tmp:
        plot_confusion_matrix(tally.confusion, list(info.class_names), tmp)
    note = f"  ({tally.skipped} undecodable image(s) left out)" if tally.skipped else ""
    print(f"{info.model_name} ({model.backend} {model.precision}) on {seen} images: top-1 {result['top1']:.2f}%  "
          f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  (confusion matrix: {out / 'confusion_matrix.png'})"
          f"{note}")  # fmt: skip
    return 0
