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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _dataset(data: str | None, trained: Any, crop_pct: float) -> Any:
    """The images to evaluate: ``data`` as given, or (``None``) the run's own held-out split."""
    from cspnet.cli.main import CLIError
    from cspnet.data import ImageFolder, load_digits_split, load_folder_split

    size, class_names, config = trained.img_size, trained.class_names, trained.train_config
    own_split = data is None
    if own_split:
        data = str(config.get("data") or "digits")
    assert data is not None
    if data == "digits":
        if len(class_names) != 10:
            raise CLIError(f"the checkpoint has {len(class_names)} classes, the digits 10: pass --data FOLDER")
        return load_digits_split(size, crop_pct=crop_pct)[1]
    root = Path(data)
    if own_split:
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root} (the run's data; pass --data to evaluate elsewhere)")
        if (root / "train").is_dir() and (root / "val").is_dir():  # no need to scan the training images
            return ImageFolder(root / "val", size, classes=class_names, crop_pct=crop_pct)
        val = load_folder_split(root, size, float(config.get("val_fraction", 0.2)), seed=0, crop_pct=crop_pct)[1]
        if list(getattr(val, "classes", class_names)) != list(class_names):
            raise CLIError(f"{root} no longer has the run's classes ({', '.join(class_names[:5])}...): pass --data")
        return val
    folder = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(folder, size, classes=class_names, crop_pct=crop_pct)


class _Decodable:
    """Items of ``dataset`` with ``None`` for an image that cannot be decoded (no substitution)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.load = getattr(dataset, "load", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.load(i)


def _collate(items: list[Any]) -> tuple[Any, Any, int]:
    """A batch of the decodable items and how many were not."""
    import torch

    kept = [item for item in items if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(items)
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), len(items) - len(kept)


@dataclass
class _Tally:
    """Running counts of an evaluation."""

    confusion: Any
    loss_sum: float = 0.0
    top1: int = 0
    top5: int = 0
    seen: int = 0
    skipped: int = 0

    def add(self, logits: Any, targets: Any, k: int) -> None:
        import torch
        import torch.nn.functional as F

        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        best = logits.topk(k, dim=1).indices
        self.top1 += int((best[:, 0] == targets).sum())
        self.top5 += int((best == targets[:, None]).any(1).sum())
        self.seen += len(targets)
        self.confusion.index_put_((targets, best[:, 0]), torch.ones_like(targets), accumulate=True)


def _evaluate(model: Any, dataset: Any, args: argparse.Namespace, num_classes: int) -> _Tally:
    """Every decodable image of ``dataset`` through ``model`` (undecodable ones are counted, not used)."""
    import torch
    from torch.utils.data import DataLoader

    tally = _Tally(torch.zeros(num_classes, num_classes, dtype=torch.long))
    decodable: Any = _Decodable(dataset)  # a map-style dataset (DataLoader needs only len and getitem)
    loader: DataLoader[Any] = DataLoader(decodable, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=_collate)  # fmt: skip
    with torch.inference_mode():
        for images, targets, dropped in loader:
            tally.skipped += dropped
            if len(targets):
                tally.add(model.logits(model.preprocess(images)), targets, min(5, num_classes))
    return tally


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.cli.options import resolve_crop_pct
    from cspnet.data.transforms import check_crop_pct
    from cspnet.io import atomic_path, atomic_write_text, dumps_json
    from cspnet.training.plots import plot_confusion_matrix

    if args.crop_pct is not None:
        check_crop_pct(args.crop_pct)  # before the checkpoint is read
    if args.workers < 0:
        raise CLIError(f"--workers {args.workers} is invalid: expected 0 or more")
    out = Path(args.output) if args.output else Path(args.checkpoint).parent
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {out} is a file: eval writes eval.json and confusion_matrix.png into a folder")
    model = load_for_cli(args.checkpoint, args, expected_model=args.model, ema=args.ema, batch_size=args.batch_size)
    info = model.info  # class names, input size and normalisation, from the checkpoint or the file
    run_config = model.trained.train_config if model.trained is not None else {}  # an exported file has none
    # --crop-pct, else the run's, else what an exported file records, else the data's default.
    use_file = args.crop_pct is None and not run_config and info.crop_pct is not None
    crop_pct = info.crop_pct if use_file else resolve_crop_pct(args.crop_pct, run_config, args.data)
    dataset = _dataset(args.data, _Source(info.img_size, list(info.class_names), run_config), crop_pct)
    tally = _evaluate(model, dataset, args, len(info.class_names))
    if not tally.seen:
        raise CLIError(f"none of the {tally.skipped} image(s) could be decoded")
    seen = tally.seen
    result = {"checkpoint": str(args.checkpoint), "model": info.model_name, "backend": model.backend,
              "precision": model.precision, "weights": model.trained.weights if model.trained is not None else "file",
              "crop_pct": crop_pct, "images": seen, "skipped_images": tally.skipped,
              "top1": round(100 * tally.top1 / seen, 4), "top5": round(100 * tally.top5 / seen, 4),
              "loss": round(tally.loss_sum / seen, 6)}  # fmt: skip
    atomic_write_text(out / "eval.json", dumps_json(result))  # a NaN loss is written as null
    with atomic_path(out / "confusion_matrix.png") as tmp:
        plot_confusion_matrix(tally.confusion, list(info.class_names), tmp)
    note = f"  ({tally.skipped} undecodable image(s) left out)" if tally.skipped else ""
    print(f"{info.model_name} ({model.backend} {model.precision}) on {seen} images: top-1 {result['top1']:.2f}%  "
          f"top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  (confusion matrix: {out / 'confusion_matrix.png'})"
          f"{note}")  # fmt: skip
    return 0


@dataclass
class _Source:
    """What :func:`_dataset` needs to know of the evaluated model."""

    img_size: int
    class_names: list[str]
    train_config: dict[str, Any]
