"""``cspnet detect train | val | predict | export``: the detection job, on the classification commands' pipeline.

Examples::

    cspnet detect train                                  # the small CSPDenseNet-EFM detector on the embedded digits
    cspnet detect train --data coco/instances_train.json --val-data coco/instances_val.json --img-size 416
    cspnet detect train --data data.yaml --epochs 50     # YOLO layout: images/ and labels/ folders
    cspnet detect train --output runs/detect --resume    # continue an interrupted run exactly
    cspnet detect val --checkpoint runs/detect/best.ckpt # on the run's own validation split
    cspnet detect predict photos/ --checkpoint runs/detect/best.ckpt --output predictions/
    cspnet detect export --checkpoint runs/detect/best.ckpt --output detector.onnx --nms

``--data`` is ``digits`` (embedded: real handwritten digits on cluttered canvases, nothing
downloaded), a COCO instances ``.json`` (images beside it, or ``--images``) or a YOLO ``data.yaml``.
``detect train`` takes every option of ``cspnet train`` that applies to detection (the same
resume, precision, process and checkpoint options), and the detection data, loss and augmentation ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cspnet.cli.options import positive_int
from cspnet.ops.thresholds import EVALUATE, PREDICT


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
    from cspnet.cli.run_options import add_run_arguments
    from cspnet.training.detection_config import DetectionTrainConfig

    p = actions.add_parser("train", help="train a detector (default: the embedded digits set)")
    add_run_arguments(p, DetectionTrainConfig)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from cspnet.cli.run_options import run_training_command
    from cspnet.training.detection_config import DetectionTrainConfig

    return run_training_command(args, DetectionTrainConfig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check_thresholds(args: argparse.Namespace) -> None:
    """``--conf`` and ``--iou`` are fractions (checked before any file is read)."""
    from cspnet.cli.main import CLIError

    for flag in ("conf", "iou"):
        value = getattr(args, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            raise CLIError(f"--{flag} {value} is invalid: expected 0 <= {flag} <= 1")


def _load(checkpoint: str, expected_model: str | None = None, ema: bool = True) -> Any:
    """A detector back from a ``detect train`` checkpoint (the one reader, every check of it)."""
    from cspnet.trained import load_trained

    return load_trained(checkpoint, expected_model=expected_model, ema=ema, task="detection")


# -- val -------------------------------------------------------------------------------------------
def _add_val(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("val", help="COCO metrics of a `detect train` checkpoint on a validation set")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet detect train`")
    p.add_argument("--data", default=None, help="'digits' (the embedded val split), a COCO .json or a YOLO data.yaml "
                   "(its val split); default: the validation split of the data the checkpoint was trained on")
    p.add_argument("--images", help="COCO: the image folder")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--conf", type=float, default=None,
                   help=f"score threshold (default: the run's, {EVALUATE.conf_threshold} as COCO evaluations)")
    p.add_argument("--iou", type=float, default=None, help=f"NMS IoU threshold (default: the run's, {EVALUATE.iou_threshold})")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="evaluate the raw weights, not the EMA")
    _add_augment(p)
    p.add_argument("--output", metavar="DIR", help="where val.json and the pictures (pr_curve.png, f1_curve.png, "
                   "confusion_matrix.png) go (default: the checkpoint's folder)")
    p.set_defaults(func=run_val)


def _add_augment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--augment", action="store_true", help="test-time augmentation: also detect on the image "
                   "mirrored and shrunk (0.83, 0.67), all boxes merged by one NMS (3x slower)")


def _output_folder(output: str | None, checkpoint: str) -> Path:
    """The folder results go to, checked writable before any work (a read-only one fails now, not after)."""
    from cspnet.cli.main import CLIError
    from cspnet.training.files import RunFolderError, check_writable

    out = Path(output) if output else Path(checkpoint).parent
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {out} is a file: the results go into a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        check_writable(out)
    except RunFolderError as exc:
        raise CLIError(str(exc)) from exc
    for folder in created:  # made only to probe: a command that fails later leaves nothing behind
        folder.rmdir()
    return out


def run_val(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.evaluation import evaluate_detector, evaluation_set
    from cspnet.io import atomic_write_text, dumps_json
    from cspnet.training.detection_config import DetectionTrainConfig

    _check_thresholds(args)
    if args.workers < 0:
        raise CLIError(f"--workers {args.workers} is invalid: expected 0 or more")
    out = _output_folder(args.output, args.checkpoint)
    trained = _load(args.checkpoint, ema=args.ema)
    run = DetectionTrainConfig.from_dict(trained.train_config) if trained.train_config else DetectionTrainConfig()
    conf = args.conf if args.conf is not None else run.eval_conf
    iou = args.iou if args.iou is not None else run.eval_iou
    dataset = evaluation_set("detection", trained.train_config, trained.img_size, trained.class_names, args.data,
                             args.images)  # fmt: skip
    result = evaluate_detector(trained.model, dataset, trained.class_names, conf, iou, run.max_detections,
                               args.batch_size, args.workers, augment=args.augment)  # fmt: skip
    if not result.images:
        raise CLIError(f"none of the {result.skipped} image(s) could be decoded")
    data = args.data if args.data is not None else f"{trained.train_config.get('data', 'digits')} (the run's validation split)"
    metrics = result.metrics
    summary = {"checkpoint": str(args.checkpoint), "model": trained.name, "data": data, "weights": trained.weights,
               "conf": conf, "iou": iou, "augment": args.augment, "images": result.images,
               "skipped_images": result.skipped, **metrics}  # fmt: skip
    atomic_write_text(out / "val.json", dumps_json(summary))
    note = f"  ({result.skipped} undecodable image(s) left out)" if result.skipped else ""
    print(f"{trained.name} on {result.images} images of {data}: mAP {_fmt(metrics['map'])}  mAP@.5 "
          f"{_fmt(metrics['map50'])}  mAP@.75 {_fmt(metrics['map75'])}  AR@100 {_fmt(metrics['mar100'])}  "
          f"({out / 'val.json'}){note}")  # fmt: skip
    _val_pictures(result, trained.class_names, out)
    return 0


def _val_pictures(result: Any, class_names: list[str], out: Path) -> None:
    """The per-class table on standard output and the pictures beside val.json (cspnet.reports.detection)."""
    from cspnet.reports.detection import per_class_table, write_val_report

    curves, files = write_val_report(result.truth, result.found, class_names, result.metrics, out)
    print("\n".join(per_class_table(curves, result.metrics)))
    print(f"pictures: {', '.join(str(f) for f in files)}")


# -- predict ---------------------------------------------------------------------------------------
def _add_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("predict", help="detect objects in images; PNGs with boxes drawn and a COCO-results JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="last.ckpt / best.ckpt of `cspnet detect train`")
    p.add_argument("--conf", type=float, default=PREDICT.conf_threshold, help="score threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=PREDICT.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--max-detections", type=positive_int, default=PREDICT.max_detections, help="per image (default %(default)s)")
    p.add_argument("--output", default="runs/detect-predict", metavar="DIR",
                   help="where <image>.png and results.json go (default runs/detect-predict)")
    _add_augment(p)
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


def output_names(files: list[Path], out: Path) -> list[Path]:
    """``out/<stem>.png`` for each input (a repeated stem gets ``_`` appended); ``ValueError`` when one would
    overwrite an input image (``detect predict DIR --output DIR``).

    >>> [p.name for p in output_names([Path("a/x.jpg"), Path("b/x.jpg")], Path("out"))]
    ['x.png', 'x_.png']
    """
    inputs = {path.resolve() for path in files}
    names: list[Path] = []
    used: set[str] = set()
    for path in files:
        stem = path.stem
        while stem in used:  # two inputs with one name (from different folders)
            stem += "_"
        used.add(stem)
        target = out / f"{stem}.png"
        if target.resolve() in inputs:
            raise ValueError(f"--output {out}: writing {target} would overwrite the input image {target}; "
                             "choose another --output folder")  # fmt: skip
        names.append(target)
    return names


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
    import torch

    from cspnet.cli.main import CLIError
    from cspnet.detection.data import letterbox_image, open_image
    from cspnet.detection.tta import decoded_predictions
    from cspnet.io import atomic_path, atomic_write_text, dumps_json
    from cspnet.ops.boxes import box_convert
    from cspnet.ops.postprocess import postprocess_numpy
    from cspnet.progress import progress, say

    _check_thresholds(args)
    files = _image_files(args.images)
    out = _output_folder(args.output, args.output)
    targets = output_names(files, out)
    trained = _load(args.checkpoint)
    size = trained.img_size
    results, failed = [], []
    for image_id, (path, target) in enumerate(progress(zip(files, targets), len(files), "detecting", "image")):
        try:
            image = open_image(path)
        except ValueError as exc:
            failed.append(f"{path} ({exc})")
            continue
        x, lb = letterbox_image(image, size)
        with torch.inference_mode():
            boxes, scores = decoded_predictions(trained.model, x[None].float() / 255.0, args.augment)
        found = postprocess_numpy(boxes, scores, (size, size), **PREDICT.replace(
            conf_threshold=args.conf, iou_threshold=args.iou, max_detections=args.max_detections).kwargs())[0]
        image_boxes = lb.to_image(found["boxes"])
        on_image = image_boxes.tolist()
        names = [trained.class_names[int(k)] for k in found["labels"]]
        scores_list = [float(s) for s in found["scores"]]
        with atomic_path(target) as tmp:
            draw_detections(image, on_image, names, scores_list).save(tmp, format="PNG")  # type: ignore[attr-defined]
        for box, label, score in zip(box_convert(image_boxes, "xyxy", "xywh").tolist(), found["labels"].tolist(),
                                     scores_list):  # fmt: skip
            results.append({"image_id": image_id, "file_name": str(path), "category_id": int(label),
                            "category": trained.class_names[int(label)], "bbox": [round(v, 2) for v in box],
                            "score": round(score, 5)})  # fmt: skip
        say(f"{path}: {len(names)} object(s)" + (": " + ", ".join(f"{n} {s:.2f}" for n, s in zip(names, scores_list)) if names else ""))
    if len(failed) == len(files):
        raise CLIError(f"none of the {len(files)} image(s) can be read (first: {failed[0]})")
    if failed:
        print(f"cspnet detect predict: warning: skipped {len(failed)} unreadable image(s): {'; '.join(failed[:3])}",
              file=sys.stderr)  # fmt: skip
    atomic_write_text(out / "results.json", dumps_json(results, indent=1))
    print(f"{len(files) - len(failed)} image(s) -> {out} (results.json: COCO results, boxes in image pixels)")
    return 0


# -- export ----------------------------------------------------------------------------------------
def _add_export(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("export", help="a detector as ONNX (dynamic batch, decoding inside, NMS optional)")
    p.add_argument("model", nargs="?", help="registered detector; optional with a `detect train` checkpoint")
    p.add_argument("--checkpoint", metavar="FILE", help="a `cspnet detect train` checkpoint")
    p.add_argument("--num-classes", type=positive_int, help="classes of a MODEL exported without a checkpoint (default 80)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--img-size", type=int, help="input side (default: the checkpoint's, else the model's)")
    p.add_argument("--nms", action="store_true", help="add ONNX NonMaxSuppression: output detections (M, 7)")
    p.add_argument("--conf", type=float, default=PREDICT.conf_threshold, help="NMS score threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=PREDICT.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--max-detections", type=positive_int, default=PREDICT.max_detections,
                   help="per image (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative difference from PyTorch")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.data.transforms import check_img_size
    from cspnet.detection.export import export_detector_onnx
    from cspnet.io import check_output_file
    from cspnet.models import create_model, get_model_entry

    _check_thresholds(args)
    if args.img_size is not None:
        check_img_size(args.img_size)  # the range before building anything; the stride below
    output = check_output_file(args.output)
    if args.checkpoint:
        trained = _load(args.checkpoint, expected_model=args.model)
        model, size = trained.model, trained.img_size
    elif args.model:
        if get_model_entry(args.model).task != "detection":
            raise CLIError(f"{args.model} is not a detector (`cspnet models --task detection` lists them)")
        model, size = create_model(args.model, num_classes=args.num_classes or 80).eval(), None
        model.name = args.model
        size = get_model_entry(args.model).input_size[-1]
    else:
        raise CLIError("name a detector or give --checkpoint (a `cspnet detect train` checkpoint)")
    size = args.img_size or size
    check_img_size(size, model)
    # Written through write_checked: moved into place only once it reproduces PyTorch within --tolerance.
    result = export_detector_onnx(model, output, size, args.nms, args.conf, args.iou, args.max_detections,
                                  tolerance=args.tolerance)  # fmt: skip
    print(result.summary())
    return 0
