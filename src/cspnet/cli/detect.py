"""``cspnet detect train | val | predict | export``: the detection job, mirroring the classification commands.

Examples::

    cspnet detect train                                  # the small CSPDenseNet-EFM detector on the embedded digits
    cspnet detect train --data coco/instances_train.json --val-data coco/instances_val.json --img-size 416
    cspnet detect train --data data.yaml --epochs 50     # YOLO layout: images/ and labels/ folders
    cspnet detect train --output runs/detect --resume    # continue an interrupted run exactly
    cspnet detect val --checkpoint runs/detect/best.ckpt
    cspnet detect predict photos/ --checkpoint runs/detect/best.ckpt --output predictions/
    cspnet detect export --checkpoint runs/detect/best.ckpt --output detector.onnx --nms

``--data`` is ``digits`` (embedded: real handwritten digits on cluttered canvases, nothing
downloaded), a COCO instances ``.json`` (images beside it, or ``--images``) or a YOLO ``data.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.ops.thresholds import EVALUATE, PREDICT

_FIELD_OF = {"overrides": "model_overrides"}
_NOT_CONFIG = {"func", "command", "action", "verbose"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="train, evaluate, predict with and export object detectors",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    _add_train(actions)
    _add_val(actions)
    _add_predict(actions)
    _add_export(actions)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# -- train -----------------------------------------------------------------------------------------
def _add_train(actions: argparse._SubParsersAction) -> None:
    from cspnet.detection.loss import BOX_LOSSES
    from cspnet.detection.training.config import DEFAULT_DETECTOR, DetectionTrainConfig
    from cspnet.training.config import ACCELERATORS, OPTIMIZERS, PRECISIONS

    d = DetectionTrainConfig()
    p = actions.add_parser("train", help="train a detector (default: the embedded digits set)")
    p.add_argument("--model", help=f"registered detector (default {DEFAULT_DETECTOR}; `cspnet models '*_efm'`)")
    add_config_overrides(p)
    p.set_defaults(overrides=None)
    p.add_argument("--data", help="'digits' (embedded, default), a COCO instances .json or a YOLO data.yaml")
    p.add_argument("--images", help="COCO: the training image folder (default: beside the JSON)")
    p.add_argument("--val-data", help="COCO: the validation JSON (default: YOLO's val split, else a held-out share)")
    p.add_argument("--val-images", help="COCO: the validation image folder")
    p.add_argument("--val-fraction", type=float, help=f"held out when the data has no validation split (default {d.val_fraction})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"per process (default {d.batch_size})")
    p.add_argument("--lr", type=float, help="peak learning rate (default: adamw 1e-2 for digits, else 2e-3; sgd 0.01)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--weight-decay", type=float, help="default: adamw 0.05, sgd 5e-4")
    p.add_argument("--momentum", type=float, help=f"sgd momentum (default {d.momentum})")
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs}")
    p.add_argument("--img-size", type=int, help="input side, images letterboxed to it (default: 64 for digits, else the model's)")
    p.add_argument("--box-loss", choices=BOX_LOSSES, help=f"YOLOv3 offsets or an IoU loss (default {d.box_loss})")
    p.add_argument("--ignore-threshold", type=float, help=f"YOLOv3's objectness ignore IoU (default {d.ignore_threshold})")
    p.add_argument("--anchor-threshold", type=float,
                   help="also train every anchor whose shape IoU with a box exceeds this (YOLOv4's iou_thresh; default: "
                   "0.25 for digits, else 1 = YOLOv3's best anchor only)")
    p.add_argument("--hflip", type=float, help="flip probability (default: 0 for digits, else 0.5)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random affine, flip and colour jitter with the boxes (default on)")
    p.add_argument("--mosaic", type=float, metavar="P",
                   help="probability that a training image becomes a 2x2 mosaic of four (YOLOv4; default 0: off)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="EMA of the weights (default on)")
    p.add_argument("--precision", choices=PRECISIONS, help=f"default {d.precision}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: 0 for digits, else 4)")
    p.add_argument("--output", help=f"run folder (default {d.output})")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --output from its last.ckpt")
    p.add_argument("--pretrained", metavar="FILE", help="start from these weights")
    p.add_argument("--accelerator", choices=ACCELERATORS, help="default auto")
    p.add_argument("--devices", type=int, help="processes per node (default 1, or torchrun's)")
    p.add_argument("--num-nodes", type=int, help="machines (default 1)")
    p.add_argument("--checkpoint-every", type=int, help=f"steps between mid-epoch saves (default {d.checkpoint_every})")
    p.add_argument("--limit-train-batches", type=int, help="batches per epoch (debugging)")
    p.set_defaults(func=run_train)


def given_settings(args: argparse.Namespace) -> dict:
    from cspnet.detection.training.config import DetectionTrainConfig

    fields = set(DetectionTrainConfig.__dataclass_fields__)
    given = {}
    for dest, value in vars(args).items():
        field = _FIELD_OF.get(dest, dest)
        if field in fields and value is not None and dest not in _NOT_CONFIG:
            given[field] = parse_overrides(value) if field == "model_overrides" else value
    return given


def run_train(args: argparse.Namespace) -> int:
    from cspnet.cli.train import INTERRUPTED, fit_resumably
    from cspnet.detection.training import DetectionTrainConfig, fit_detector

    given = given_settings(args)
    config = DetectionTrainConfig(**given)
    result = fit_resumably("cspnet detect train", config.output, lambda: fit_detector(config, given=set(given)))
    if result is None:
        return INTERRUPTED
    m = result.metrics
    print(f"{m['model']}: mAP {_fmt(m['map'])}  mAP@.5 {_fmt(m['map50'])}  mAP@.75 {_fmt(m['map75'])}  "
          f"({m['train_time_s']:.0f}s) -> {result.output}")  # fmt: skip
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# -- val -------------------------------------------------------------------------------------------
def _add_val(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("val", help="COCO metrics of a `detect train` checkpoint on a validation set")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet detect train`")
    p.add_argument("--data", default="digits", help="'digits' (the embedded val split), a COCO .json or a YOLO data.yaml (val split)")
    p.add_argument("--images", help="COCO: the image folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--conf", type=float, default=EVALUATE.conf_threshold, help="score threshold (default %(default)s, as COCO evaluations)")
    p.add_argument("--iou", type=float, default=EVALUATE.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate the raw weights, not the EMA")
    p.add_argument("--output", metavar="DIR", help="where val.json goes (default: the checkpoint's folder)")
    p.set_defaults(func=run_val)


def _check_thresholds(conf: float, iou: float) -> None:
    from cspnet.cli.main import CLIError

    for flag, value in (("--conf", conf), ("--iou", iou)):
        if not 0.0 <= value <= 1.0:
            raise CLIError(f"{flag} {value} is invalid: expected 0 <= {flag[2:]} <= 1")


def run_val(args: argparse.Namespace) -> int:
    import json

    import torch
    from torch.utils.data import DataLoader

    from cspnet.detection.data import (
        DetectionImages,
        collate_detection,
        digits_detection_split,
        read_detection_source,
    )
    from cspnet.detection.metrics import coco_metrics
    from cspnet.detection.training import load_trained_detector
    from cspnet.detection.training.module import split_targets
    from cspnet.ops.postprocess import postprocess_numpy

    _check_thresholds(args.conf, args.iou)
    trained = load_trained_detector(args.checkpoint, ema=args.ema)
    dataset: Any
    if args.data == "digits":
        dataset = digits_detection_split(trained.img_size)[1]
    else:
        dataset = DetectionImages(read_detection_source(args.data, "val", args.images), trained.img_size,
                                  classes=trained.class_names)  # fmt: skip
    truth, found = [], []
    with torch.inference_mode():
        for images, targets in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                          collate_fn=collate_detection):  # fmt: skip
            boxes, scores = trained.model.decode(trained.model(images.float() / 255.0))
            found += postprocess_numpy(boxes, scores, (images.shape[-2], images.shape[-1]), **EVALUATE.replace(
                conf_threshold=args.conf, iou_threshold=args.iou).kwargs())  # fmt: skip
            truth += split_targets(targets, images.shape[0])
    metrics = coco_metrics(truth, found, trained.class_names)
    result = {"checkpoint": str(args.checkpoint), "model": trained.name, "images": len(truth), **metrics}
    out = Path(args.output) if args.output else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "val.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"{trained.name} on {len(truth)} images: mAP {_fmt(metrics['map'])}  mAP@.5 {_fmt(metrics['map50'])}  "
          f"mAP@.75 {_fmt(metrics['map75'])}  AR@100 {_fmt(metrics['mar100'])}  ({out / 'val.json'})")  # fmt: skip
    return 0


# -- predict ---------------------------------------------------------------------------------------
def _add_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("predict", help="detect objects in images; PNGs with boxes drawn and a COCO-results JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet detect train`")
    p.add_argument("--conf", type=float, default=PREDICT.conf_threshold, help="score threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=PREDICT.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--max-detections", type=int, default=PREDICT.max_detections, help="per image (default %(default)s)")
    p.add_argument("--output", default="runs/detect-predict", metavar="DIR",
                   help="where <image>.png and results.json go (default runs/detect-predict)")
    p.set_defaults(func=run_predict)


def _image_files(items: list[str]) -> list[Path]:
    from cspnet.cli.main import CLIError
    from cspnet.data.folder import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise CLIError(f"{path}: no images in this folder (expected {', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return files


def draw_detections(image: object, boxes: list[list[float]], labels: list[str], scores: list[float]) -> object:
    """A copy of the PIL ``image`` with each box drawn and labelled ``name score``."""
    import zlib

    from PIL import Image, ImageDraw

    assert isinstance(image, Image.Image)
    out = image.copy()
    draw = ImageDraw.Draw(out)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip
    width = max(1, round(max(out.size) / 300))
    for box, name, score in zip(boxes, labels, scores):
        colour = palette[zlib.crc32(name.encode()) % len(palette)]  # the same colour per class in every run
        draw.rectangle(box, outline=colour, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        y = max(0.0, box[1] - (bottom - top) - 2)
        draw.rectangle([box[0], y, box[0] + (right - left) + 2, y + (bottom - top) + 2], fill=colour)
        draw.text((box[0] + 1, y), text, fill=(0, 0, 0))
    return out


def run_predict(args: argparse.Namespace) -> int:
    import json

    import torch

    from cspnet.cli.main import CLIError
    from cspnet.detection.data import letterbox_image, open_image
    from cspnet.detection.training import load_trained_detector
    from cspnet.ops.postprocess import postprocess_numpy

    _check_thresholds(args.conf, args.iou)
    if args.max_detections < 1:
        raise CLIError(f"--max-detections {args.max_detections} is invalid: expected a positive integer")
    files = _image_files(args.images)
    trained = load_trained_detector(args.checkpoint)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    used_names: set[str] = set()
    for image_id, path in enumerate(files):
        try:
            image = open_image(path)
        except ValueError:
            failed.append(str(path))
            continue
        x, lb = letterbox_image(image, trained.img_size)
        with torch.inference_mode():
            boxes, scores = trained.model.decode(trained.model(x[None].float() / 255.0))
        found = postprocess_numpy(boxes, scores, (trained.img_size, trained.img_size), args.conf, args.iou, args.max_detections)[0]
        on_image = lb.to_image(found["boxes"]).tolist()
        names = [trained.class_names[int(k)] for k in found["labels"]]
        scores_list = [float(s) for s in found["scores"]]
        stem = path.stem
        while stem in used_names:  # two inputs with one name (from different folders)
            stem += "_"
        used_names.add(stem)
        draw_detections(image, on_image, names, scores_list).save(out / f"{stem}.png")  # type: ignore[attr-defined]
        for box, label, score in zip(on_image, found["labels"].tolist(), scores_list):
            results.append({"image_id": image_id, "file_name": str(path), "category_id": int(label),
                            "category": trained.class_names[int(label)],
                            "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                            "score": round(score, 5)})  # fmt: skip
        print(f"{path}: {len(names)} object(s)" + (": " + ", ".join(f"{n} {s:.2f}" for n, s in zip(names, scores_list)) if names else ""))
    if len(failed) == len(files):
        raise CLIError(f"none of the {len(files)} image(s) can be read (first: {failed[0]})")
    if failed:
        print(f"cspnet detect predict: warning: skipped {len(failed)} unreadable image(s): {', '.join(failed[:3])}",
              file=sys.stderr)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{len(files) - len(failed)} image(s) -> {out} (results.json: COCO results, boxes in image pixels)")
    return 0


# -- export ----------------------------------------------------------------------------------------
def _add_export(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("export", help="a detector as ONNX (dynamic batch, decoding inside, NMS optional)")
    p.add_argument("model", nargs="?", help="registered detector; optional with a `detect train` checkpoint")
    p.add_argument("--checkpoint", metavar="FILE", help="a `cspnet detect train` checkpoint")
    p.add_argument("--num-classes", type=int, help="classes of a MODEL exported without a checkpoint (default 80)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--img-size", type=int, help="input side (default: the checkpoint's, else the model's)")
    p.add_argument("--nms", action="store_true", help="add ONNX NonMaxSuppression: output detections (M, 7)")
    p.add_argument("--conf", type=float, default=PREDICT.conf_threshold, help="NMS score threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=PREDICT.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--max-detections", type=int, default=PREDICT.max_detections, help="per image (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative difference from PyTorch")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cspnet import create_model, get_model_entry
    from cspnet.cli.main import CLIError
    from cspnet.detection.export import export_detector_onnx
    from cspnet.detection.training import load_trained_detector
    from cspnet.models.detectors.model import Detector

    _check_thresholds(args.conf, args.iou)
    if args.checkpoint:
        trained = load_trained_detector(args.checkpoint, expected_model=args.model)
        model, size = trained.model, trained.img_size
    elif args.model:
        if get_model_entry(args.model).task != "detection":
            raise CLIError(f"{args.model} is not a detector (`cspnet models '*_efm'` lists some)")
        built = create_model(args.model, num_classes=args.num_classes or 80)
        assert isinstance(built, Detector)
        model, size = built.eval(), get_model_entry(args.model).input_size[-1]
    else:
        raise CLIError("name a detector or give --checkpoint (a `cspnet detect train` checkpoint)")
    size = args.img_size or size
    if size < model.max_stride:
        raise CLIError(f"--img-size {size} is invalid: at least the detector's stride {model.max_stride}")
    result = export_detector_onnx(model, args.output, size, args.nms, args.conf, args.iou, args.max_detections)
    print(result.summary())
    if not result.max_rel_diff <= args.tolerance:
        raise CLIError(f"{result.path} does not reproduce PyTorch: relative difference {result.max_rel_diff:.3g} "
                       f"exceeds {args.tolerance:g}")  # fmt: skip
    return 0
