"""``cspnet detect train | val | predict | export``: the detection job, on the classification commands' pipeline.

Examples::

    cspnet detect train                                  # the small CSPDenseNet-EFM detector on the embedded digits
    cspnet detect train --data coco/instances_train.json --val-data coco/instances_val.json --img-size 416
    cspnet detect train --data data.yaml --epochs 50     # YOLO layout: images/ and labels/ folders
    cspnet detect train --output runs/detect --resume    # continue an interrupted run exactly
    cspnet detect val --checkpoint runs/detect/best.ckpt # on the run's own validation split
    cspnet detect predict photos/ clip.mp4 --checkpoint runs/detect/best.ckpt --output predictions/
    cspnet detect export --checkpoint runs/detect/best.ckpt --output det-int8.onnx --int8 --calibration-data digits
    cspnet detect predict photos/ --checkpoint det-int8.onnx --backend openvino
    cspnet detect val --model cspresnext50_panet_spp --checkpoint csresnext50-panet-spp.weights --names coco \
        --data coco/annotations/instances_val2017.json --images coco/val2017 --img-size 512

``--data`` is ``digits`` (embedded: real handwritten digits on cluttered canvases, nothing
downloaded), a COCO instances ``.json`` (images beside it, or ``--images``) or a YOLO ``data.yaml``.
``detect train`` takes every option of ``cspnet train`` that applies to detection (the same
resume, precision, process and checkpoint options), and the detection data, loss and augmentation ones.

``val``, ``predict`` and ``export`` take a ``detect train`` checkpoint, or any weights
``create_model(pretrained=...)`` reads (darknet ``.weights``, ``.pth``, safetensors) with ``--model``
and ``--names``; ``val`` and ``predict`` also a file written by ``detect export``, on ``--backend
torch|onnxruntime|openvino``. Each command is a few named steps (options, model, data, run,
outputs), so that a step can be changed or added without touching the others.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
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


# -- the detector (val, predict) -------------------------------------------------------------------
def _add_model_options(p: argparse.ArgumentParser, exported: bool = True) -> None:
    """Where the detector comes from, and the engine it runs on."""
    from cspnet.cli.backend_options import add_backend_option

    files = "a `cspnet detect train` checkpoint, " + ("a file written by `cspnet detect export` (.onnx), " if exported else "")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help=files + "or weights any create_model(pretrained=...) reads (darknet .weights, .pth, "
                   ".safetensors) with --model")  # fmt: skip
    p.add_argument("--model", metavar="NAME", help="the registered detector --checkpoint's weights are for "
                   "(`cspnet models --task detection`); with a checkpoint or file: fail unless it holds this model")
    p.add_argument("--names", metavar="FILE|coco", help="class names of --model's weights: 'coco' (COCO's 80, with "
                   "their category ids) or a file with one name per line (default: class indices)")
    p.add_argument("--img-size", type=int, metavar="N", help="input side, a multiple of the detector's stride "
                   "(default: the checkpoint's, the file's, else the model's)")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="keep only these classes (ids or names)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="a checkpoint's raw weights, not the EMA")
    if exported:
        add_backend_option(p)
        p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                       help="fp32 (default; an int8 file runs as int8), bf16 (torch, openvino) or int8 (onnxruntime, "
                       "openvino: an fp32 source quantised on --calibration-data first)")  # fmt: skip
        p.add_argument("--calibration-data", metavar="PATH|digits",
                       help="--precision int8: 'digits', an image folder, a COCO .json or a YOLO data.yaml")


def _is_weights(path: Path) -> bool:
    """A weights file (not a training checkpoint, not an exported file): it needs --model."""
    from cspnet.trained import is_training_checkpoint

    return path.suffix.lower() != ".onnx" and not is_training_checkpoint(path)


def _load_detector(args: argparse.Namespace, precision: str | None = None) -> Any:
    """The :class:`~cspnet.inference.DetectionModel` of ``--checkpoint`` (and ``--model``, ``--names``) on
    ``--backend`` in ``precision`` (default ``--precision``); one-line errors."""
    from cspnet.cli.backend_options import check_backends_installed, warn_if_bf16_is_emulated
    from cspnet.cli.main import CLIError
    from cspnet.inference import load_model

    backend = getattr(args, "backend", "torch")
    precision = precision or getattr(args, "precision", "fp32")
    check_backends_installed([backend])
    source = Path(args.checkpoint)
    if not source.is_file():
        raise CLIError(f"checkpoint file not found: {source}")
    if precision == "int8" and not args.calibration_data and source.suffix.lower() != ".onnx":
        raise CLIError("--precision int8 needs --calibration-data PATH|digits (the images that set the int8 ranges)")
    if precision == "bf16":
        warn_if_bf16_is_emulated()
    options: dict[str, Any] = {
        "precision": None if precision == "fp32" else precision, "img_size": args.img_size, "task": "detection",
        "calibration_data": getattr(args, "calibration_data", None), "batch_size": getattr(args, "batch_size", 1),
    }  # fmt: skip
    if _is_weights(source):
        if not args.model:
            _refuse_weights_without_model(source)
        from cspnet.models import get_model_entry

        if get_model_entry(args.model).task != "detection":
            raise CLIError(f"{args.model} is not a detector (`cspnet models --task detection` lists them)")
        return load_model(args.model, backend, weights=source, class_names=args.names, **options)
    if args.names:
        raise CLIError(f"--names is for --model with a weights file: {source} names its own classes")
    return load_model(source, backend, expected_model=args.model, ema=args.ema, **options)


def _refuse_weights_without_model(source: Path) -> None:
    """A file that is no training checkpoint, named without ``--model``: the reader's reason when it is not
    even a torch file, else the hint that weights need their detector's name."""
    from cspnet.cli.main import CLIError

    if source.suffix.lower() not in (".weights", ".safetensors"):
        from cspnet.convert import load_torch_file

        load_torch_file(source, "training checkpoint")  # empty, truncated, not torch data: says which
    raise CLIError(f"--checkpoint {source} is not a `cspnet detect train` checkpoint: for a weights file, name its "
                   "detector with --model (e.g. --model cspresnext50_panet_spp --names coco)")  # fmt: skip


def _class_ids(classes: list[str] | None, names: tuple[str, ...]) -> list[int] | None:
    """``--classes``: ids or names -> ids; ``CLIError`` naming one that is neither."""
    from cspnet.cli.main import CLIError

    if not classes:
        return None
    ids = []
    for item in classes:
        if item in names:
            ids.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            ids.append(int(item))
        else:
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise CLIError(f"--classes {item!r} is neither a class name ({shown}) nor a class id 0..{len(names) - 1}")
    return sorted(set(ids))


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


def yolo_label_lines(found: Any) -> str:
    """One image's :class:`~cspnet.inference.Detections` as a YOLO label file: ``class cx cy w h`` per
    line, normalised to the image (what the YOLO reader reads back).

    >>> import numpy as np
    >>> from cspnet.inference import Detections
    >>> d = Detections(np.array([[10.0, 20, 30, 60]]), np.array([0.9]), np.array([2]), ["c"], (100, 80))
    >>> yolo_label_lines(d)
    '2 0.200000 0.500000 0.200000 0.500000\\n'
    """
    width, height = found.image_size
    lines = []
    for (x1, y1, x2, y2), k in zip(found.boxes.tolist(), found.class_ids.tolist()):
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(k)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def json_lines(rows: list[Any]) -> str:
    """A JSON list with one item per line (NaN as ``null``): readable, diffable, still one JSON document.

    >>> json_lines([{"a": 1}, {"b": [1, 2]}])
    '[\\n{"a": 1},\\n{"b": [1, 2]}\\n]\\n'
    """
    from cspnet.io import dumps_json

    return "[\n" + ",\n".join(dumps_json(row, indent=None).strip() for row in rows) + ("\n" if rows else "") + "]\n"


# -- val -------------------------------------------------------------------------------------------
def _add_val(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("val", help="COCO metrics of a detector (checkpoint, exported file or weights) on a validation set")
    _add_model_options(p)
    p.add_argument("--data", default=None, help="'digits' (the embedded val split), a COCO .json or a YOLO data.yaml "
                   "(its val split); default: the validation split of the data the checkpoint was trained on")
    p.add_argument("--images", help="COCO: the image folder")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--conf", type=float, default=None,
                   help=f"score threshold (default: the run's, {EVALUATE.conf_threshold} as COCO evaluations)")
    p.add_argument("--iou", type=float, default=None, help=f"NMS IoU threshold (default: the run's, {EVALUATE.iou_threshold})")
    p.add_argument("--save-txt", action="store_true", help="also write each image's detections as a YOLO label "
                   "file, <output>/labels/<image>.txt")
    _add_augment(p)
    p.add_argument("--output", metavar="DIR", help="where val.json and the pictures (pr_curve.png, f1_curve.png, "
                   "confusion_matrix.png) go (default: the checkpoint's folder)")
    p.set_defaults(func=run_val)


def _val_thresholds(args: argparse.Namespace, model: Any) -> tuple[float, float, int]:
    """``--conf``/``--iou``, else the training run's evaluation thresholds, else :data:`EVALUATE`'s."""
    conf, iou, max_detections = EVALUATE.conf_threshold, EVALUATE.iou_threshold, EVALUATE.max_detections
    if model.trained is not None and model.trained.train_config:
        from cspnet.training.detection_config import DetectionTrainConfig

        run = DetectionTrainConfig.from_dict(model.trained.train_config)
        conf, iou, max_detections = run.eval_conf, run.eval_iou, run.max_detections
    return (args.conf if args.conf is not None else conf), (args.iou if args.iou is not None else iou), max_detections


def _val_data(args: argparse.Namespace, model: Any) -> tuple[Any, str]:
    """The data set to score on, and how the summary names it."""
    from cspnet.cli.main import CLIError
    from cspnet.evaluation import evaluation_set

    info, trained = model.info, model.trained
    data = args.data
    if data is None and trained is None:
        if list(info.class_names) != [str(i) for i in range(10)]:
            raise CLIError(f"--data is needed: {args.checkpoint} does not say what data its detector was trained on")
        data = "digits"
    config = trained.train_config if trained is not None else {}
    dataset = evaluation_set("detection", config, info.img_size, list(info.class_names), data, args.images)
    name = data if data is not None else f"{config.get('data', 'digits')} (the run's validation split)"
    return dataset, name


class _LabelSaver:
    """``--save-txt`` of ``detect val``: each image's detections as a YOLO label file under ``labels/``."""

    def __init__(self, model: Any, dataset: Any, folder: Path) -> None:
        self.model, self.dataset, self.folder = model, dataset, folder

    def _name(self, index: int) -> str:
        records = getattr(self.dataset, "records", None)
        return records[index].path.stem if records is not None else f"{index:06d}"

    def __call__(self, images: Any, found: list[Any], first: int) -> None:
        from cspnet.detection.data import Letterbox
        from cspnet.io import atomic_write_text

        side = int(images.shape[-1])
        for offset, item in enumerate(found):
            index = first + offset
            letterbox = getattr(self.dataset, "letterbox", None)
            lb = letterbox(index) if letterbox is not None else Letterbox.fit(side, side, side)
            atomic_write_text(self.folder / f"{self._name(index)}.txt", yolo_label_lines(self.model.on_image(item, lb)))


def run_val(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.evaluation import evaluate_detector

    _check_thresholds(args)
    if args.workers < 0:
        raise CLIError(f"--workers {args.workers} is invalid: expected 0 or more")
    out = _output_folder(args.output, args.checkpoint)
    model = _load_detector(args)
    dataset, data_name = _val_data(args, model)
    classes = _class_ids(args.classes, model.info.class_names)
    conf, iou, max_detections = _val_thresholds(args, model)
    saver = _LabelSaver(model, dataset, out / "labels") if args.save_txt else None
    result = evaluate_detector(model, dataset, None, conf, iou, max_detections, args.batch_size, args.workers,
                               classes, on_batch=saver, augment=args.augment)  # fmt: skip
    if not result.images:
        raise CLIError(f"none of the {result.skipped} image(s) could be decoded")
    cost = _precision_cost(args, model, dataset, (conf, iou, max_detections), classes, result.metrics)
    _val_report(args, model, data_name, (conf, iou), result, cost, out)
    _val_pictures(result, list(model.info.class_names), out)
    return 0


def _precision_cost(args: argparse.Namespace, model: Any, dataset: Any, limits: tuple[float, float, int],
                    classes: list[int] | None, metrics: dict[str, Any]) -> dict[str, Any] | None:  # fmt: skip
    """bf16 / int8 of an fp32 source: the same evaluation in fp32 on the same engine, and what the
    precision costs (``None`` for fp32, or a file that is int8 already)."""
    from cspnet.evaluation import evaluate_detector

    if args.precision == "fp32":
        return None
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        from cspnet.metadata import read_onnx_info

        if read_onnx_info(args.checkpoint).precision == "int8":  # an int8 file: no fp32 weights to compare with
            return None
    baseline = _load_detector(args, precision="fp32")
    fp32 = evaluate_detector(baseline, dataset, None, *limits, args.batch_size, args.workers, classes,
                             augment=args.augment).metrics  # fmt: skip
    costs = {name: None if fp32[name] is None or metrics[name] is None else round(fp32[name] - metrics[name], 6)
             for name in ("map", "map50")}  # fmt: skip
    return {"fp32_map": fp32["map"], "fp32_map50": fp32["map50"], "map_lost": costs["map"], "map50_lost": costs["map50"]}


def _val_report(args: argparse.Namespace, model: Any, data: str, thresholds: tuple[float, float], result: Any,
                cost: dict[str, Any] | None, out: Path) -> None:  # fmt: skip
    """``val.json`` and the result line."""
    from cspnet.io import atomic_write_text, dumps_json

    metrics, trained = result.metrics, model.trained
    summary = {"checkpoint": str(args.checkpoint), "model": model.info.model_name, "backend": model.backend,
               "precision": model.precision, "data": data, "weights": trained.weights if trained else "as stored",
               "img_size": model.info.img_size, "conf": thresholds[0], "iou": thresholds[1], "augment": args.augment,
               "classes": _class_ids(args.classes, model.info.class_names), "images": result.images,
               "skipped_images": result.skipped, **metrics, **({"precision_cost": cost} if cost else {})}  # fmt: skip
    atomic_write_text(out / "val.json", dumps_json(summary))
    note = f"  ({result.skipped} undecodable image(s) left out)" if result.skipped else ""
    print(f"{model.info.model_name} ({model.backend} {model.precision}) on {result.images} images of {data}: mAP "
          f"{_fmt(metrics['map'])}  mAP@.5 {_fmt(metrics['map50'])}  mAP@.75 {_fmt(metrics['map75'])}  AR@100 "
          f"{_fmt(metrics['mar100'])}  ({out / 'val.json'}){note}")  # fmt: skip
    if cost:
        print(f"{model.precision} costs {_fmt(cost['map50_lost'])} mAP@.5 and {_fmt(cost['map_lost'])} mAP: fp32 on "
              f"{model.backend} gives mAP {_fmt(cost['fp32_map'])}  mAP@.5 {_fmt(cost['fp32_map50'])}")  # fmt: skip


def _val_pictures(result: Any, class_names: list[str], out: Path) -> None:
    """The per-class table on standard output and the pictures beside val.json (cspnet.reports.detection)."""
    from cspnet.reports.detection import per_class_table, write_val_report

    curves, files = write_val_report(result.truth, result.found, class_names, result.metrics, out)
    print("\n".join(per_class_table(curves, result.metrics)))
    print(f"pictures: {', '.join(str(f) for f in files)}")


# -- predict ---------------------------------------------------------------------------------------
def _add_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("predict", help="detect objects in images and videos; boxes drawn, COCO results, labels")
    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image or video files, folders, glob patterns ('photos/*.jpg') or .txt lists of paths")
    _add_model_options(p)
    p.add_argument("--conf", type=float, default=None,
                   help=f"score threshold (default: the file's, else {PREDICT.conf_threshold})")
    p.add_argument("--iou", type=float, default=None,
                   help=f"NMS IoU threshold (default: the file's, else {PREDICT.iou_threshold})")
    p.add_argument("--max-detections", type=positive_int, default=None,
                   help=f"per image (default: the file's, else {PREDICT.max_detections})")
    p.add_argument("--data", metavar="COCO.json", help="the COCO instances file the images belong to: results.json "
                   "then uses its image ids (matched by file name) and category ids")
    p.add_argument("--save-txt", action="store_true", help="YOLO label files <output>/labels/<image>.txt")
    p.add_argument("--save-crops", action="store_true", help="each detection cut out: <output>/crops/<class>/<image>_<n>.jpg")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per engine run (default 1)")
    p.add_argument("--output", default="runs/detect-predict", metavar="DIR",
                   help="where <image>.png, <video>.mp4 + <video>.json and results.json go (default runs/detect-predict)")
    _add_augment(p)
    p.set_defaults(func=run_predict)


def output_names(files: list[Path], out: Path) -> list[Path]:
    """``out/<stem>.png`` for each input (a repeated stem gets ``_`` appended); ``ValueError`` when one would
    overwrite an input image (``detect predict DIR --output DIR``).

    >>> [p.name for p in output_names([Path("a/x.jpg"), Path("b/x.jpg")], Path("out"))]
    ['x.png', 'x_.png']
    """
    inputs = {path.resolve() for path in files}
    names: list[Path] = []
    for stem in output_stems(files):
        target = out / f"{stem}.png"
        if target.resolve() in inputs:
            raise ValueError(f"--output {out}: writing {target} would overwrite the input image {target}; "
                             "choose another --output folder")  # fmt: skip
        names.append(target)
    return names


def output_stems(files: list[Path]) -> list[str]:
    """A distinct name per input: its stem, with ``_`` appended while it repeats one before it."""
    stems: list[str] = []
    used: set[str] = set()
    for path in files:
        stem = path.stem
        while stem in used:  # two inputs with one name (from different folders)
            stem += "_"
        used.add(stem)
        stems.append(stem)
    return stems


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


class _ResultIds:
    """COCO ids of the results: the ``--data`` file's image ids (matched by file name) and category ids,
    else the input order and the model's recorded category ids (a ``detect train`` run on COCO data,
    ``--names coco``), else the class index."""

    def __init__(self, data: str | None, info: Any) -> None:
        from cspnet.cli.main import CLIError

        self.index, self.next_id, self.unmatched = None, 0, 0
        self.category_ids: list[int] = list(info.category_ids) if info.category_ids else list(range(len(info.class_names)))
        if data is None:
            return
        from cspnet.detection.sources import coco_index

        self.index = coco_index(data)
        if self.index.category_names != list(info.class_names):
            shown = ", ".join(self.index.category_names[:4])
            raise CLIError(f"--data {data}: its categories ({shown}, ...) are not the model's classes "
                           f"({', '.join(info.class_names[:4])}, ...)")  # fmt: skip
        self.category_ids = self.index.category_ids
        self.next_id = max(self.index.image_ids.values(), default=-1) + 1

    def image_id(self, path: Path, position: int) -> int:
        if self.index is None:
            return position
        found = self.index.image_id(path)
        if found is None:  # not in the file: a new id after its own
            self.unmatched += 1
            found, self.next_id = self.next_id, self.next_id + 1
        return found


@dataclass
class _Outputs:
    """Where ``detect predict`` writes, checked against the inputs before anything is run."""

    out: Path
    save_txt: bool
    save_crops: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def crop(self, image: Any, found: Any, stem: str) -> None:
        from cspnet.io import atomic_path

        for n, (box, name) in enumerate(zip(found.boxes.tolist(), found.class_names)):
            x1, y1, x2, y2 = (round(v) for v in box)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            folder = self.out / "crops" / _safe_name(name)
            with atomic_path(folder / f"{stem}_{n}.jpg") as tmp:
                image.crop((x1, y1, x2, y2)).save(tmp, format="JPEG", quality=95)

    def labels(self, found: Any, stem: str) -> None:
        from cspnet.io import atomic_write_text

        atomic_write_text(self.out / "labels" / f"{stem}.txt", yolo_label_lines(found))

    def extras(self, image: Any, found: Any, stem: str) -> None:
        if self.save_txt:
            self.labels(found, stem)
        if self.save_crops:
            self.crop(image, found, stem)


def _safe_name(name: str) -> str:
    """A class name as one folder name (no separators, no leading dot)."""
    cleaned = "".join(c if c.isalnum() or c in " -_+." else "_" for c in name).strip().lstrip(".")
    return cleaned or "_"


def _check_targets(sources: list[Any], stems: list[str], out: Path) -> None:
    """``ValueError`` when an output of ``detect predict`` would overwrite one of its inputs."""
    inputs = {s.path.resolve() for s in sources}
    for source, stem in zip(sources, stems):
        names = [f"{stem}.png"] if source.kind == "image" else [f"{stem}.mp4", f"{stem}.json"]
        for target in [out / n for n in names] + [out / "labels" / f"{stem}.txt", out / "results.json"]:
            if target.resolve() in inputs:
                raise ValueError(f"--output {out}: writing {target} would overwrite the input image {target}; "
                                 "choose another --output folder")  # fmt: skip


def _detection_rows(found: Any, image_id: int, path: Path, ids: _ResultIds) -> list[dict[str, Any]]:
    """COCO results rows of one image (``bbox`` x, y, w, h in its pixels)."""
    return [{"image_id": image_id, "file_name": str(path), "category_id": int(ids.category_ids[int(k)]),
             "category": name, "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
            for box, k, name, score in zip(found.xywh().tolist(), found.class_ids.tolist(), found.class_names,
                                           found.scores.tolist())]  # fmt: skip


def _summary_line(path: Path, found: Any) -> str:
    """``photo.jpg: 3 object(s): 2 person, 1 dog`` (classes by count, then first seen)."""
    from collections import Counter

    shown = ", ".join(f"{count} {name}" for name, count in Counter(found.class_names).most_common())
    return f"{path}: {len(found)} object(s)" + (f": {shown}" if shown else "")


def _predict_image(model: Any, path: Path, stem: str, outputs: _Outputs, run: dict[str, Any], image_id: int,
                   ids: _ResultIds) -> None:  # fmt: skip
    from cspnet.inference.detection import as_image
    from cspnet.io import atomic_path
    from cspnet.progress import say

    try:
        image = as_image(path)
    except ValueError as exc:
        outputs.failed.append(f"{path} ({exc})")
        return
    found = model.detect(image, **run)[0]
    with atomic_path(outputs.out / f"{stem}.png") as tmp:
        draw = draw_detections(image, found.boxes.tolist(), found.class_names, found.scores.tolist())
        draw.save(tmp, format="PNG")  # type: ignore[attr-defined]
    outputs.extras(image, found, stem)
    outputs.results += _detection_rows(found, image_id, path, ids)
    say(_summary_line(path, found))


def _predict_video(model: Any, path: Path, stem: str, outputs: _Outputs, run: dict[str, Any]) -> None:
    """An annotated ``<stem>.mp4`` and ``<stem>.json`` (one line per frame) for the video at ``path``."""
    import numpy as np
    from PIL import Image

    from cspnet.detection.sources import VideoReader, VideoWriter
    from cspnet.io import atomic_path, atomic_write_text
    from cspnet.progress import progress, say

    reader = VideoReader(path)
    frames: list[dict[str, Any]] = []
    count = 0
    with atomic_path(outputs.out / f"{stem}.mp4") as tmp, VideoWriter(tmp, reader.fps) as writer:
        for index, array in enumerate(progress(reader, reader.frames or None, f"{path.name}", "frame")):
            image = Image.fromarray(array)
            found = model.detect(image, **run)[0]
            writer.write(np.asarray(draw_detections(image, found.boxes.tolist(), found.class_names, found.scores.tolist())))
            outputs.extras(image, found, f"{stem}_{index}")
            frames.append({"frame": index, "time": round(index / reader.fps, 4), "detections": [
                {"bbox": [round(v, 2) for v in box], "category": name, "class_id": int(k), "score": round(float(s), 5)}
                for box, k, name, s in zip(found.boxes.tolist(), found.class_ids.tolist(), found.class_names,
                                           found.scores.tolist())]})  # fmt: skip
            count += len(found)
    header = {"source": str(path), "fps": reader.fps, "frames": len(frames), "boxes": "x1, y1, x2, y2 in frame pixels"}
    from cspnet.io import dumps_json

    body = dumps_json(header, indent=None).strip()[:-1] + ', "per_frame": ' + json_lines(frames).rstrip("\n") + "}\n"
    atomic_write_text(outputs.out / f"{stem}.json", body)
    say(f"{path}: {len(frames)} frame(s), {count} object(s) -> {outputs.out / f'{stem}.mp4'}")


def run_predict(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.detection.sources import collect_sources
    from cspnet.io import atomic_write_text
    from cspnet.progress import progress

    _check_thresholds(args)
    sources = collect_sources(args.images)
    out = _output_folder(args.output, args.output)
    stems = output_stems([s.path for s in sources])
    _check_targets(sources, stems, out)
    model = _load_detector(args)
    run = {"conf_threshold": args.conf, "iou_threshold": args.iou, "max_detections": args.max_detections,
           "classes": _class_ids(args.classes, model.info.class_names), "augment": args.augment}  # fmt: skip
    model.thresholds(args.conf, args.iou, args.max_detections)  # a file with NMS inside says now if it cannot
    ids = _ResultIds(args.data, model.info)
    outputs = _Outputs(out, args.save_txt, args.save_crops)
    images = [s for s in sources if s.kind == "image"]
    for position, (source, stem) in enumerate(progress(list(zip(sources, stems)), len(sources), "detecting", "file")):
        if source.kind == "video":
            _predict_video(model, source.path, stem, outputs, run)
        else:
            _predict_image(model, source.path, stem, outputs, run, ids.image_id(source.path, position), ids)
    if images and len(outputs.failed) == len(images) and len(images) == len(sources):
        raise CLIError(f"none of the {len(images)} image(s) can be read (first: {outputs.failed[0]})")
    if outputs.failed:
        print(f"cspnet detect predict: warning: skipped {len(outputs.failed)} unreadable image(s): "
              f"{'; '.join(outputs.failed[:3])}", file=sys.stderr)  # fmt: skip
    if ids.unmatched:
        print(f"cspnet detect predict: warning: {ids.unmatched} image(s) are not in --data {args.data}: given new "
              "image ids after its own", file=sys.stderr)  # fmt: skip
    if images:
        atomic_write_text(out / "results.json", json_lines(outputs.results))
    done = len(images) - len(outputs.failed)
    print(f"{done} image(s), {len(sources) - len(images)} video(s) -> {out}"
          + (" (results.json: COCO results, boxes in image pixels)" if images else ""))  # fmt: skip
    return 0


# -- export ----------------------------------------------------------------------------------------
def _add_export(actions: argparse._SubParsersAction) -> None:
    from cspnet.cli.backend_options import add_backend_option

    p = actions.add_parser("export", help="a detector as ONNX with its metadata (dynamic batch, decoding inside, "
                           "NMS and int8 optional)")
    p.add_argument("model", nargs="?", help="registered detector; optional with a `detect train` checkpoint")
    p.add_argument("--checkpoint", metavar="FILE", help="a `cspnet detect train` checkpoint, or weights any "
                   "create_model(pretrained=...) reads (darknet .weights, .pth, .safetensors) for MODEL")
    p.add_argument("--names", metavar="FILE|coco", help="class names of MODEL's weights: 'coco' or a file with one "
                   "name per line (default: class indices)")
    p.add_argument("--num-classes", type=positive_int, help="classes of a MODEL exported without names (default 80)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--img-size", type=int, help="input side (default: the checkpoint's, else the model's)")
    p.add_argument("--nms", action="store_true", help="add ONNX NonMaxSuppression: output detections (M, 7)")
    p.add_argument("--conf", type=float, default=PREDICT.conf_threshold, help="NMS score threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=PREDICT.iou_threshold, help="NMS IoU threshold (default %(default)s)")
    p.add_argument("--max-detections", type=positive_int, default=PREDICT.max_detections,
                   help="per image (default %(default)s)")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation of the network (per-channel weights, "
                   "QDQ; decoding and NMS stay float), calibrated on --calibration-data, for --backend (onnxruntime: "
                   "uint8 activations with a zero point; openvino: symmetric int8, which OpenVINO runs fastest)")
    p.add_argument("--calibration-data", metavar="PATH|digits", help="--int8: 'digits', an image folder, a COCO .json "
                   "or a YOLO data.yaml; images it does not use (with boxes) measure the mAP int8 costs")
    p.add_argument("--calibration-images", type=positive_int, default=None, metavar="N",
                   help="--int8: images to calibrate on (default 128)")
    add_backend_option(p)
    p.set_defaults(backend="onnxruntime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: a file that OpenVINO runs in bfloat16 (--backend openvino; checked there)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="a checkpoint's raw weights, not the EMA")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative difference from PyTorch")
    p.set_defaults(func=run_export)


def _export_source(args: argparse.Namespace) -> tuple[Any, int, Any]:
    """The detector to export, its default input side and its metadata (names, normalisation, ids)."""
    from cspnet.cli.main import CLIError
    from cspnet.detection.export import detector_info
    from cspnet.models import create_model, get_model_entry
    from cspnet.trained import is_training_checkpoint, load_trained

    if args.checkpoint and is_training_checkpoint(args.checkpoint):
        if args.names:
            raise CLIError(f"--names is for MODEL with a weights file: {args.checkpoint} names its own classes")
        trained = load_trained(args.checkpoint, expected_model=args.model, ema=args.ema, task="detection")
        detector: Any = trained.model
        info = detector_info(detector, trained.img_size, trained.class_names, name=trained.name,
                             mean=trained.mean, std=trained.std, category_ids=trained.category_ids)  # fmt: skip
        return detector, trained.img_size, info
    if not args.model:
        raise CLIError("name a detector or give --checkpoint (a `cspnet detect train` checkpoint)")
    if get_model_entry(args.model).task != "detection":
        raise CLIError(f"{args.model} is not a detector (`cspnet models --task detection` lists them)")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CLIError(f"checkpoint file not found: {args.checkpoint}")
    names, category_ids = None, None
    if args.names:
        from cspnet.detection.coco import class_names_from

        names, category_ids = class_names_from(args.names)
        if args.num_classes is not None and args.num_classes != len(names):
            raise CLIError(f"--num-classes {args.num_classes} contradicts the {len(names)} names of --names")
    classes = len(names) if names else args.num_classes or 80
    model: Any = create_model(args.model, pretrained=args.checkpoint or False, num_classes=classes).eval()
    model.name = args.model
    size = get_model_entry(args.model).input_size[-1]
    return model, size, detector_info(model, size, names, name=args.model, category_ids=category_ids)


def _int8_check(args: argparse.Namespace, model: Any, held_out: Any) -> Any:
    """The ``verify`` of an int8 export: mAP@.5 of the file (onnxruntime) and of PyTorch fp32 on the
    held-out labelled images of ``--calibration-data`` (none: nothing to measure)."""
    from cspnet.evaluation import evaluate_detector
    from cspnet.inference import DetectionModel, load_model

    def verify(tmp: Path, info: Any) -> str:
        if held_out is None or list(getattr(held_out, "classes", [])) != list(info.class_names):
            return "no labelled held-out images to measure the mAP int8 costs"
        int8 = evaluate_detector(load_model(tmp, "onnxruntime"), held_out).metrics["map50"]
        fp32 = evaluate_detector(DetectionModel.from_detector(model, info.with_(precision="fp32")), held_out)
        base = fp32.metrics["map50"]
        lost = None if base is None or int8 is None else base - int8
        return (f"mAP@.5 on {fp32.images} held-out images: int8 {_fmt(int8)}, fp32 {_fmt(base)} "
                f"(int8 costs {_fmt(lost)})")  # fmt: skip

    return verify


def _engine_check(args: argparse.Namespace, module_check: Any) -> Any:
    """The file run on ``--backend`` (openvino; in bf16 for ``--precision bf16``) against PyTorch, added to
    the int8 check when there is one."""
    from cspnet.inference import load_model

    def verify(tmp: Path, info: Any) -> str:
        import torch

        notes = [module_check(tmp, info)] if module_check is not None else []
        if args.backend != "onnxruntime":
            loaded = load_model(tmp, args.backend, precision=None if args.precision == "fp32" else args.precision)
            batch = torch.rand(2, 3, info.img_size, info.img_size, generator=torch.Generator().manual_seed(2))
            got = loaded.outputs(loaded.preprocess((batch * 255).round().to(torch.uint8)))
            notes.append(f"runs on {args.backend} {loaded.precision} ({len(got)} output(s) of the expected shapes)")
        return "; ".join(notes)

    return verify


def _int8_engine(args: argparse.Namespace) -> str:
    """The engine an int8 file is made for: ``--int8-engine`` (``cspnet export``), else ``--backend`` when it
    is openvino (its int8 scheme differs: :func:`cspnet.export.quantize.activation_scheme`), else onnxruntime."""
    given = getattr(args, "int8_engine", None)
    return given or ("openvino" if args.backend == "openvino" else "onnxruntime")


def run_export(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.detection.export import export_detector_onnx
    from cspnet.io import check_output_file
    from cspnet.metadata import check_img_size

    _check_thresholds(args)
    if args.img_size is not None:
        check_img_size(args.img_size)  # the range before building anything; the stride below
    if args.int8 != bool(args.calibration_data):
        raise CLIError("--int8 needs --calibration-data PATH|digits" if args.int8 else "--calibration-data is for --int8 only")
    if args.precision == "bf16" and (args.backend != "openvino" or args.int8):
        raise CLIError("--precision bf16 is for OpenVINO: add --backend openvino (and no --int8)")
    output = check_output_file(args.output)
    model, size, info = _export_source(args)
    size = args.img_size or size
    check_img_size(size, model)
    info = info.with_(img_size=size, precision=args.precision)
    int8, verify = None, None
    if args.int8:
        from cspnet.detection.calibration import calibration_split
        from cspnet.export.quantize import DEFAULT_CALIBRATION_IMAGES

        split = calibration_split(args.calibration_data, size, args.calibration_images or DEFAULT_CALIBRATION_IMAGES,
                                  pad_value=info.pad_value)  # fmt: skip
        int8, verify = split, _int8_check(args, model, split.held_out)
    # Written through write_checked: moved into place only once it reproduces PyTorch within --tolerance.
    result = export_detector_onnx(model, output, size, args.nms, args.conf, args.iou, args.max_detections,
                                  tolerance=args.tolerance, info=info, int8_images=int8.images if int8 else None,
                                  calibration=int8.description if int8 else "", int8_engine=_int8_engine(args),
                                  verify=_engine_check(args, verify))  # fmt: skip
    print(result.summary())
    return 0
