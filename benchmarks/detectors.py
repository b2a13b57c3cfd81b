"""Detectors at batch 1, 416x416, against OpenCV's DNN module: ``docs/benchmarks.md``, section "Detectors".

    bash benchmarks/opencv_env.sh                                   # once: OpenCV 4.x + scikit-image
    flock /work/plan/heavy.lock benchmarks/.venv-opencv/bin/python benchmarks/detectors.py
    benchmarks/.venv-opencv/bin/python benchmarks/detectors.py --render   # rebuild the doc section

The anchor is what a darknet user runs on a CPU today: ``cv2.dnn.readNetFromDarknet(cfg, weights)``
(OpenCV 4.x; 5.x dropped the darknet importer) with csresnext50-panet-spp.cfg (the published file,
``benchmarks/cfg/``) and csdarknet53-panet-spp.cfg (written by ``darknet_cfgs.py``, equal to the
published one layer by layer). Both sides read the same ``.weights`` file, written from a seeded
model by :func:`cspnet.convert.write_darknet_weights` and read back by ``create_model(pretrained=)``.
Random weights would leave every score saturated at 0 or 1 (an untrained network's maps reach
thousands), so the seeded model is prepared once (:func:`seeded_detector`): its batch norms take the
photos' statistics (stored over a variance of ``STORED_VARIANCE``, see there), its prediction convs
are scaled to logits of zero mean and ``OBJECT_SPREAD`` / ``CLASS_SPREAD`` spread on the photos, the
class biases shifted so the top ``CLASS_SHARE`` of class logits reach probability 0.82, and
objectness until the median photo has ``CANDIDATES`` (box, class) pairs above the prediction
threshold, about what a trained detector feeds its NMS (a few to a few dozen detections come out).
Speed does not depend on the weights otherwise; accuracy on them means nothing beyond fp32 (a random
network amplifies bf16 and int8 rounding into noise), so int8's accuracy is measured on a trained
detector (``--digits-checkpoint``: mAP@.5 on the embedded digits).

Every path runs in this one process, interleaved (one image per path per round, the photos in turn),
two threads each: OpenCV's forward (the anchor: its network and its YOLO layers, nothing else), and
the project's paths, each end to end (decode the file + letterbox + model + box decoding + NMS, every
stage timed) and the model alone (the same call on a prepared input):

* ``torch fp32`` / ``torch bf16``: :func:`cspnet.export.optimize_for_inference` (folded, channels-last);
* ``onnxruntime`` / ``openvino`` ``fp32``: the detector's ONNX file (``export_detector_onnx``: the
  network and its box decoding); ``openvino bf16``: that file in bf16;
* ``onnxruntime int8`` / ``openvino int8``: that file quantised for the engine
  (:func:`cspnet.export.quantize.quantize_onnx`, the network only, calibrated on other photos).

Every path decodes with the project's one image reader and letterbox
(``cspnet.data.folder.decode_image``, ``cspnet.detection.data.boxes.letterbox_image``) and ends with
the one post-processing rule (``cspnet.ops.postprocess.postprocess_numpy``) and ``Letterbox.to_image``,
as ``load_model(...).detect()`` is to.

Detections of each fp32 path are compared with OpenCV's on the photos: the same letterboxed input,
OpenCV's own post-processing (its YOLO layers' boxes, ``cv2.dnn.NMSBoxesBatched``), boxes back on
the photo. (The JSON also keeps, per photo, the share of torch fp32's detections each other path
finds: on random weights that is noise for bf16 and int8, so it is not rendered.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cspnet.runtime import default_openmp_wait_policy, tune_cpu_allocator

default_openmp_wait_policy()  # before torch is imported: idle OpenMP threads sleep, as in every cspnet command
tune_cpu_allocator()  # as the inference commands do

import torch  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "detectors.json"
DOC = HERE.parent / "docs" / "benchmarks.md"
NOTES = HERE / "detectors_notes.md"  # hand-written analysis, appended to the generated tables
BEGIN, END = "<!-- detectors:begin (benchmarks/detectors.py) -->", "<!-- detectors:end -->"

SIDE = 416
THREADS = 2
SEED = 0
ANCHORED = {"cspresnext50_panet_spp": "csresnext50-panet-spp.cfg", "cspdarknet53_panet_spp": "csdarknet53-panet-spp.cfg"}
EFM = ("csppeleenet_efm", "cspdensenet121_efm")  # no darknet cfg: engines only
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")  # scikit-image's
CALIBRATION = ("motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png")
MIN_VARIANCE, STORED_VARIANCE = 0.01, 1e4
OBJECT_SPREAD, CLASS_SPREAD = 4.0, 2.0  # standard deviations of the objectness and class logits on the photos
CLASS_SHARE, CLASS_LOGIT = 0.01, 1.5  # the top 1 % of class logits reach probability 0.82
CANDIDATES, CONF = 30, 0.25  # then objectness until the median photo has 30 (box, class) pairs > 0.25
PATHS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
         ("onnxruntime", "int8"), ("openvino", "int8"))  # fmt: skip
STAGES = ("decode", "letterbox", "model", "box decoding", "nms")
TARGET_FP32, TARGET_INT8 = 1.5, 3.0  # end to end, against OpenCV's forward alone


def photo_paths(names: tuple[str, ...]) -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in names]


# --- inputs and weights -----------------------------------------------------------------------------


def letterboxed(path: Path) -> tuple[torch.Tensor, Any]:
    """The project's own reader and letterbox: ``float (1, 3, S, S)`` in [0, 1] and the Letterbox."""
    from cspnet.data.folder import decode_image
    from cspnet.detection.data.boxes import letterbox_image

    pixels, box = letterbox_image(decode_image(path), SIDE)
    return (pixels.float() / 255)[None], box


@torch.no_grad()
def seeded_detector(name: str, photos: list[Path]) -> torch.nn.Module:
    """The seeded model with its prediction biases shifted (module docstring) so the photos give detections."""
    import cspnet

    torch.manual_seed(SEED)
    model = cspnet.create_model(name).eval()
    batch = torch.cat([letterboxed(p)[0] for p in photos])
    # Batch-norm statistics of the photos themselves (one training-mode pass with momentum 1): every
    # layer's output normalised as in a trained network. Left at their initial values, the activations
    # grow to thousands layer after layer and the logits become differences of large numbers.
    # The statistics go into the affine, over a running variance of STORED_VARIANCE: the project's
    # batch norms add 1e-5 to the variance, OpenCV's darknet importer less, and a random network
    # amplifies that per-layer difference about a thousandfold by its heads; over a variance of 1e4
    # it is a 1e-10 one. A channel the photos barely move is floored at MIN_VARIANCE.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()(batch)
    model.eval()
    for norm in norms:
        scale = norm.weight / (norm.running_var.clamp_min(MIN_VARIANCE) + norm.eps).sqrt()
        norm.bias -= norm.running_mean * scale
        norm.weight.copy_(scale * (STORED_VARIANCE + norm.eps) ** 0.5)
        norm.running_mean.zero_()
        norm.running_var.fill_(STORED_VARIANCE)
        norm.momentum = 0.1
    head = model.head
    # An untrained network's maps reach thousands (every logit saturated): scale each prediction conv
    # so its outputs have unit spread on the photos, as trained logits roughly do.
    # Objectness and class logits get a wider spread: a few confident anchors and classes, many sure negatives.
    spread = torch.ones(head.anchors_per_scale, 5 + model.num_classes)
    spread[:, 4], spread[:, 5:] = OBJECT_SPREAD, CLASS_SPREAD
    for level, out in zip(head.levels, model(batch)):
        prediction = list(level.children())[-1]
        mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3))  # per output channel, over the photos' cells
        scale = spread.flatten() / std
        prediction.weight *= scale[:, None, None, None]
        prediction.bias.copy_((prediction.bias - mean) * scale)
    maps = model(batch)
    per_anchor = 5 + model.num_classes
    planes = [m.reshape(m.shape[0], head.anchors_per_scale, per_anchor, -1) for m in maps]
    objectness = torch.cat([p[:, :, 4] for p in planes], 2).flatten(1)  # (photos, anchors)
    classes = torch.cat([p[:, :, 5:] for p in planes], 3).transpose(2, 3).flatten(1, 2)  # (photos, anchors, C)
    shift_cls = CLASS_LOGIT - float(classes.flatten().kthvalue(int(classes.numel() * (1 - CLASS_SHARE))).values)
    class_prob = (classes + shift_cls).sigmoid()

    def candidates(shift: float) -> float:  # the median photo's (box, class) pairs above the threshold
        return float(((objectness + shift).sigmoid()[..., None] * class_prob > CONF).sum((1, 2)).median())

    low, high = -50.0, 50.0  # bisection: candidates() grows with the shift
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if candidates(mid) < CANDIDATES else (low, mid)
    for level in head.levels:
        bias = list(level.children())[-1].bias.view(head.anchors_per_scale, per_anchor)
        bias[:, 4] += high
        bias[:, 5:] += shift_cls
    return model


# --- the anchor: OpenCV's DNN module ------------------------------------------------------------------


class OpenCvDetector:
    """``cv2.dnn`` on the darknet cfg and weights: the forward pass, and its own post-processing."""

    def __init__(self, cfg: Path, weights: Path) -> None:
        import cv2

        cv2.setNumThreads(THREADS)
        self.cv2 = cv2
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.outputs = self.net.getUnconnectedOutLayersNames()

    def forward(self, batch: np.ndarray) -> list[np.ndarray]:
        """One ``(K, 5 + C)`` array per YOLO layer: centre, size (fractions of the input), objectness, scores."""
        self.net.setInput(batch)
        return list(self.net.forward(self.outputs))

    def detect(self, batch: np.ndarray, conf: float, iou: float, max_detections: int) -> dict[str, torch.Tensor]:
        """Detections in input pixels: every (box, class) above ``conf``, NMS per class (``NMSBoxesBatched``)."""
        rows = np.concatenate(self.forward(batch))
        side = batch.shape[-1]
        centre, size = rows[:, 0:2] * side, rows[:, 2:4] * side
        xyxy = np.concatenate([centre - size / 2, centre + size / 2], 1).clip(0, side)
        box, label = np.nonzero(rows[:, 5:] > conf)
        score = rows[box, 5 + label]
        xywh = np.concatenate([xyxy[box, :2], xyxy[box, 2:] - xyxy[box, :2]], 1)
        keep = self.cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), label.tolist(), conf, iou)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        keep = keep[np.argsort(-score[keep], kind="stable")][:max_detections]
        return {"boxes": torch.from_numpy(xyxy[box[keep]]).float(), "scores": torch.from_numpy(score[keep]),
                "labels": torch.from_numpy(label[keep])}  # fmt: skip


# --- the project's paths -------------------------------------------------------------------------------


class ProjectPath:
    """One backend and precision: ``forward`` (the model alone) and ``detect`` (end to end, staged)."""

    def __init__(self, detector: Any, backend: str, precision: str, files: dict[str, Path]) -> None:
        from cspnet.inference.engines import OnnxRuntimeEngine, OpenVinoEngine

        self.detector, self.backend, self.precision = detector, backend, precision
        self.label = f"{backend} {precision}"
        if backend == "torch":
            from cspnet.export import optimize_for_inference

            self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            self.module = optimize_for_inference(detector, dtype=self.dtype)
        elif backend == "onnxruntime":
            self.engine: Any = OnnxRuntimeEngine(files[f"onnxruntime {precision}"], threads=THREADS)
        else:
            file = files["openvino int8" if precision == "int8" else "fp32"]
            self.engine = OpenVinoEngine(file, batch_size=1, threads=THREADS, precision=precision)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> Any:
        """The model alone: raw maps (torch) or the file's decoded boxes and scores (engines)."""
        if self.backend == "torch":
            return self.module(batch.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return self.engine.run(batch)

    @torch.no_grad()
    def decode(self, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "torch":
            return self.detector.decode([m.float() for m in out])
        return out[0], out[1]  # decoded in the graph

    def detect(self, path: Path, times: dict[str, float]) -> dict[str, torch.Tensor]:
        """End to end on an image file, each stage's seconds added to ``times``; boxes on the photo."""
        from cspnet.data.folder import decode_image
        from cspnet.detection.data.boxes import letterbox_image
        from cspnet.ops.postprocess import postprocess_numpy

        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[stage] = times.get(stage, 0.0) + now - clock
            clock = now

        image = decode_image(path)
        image.load()
        lap("decode")
        pixels, box = letterbox_image(image, SIDE)
        batch = (pixels.float() / 255)[None]
        lap("letterbox")
        out = self.forward(batch)
        lap("model")
        boxes, scores = self.decode(out)
        lap("box decoding")
        found = postprocess_numpy(boxes, scores, [SIDE, SIDE])[0]
        found["boxes"] = box.to_image(found["boxes"])
        lap("nms")
        return found


def export_files(detector: Any, folder: Path, calibration: list[torch.Tensor], side: int = SIDE) -> dict[str, Path]:
    """The detector's ONNX file (network + box decoding) and its int8 versions for each engine."""
    from cspnet.detection.export import export_detector_onnx
    from cspnet.export.quantize import quantize_onnx

    fp32 = export_detector_onnx(detector, folder / "fp32.onnx", side).path
    batches = [b.numpy() for b in calibration]
    scopes = ("/detector/backbone/", "/detector/neck/", "/detector/head/")  # not the box decoding
    # The prediction convs stay float too (as `detect export --int8` keeps them): quantised, they cost the
    # digits detector 0.014 mAP@.5 and nothing in speed worth having.
    import onnx

    predictions = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"
                   and re.fullmatch(r"/detector/head/levels\.\d+/levels\.\d+\.2/Conv", n.name)]  # fmt: skip
    files = {"fp32": fp32, "onnxruntime fp32": fp32}
    for engine in ("onnxruntime", "openvino"):
        files[f"{engine} int8"] = quantize_onnx(fp32, folder / f"int8_{engine}.onnx", batches, engine=engine,
                                                scopes=scopes, float_nodes=predictions)  # fmt: skip
    return files


# --- comparing detections ------------------------------------------------------------------------------


def compare(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor], side: float) -> dict[str, Any]:
    """Match ``got`` to ``reference`` (same label, nearest box): counts, labels, largest box difference."""
    ref_boxes, got_boxes = reference["boxes"].double(), got["boxes"].double()
    unused = list(range(len(got_boxes)))
    worst, matched, lonely = 0.0, 0, []
    for i in range(len(ref_boxes)):
        same = [j for j in unused if int(got["labels"][j]) == int(reference["labels"][i])]
        if not same:
            lonely.append(i)
            continue
        dist = [float((got_boxes[j] - ref_boxes[i]).abs().max()) for j in same]
        j = same[int(np.argmin(dist))]
        worst = max(worst, min(dist))
        matched += 1
        unused.remove(j)
    # Unmatched on either side (their scores say whether they were borderline).
    return {"reference": len(ref_boxes), "found": len(got_boxes), "matched": matched, "max_abs_px": worst,
            "max_rel": worst / side, "unmatched_scores": [float(got["scores"][j]) for j in unused]
            + [float(reference["scores"][i]) for i in lonely]}  # fmt: skip


def iou_recall(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[int, int]:
    """How many of ``reference``'s detections ``got`` finds (same label, IoU >= 0.5): (found, of)."""
    from cspnet.ops.boxes import box_iou

    if not len(reference["boxes"]) or not len(got["boxes"]):
        return 0, len(reference["boxes"])
    iou = box_iou(reference["boxes"], got["boxes"])
    # A box clipped to nothing at the border has no IoU with anything: the same box within a pixel counts.
    near = (reference["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(2) < 1.0
    same = reference["labels"][:, None] == got["labels"][None, :]
    return int((((iou >= 0.5) | near) & same).any(1).sum()), len(reference["boxes"])


# --- measuring -----------------------------------------------------------------------------------------


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def measure_model(name: str, rounds: int, folder: Path, anchored: bool) -> dict[str, Any]:
    from cspnet.profiling import profile

    photos, calibration_photos = photo_paths(PHOTOS), photo_paths(CALIBRATION)
    detector = seeded_detector(name, photos)
    row: dict[str, Any] = {"model": name, "gmacs": profile(detector, (3, SIDE, SIDE)).macs / 1e9}
    opencv = None
    if anchored:
        from cspnet.convert import write_darknet_weights

        weights = write_darknet_weights(detector, folder / f"{name}.weights")
        import cspnet

        detector = cspnet.create_model(name, pretrained=weights).eval()  # both sides read the one file
        opencv = OpenCvDetector(cfg_file(name, folder), weights)
        row["weights_mib"] = weights.stat().st_size / 2**20
    files = export_files(detector, folder, [letterboxed(p)[0] for p in calibration_photos])
    paths = [ProjectPath(detector, backend, precision, files) for backend, precision in PATHS]
    inputs = [letterboxed(p) for p in photos]
    row["checks"] = check_detections(opencv, paths, photos, inputs)
    row["timings"] = time_paths(opencv, paths, photos, inputs[0][0], rounds)
    return row


def cfg_file(name: str, folder: Path) -> Path:
    """The cfg OpenCV reads: the kept published file, or the one ``darknet_cfgs`` writes."""
    from darknet_cfgs import CFG, csdarknet53_panet_spp

    if name == "cspdarknet53_panet_spp":
        path = folder / ANCHORED[name]
        path.write_text(csdarknet53_panet_spp())
        return path
    return CFG / ANCHORED[name]


def check_detections(opencv: OpenCvDetector | None, paths: list[ProjectPath], photos: list[Path],
                     inputs: list[tuple[torch.Tensor, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Per photo and path: fp32 paths against OpenCV, the others' recall of torch fp32's detections."""
    from cspnet.ops.thresholds import PREDICT

    checks = []
    for photo, (batch, box) in zip(photos, inputs):
        side = float(max(box.width, box.height))
        found = {p.label: p.detect(photo, {}) for p in paths}
        reference = found["torch fp32"]
        entry: dict[str, Any] = {"photo": photo.name, "detections": len(reference["boxes"])}
        if opencv is not None:
            theirs = opencv.detect(batch.numpy(), PREDICT.conf_threshold, PREDICT.iou_threshold, PREDICT.max_detections)
            theirs["boxes"] = box.to_image(theirs["boxes"])
            entry["opencv"] = {p.label: compare(theirs, found[p.label], side) for p in paths if p.precision == "fp32"}
        entry["recall"] = {label: iou_recall(reference, got) for label, got in found.items() if label != "torch fp32"}
        checks.append(entry)
        print(f"    {photo.name}: {entry['detections']} detections; "
              + ", ".join(f"{k} {v['matched']}/{v['reference']} ({v['max_abs_px']:.2g} px)"
                          for k, v in entry.get("opencv", {}).items()), flush=True)  # fmt: skip
    return checks


def time_paths(opencv: OpenCvDetector | None, paths: list[ProjectPath], photos: list[Path], batch: torch.Tensor,
               rounds: int, warmup: int = 2) -> dict[str, Any]:  # fmt: skip
    """Interleaved: per round, OpenCV's forward, then every path end to end and its model alone."""
    timings: dict[str, dict[str, list[float]]] = {}
    blob = batch.numpy()
    for r in range(warmup + rounds):
        photo = photos[r % len(photos)]
        if opencv is not None:
            start = time.perf_counter()
            opencv.forward(blob)
            if r >= warmup:
                timings.setdefault("opencv fp32", {}).setdefault("model", []).append(time.perf_counter() - start)
        for path in paths:
            stages: dict[str, float] = {}
            start = time.perf_counter()
            path.detect(photo, stages)
            total = time.perf_counter() - start
            start = time.perf_counter()
            path.forward(batch)
            alone = time.perf_counter() - start
            if r >= warmup:
                record = timings.setdefault(path.label, {})
                record.setdefault("end_to_end", []).append(total)
                record.setdefault("model_alone", []).append(alone)
                for stage, seconds in stages.items():
                    record.setdefault(stage, []).append(seconds)
    return {label: {k: _median_ms(v) for k, v in record.items()} for label, record in timings.items()}


# --- accuracy of int8 on a trained detector ----------------------------------------------------------------


def detector_accuracy(checkpoint: Path, folder: Path, calibration_images: int = 128) -> dict[str, Any]:
    """mAP@.5 on the embedded digits' validation canvases of a ``detect train`` checkpoint: torch fp32,
    its ONNX file on both engines, and int8 for each engine (calibrated on training canvases)."""
    from cspnet.detection.data import digits_detection_split
    from cspnet.detection.export import detector_info
    from cspnet.evaluation import evaluate_detector
    from cspnet.inference import DetectionModel
    from cspnet.inference.engines import OnnxRuntimeEngine, OpenVinoEngine
    from cspnet.trained import load_trained

    trained = load_trained(checkpoint, task="detection")
    detector, size = trained.model.eval(), trained.img_size
    train, val = digits_detection_split(size, train_images=calibration_images)
    calibration = [(train.images[:calibration_images].float() / 255)[i : i + 16] for i in range(0, calibration_images, 16)]
    files = export_files(detector, folder, calibration, side=size)
    models: dict[str, Any] = {"torch fp32": detector}
    for label, file in (("onnxruntime fp32", files["fp32"]), ("openvino fp32", files["fp32"]),
                        ("onnxruntime int8", files["onnxruntime int8"]), ("openvino int8", files["openvino int8"])):  # fmt: skip
        engine = OnnxRuntimeEngine(file) if label.startswith("onnx") else OpenVinoEngine(file)
        models[label] = DetectionModel(engine, detector_info(detector, size, trained.class_names))
    out: dict[str, Any] = {"model": trained.name, "img_size": size, "images": len(val), "checkpoint": str(checkpoint)}
    for label, model in models.items():
        metrics = evaluate_detector(model, val, trained.class_names).metrics
        out[label] = {"map50": metrics["map50"], "map": metrics["map"]}
        print(f"  {label}: mAP@.5 {metrics['map50']:.4f}, mAP {metrics['map']:.4f}", flush=True)
    return out


# --- ceilings ------------------------------------------------------------------------------------------


def _gemm_file(folder: Path, n: int, int8: bool) -> Path:
    """An ONNX ``(n, n) @ (n, n)`` matrix multiply (weights constant; int8: QDQ on both inputs) reduced
    to one number, so that copying the product out does not count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")]
    nodes, inputs = [], ["x", "w"]
    if int8:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        for name in ("x", "w"):
            nodes += [helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}_q"]),
                      helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"])]  # fmt: skip
        inputs = ["x_dq", "w_dq"]
    nodes += [helper.make_node("MatMul", inputs, ["m"]), helper.make_node("ReduceMax", ["m"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], inits)  # fmt: skip
    path = folder / f"gemm_{'int8' if int8 else 'float'}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def ceilings(folder: Path, n: int = 2048, repeats: int = 8) -> dict[str, float]:
    """What this CPU multiplies per second (GFLOP/s, 2 per multiply-add), best of ``repeats``, two
    threads: torch's fp32 / bf16 matrix multiply and OpenVINO's fp32 / bf16 / int8 one."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    torch.set_num_threads(THREADS)
    flops = 2 * n**3
    out: dict[str, float] = {}

    def best(run: Callable[[], Any]) -> float:
        run()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        return flops / min(seconds) / 1e9

    for dtype, label in ((torch.float32, "torch fp32"), (torch.bfloat16, "torch bf16")):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[label] = best(lambda a=a, b=b: a @ b)
    core, x = ov.Core(), np.random.default_rng(0).random((n, n), dtype=np.float32)
    for precision in ("fp32", "bf16", "int8"):
        config = {props.inference_num_threads: THREADS, hints.performance_mode: hints.PerformanceMode.LATENCY,
                  hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32}  # fmt: skip
        request = core.compile_model(str(_gemm_file(folder, n, precision == "int8")), "CPU", config).create_infer_request()
        out[f"openvino {precision}"] = best(lambda request=request: request.infer({0: x}, share_inputs=True))
    return out


def ceiling(peaks: dict[str, float], precision: str) -> float:
    """The CPU's ceiling for ``precision``: the best any engine reached on the matrix multiply."""
    return max(v for k, v in peaks.items() if k.endswith(precision))


def machine() -> dict[str, Any]:
    import onnxruntime
    import openvino

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    info: dict[str, Any] = {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "simd_flags": [f for f in fields.get("Flags", "").split() if re.match(r"(avx512_bf16|avx512_vnni|amx)", f)],
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    return info


# --- rendering ---------------------------------------------------------------------------------------


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def render_model(row: dict[str, Any], peaks: dict[str, float]) -> list[str]:
    t = row["timings"]
    anchor = t.get("opencv fp32", {}).get("model")
    head = "| path | end to end (ms) | img/s | " + " | ".join(STAGES) + " | model alone (ms) | share of ceiling |"
    lines = [f"**{row['model']}** ({row['gmacs']:.1f} GMACs at {SIDE}; load average {row['load_before']:.1f} before, "
             f"{row['load_after']:.1f} after)", "", head + (" vs OpenCV forward |" if anchor else ""),
             "|" + "---|" * (len(STAGES) + 5 + bool(anchor))]  # fmt: skip
    if anchor:
        share = 2 * row["gmacs"] / (anchor / 1e3) / ceiling(peaks, "fp32")
        lines.append(f"| OpenCV DNN fp32 (forward only) | - | {1e3 / anchor:.1f} | " + " | ".join("-" for _ in STAGES)
                     + f" | {_fmt_ms(anchor)} | {100 * share:.0f} % | 1.00x |")  # fmt: skip
    for label, rec in t.items():
        if label == "opencv fp32":
            continue
        e2e = rec["end_to_end"]
        share = 2 * row["gmacs"] / (rec["model_alone"] / 1e3) / ceiling(peaks, label.split()[1])
        cells = [label, _fmt_ms(e2e), f"{1e3 / e2e:.1f}", *(_fmt_ms(rec.get(s, 0.0)) for s in STAGES),
                 _fmt_ms(rec["model_alone"]), f"{100 * share:.0f} %"]  # fmt: skip
        if anchor:
            cells.append(f"{anchor / e2e:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_checks(row: dict[str, Any]) -> list[str]:
    lines = []
    opencv = [c for c in row["checks"] if "opencv" in c]
    if opencv:
        worst: dict[str, list[float]] = {}
        same: dict[str, bool] = {}
        for c in opencv:
            for label, v in c["opencv"].items():
                worst.setdefault(label, []).append(v["max_abs_px"])
                ok = v["matched"] == v["reference"] == v["found"] and v["max_rel"] <= 1e-3
                same[label] = same.get(label, True) and ok
        counts = ", ".join(f"{c['photo']} {c['detections']}" for c in opencv)
        odd = [f"{label} on {c['photo']}: {v['found']} against {v['reference']}"
               + (f" (unmatched score {', '.join(f'{x:.4f}' for x in v['unmatched_scores'])})" if v.get("unmatched_scores") else "")
               for c in opencv for label, v in c["opencv"].items() if not v["matched"] == v["reference"] == v["found"]]  # fmt: skip
        lines.append(f"Detections against OpenCV's on {len(opencv)} photos ({counts} detections): "
                     + "; ".join(f"{label} {'**same**' if same[label] else 'DIFFERENT'} (largest box difference "
                                 f"{max(worst[label]):.2g} px)" for label in worst) + "."
                     + (f" Detections that differ: {'; '.join(odd)}." if odd else ""))  # fmt: skip
    return lines


def render(data: dict[str, Any]) -> str:
    m, peaks = data["machine"], data["ceilings"]
    lines = [BEGIN, "## Detectors: batch 1 at 416, against OpenCV DNN (CPU)", "",
             f"Produced by `benchmarks/detectors.py` on {m['date']}. Machine: {m['cpu']}, {m['cores']} cores "
             f"({' '.join(m['simd_flags'])}); torch {m['torch']}, onnxruntime {m['onnxruntime']}, OpenVINO "
             f"{m['openvino']}, OpenCV {m.get('opencv', '-')}; {THREADS} threads everywhere, one process, paths "
             f"interleaved, {data['rounds']} rounds (medians). Times in ms per image.", "",
             "Ceilings (2048^3 matrix multiply, GFLOP/s, best of 8): "
             + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ". \"Share of ceiling\": the model alone's "
             "2 x MACs per second against the best ceiling of its precision.", ""]  # fmt: skip
    for row in data["results"]:
        lines += render_model(row, peaks) + [""] + render_checks(row) + [""]
    if data.get("accuracy"):
        acc = data["accuracy"]
        fp32 = acc["torch fp32"]["map50"]
        lines += [f"int8's accuracy cost, on a trained detector (`{acc['model']}` at {acc['img_size']}, the `cspnet detect "
                  f"train` default on the embedded digits; {acc['images']} validation canvases; int8 calibrated on 128 "
                  "training canvases, prediction convs float): mAP@.5 "
                  + ", ".join(f"{k} {v['map50']:.4f}" for k, v in acc.items() if isinstance(v, dict))
                  + "; int8 costs " + ", ".join(f"{k.split()[0]} {fp32 - v['map50']:+.4f}" for k, v in acc.items()
                                                if isinstance(v, dict) and k.endswith("int8")) + ".", ""]  # fmt: skip
    lines += render_targets(data["results"])
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    lines.append(END)
    return "\n".join(lines) + "\n"


def render_targets(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"Targets, end to end against OpenCV's forward alone: best fp32 >= {TARGET_FP32}x, best int8 >= "
             f"{TARGET_INT8}x.", "", "| model | best fp32 end to end | best int8 end to end | best overall |",
             "|---|---|---|---|"]  # fmt: skip
    for row in results:
        t = row["timings"]
        anchor = t.get("opencv fp32", {}).get("model")
        if not anchor:
            continue
        paths = {k: anchor / v["end_to_end"] for k, v in t.items() if k != "opencv fp32"}

        def best(suffix: str, target: float | None, paths: dict[str, float] = paths) -> str:
            label = max((k for k in paths if k.endswith(suffix)), key=lambda k: paths[k])
            verdict = "" if target is None else (" **met**" if paths[label] >= target else
                                                 f" missed by {target - paths[label]:.2f}x")  # fmt: skip
            return f"{label} {paths[label]:.2f}x{verdict}"

        overall = max(paths, key=lambda k: paths[k])
        lines.append(f"| {row['model']} | {best('fp32', TARGET_FP32)} | {best('int8', TARGET_INT8)} | "
                     f"{overall} {paths[overall]:.2f}x |")  # fmt: skip
    return lines


def write_doc(section: str) -> None:
    from doc_section import write_section  # the sibling script's folder is on sys.path when run as a script

    write_section(DOC, BEGIN, END, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="only rebuild the doc section from the results")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per model (after 2 of warm-up)")
    parser.add_argument("--models", nargs="+", default=[*ANCHORED, *EFM], help="detectors to measure")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument("--digits-checkpoint", type=Path, help="a `detect train` checkpoint on the embedded digits: "
                        "int8's mAP@.5 cost")  # fmt: skip
    args = parser.parse_args()
    if not args.render:
        torch.set_num_threads(THREADS)
        with tempfile.TemporaryDirectory(prefix="cspnet-detectors-") as tmp:
            data: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "ceilings": ceilings(Path(tmp))}
            print("ceilings:", {k: round(v) for k, v in data["ceilings"].items()}, flush=True)
            if args.digits_checkpoint:
                data["accuracy"] = detector_accuracy(args.digits_checkpoint, Path(tmp))
            data["results"] = []
            for name in args.models:
                print(f"{name}:", flush=True)
                load = os.getloadavg()[0]
                row = measure_model(name, args.rounds, Path(tmp), anchored=name in ANCHORED)
                row["load_before"], row["load_after"] = load, os.getloadavg()[0]
                data["results"].append(row)
                for label, rec in row["timings"].items():
                    print(f"  {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in rec.items()), flush=True)
        args.results.parent.mkdir(exist_ok=True)
        args.results.write_text(json.dumps(data, indent=1) + "\n")
    data = json.loads(args.results.read_text())
    if args.results == RESULTS:
        write_doc(render(data))
    else:
        print(render(data))


if __name__ == "__main__":
    main()
