"""A detector as ONNX: dynamic batch, box decoding inside, post-processing optional, metadata, int8.

Inputs ``images``: float ``(N, 3, S, S)``, letterboxed and normalised as in training (pixels in
[0, 1] for the project's runs). The file carries its :class:`~cspnet.metadata.ModelInfo`
(:func:`detector_info`: classes, input side, letterbox rule, normalisation, strides, anchors,
whether NMS is inside, default thresholds, COCO category ids), so ``cspnet.inference.load_model``
runs it with nothing else. Outputs:

* without NMS: ``boxes`` ``(N, K, 4)`` xyxy input pixels and ``scores`` ``(N, K, C)``
  (objectness x class probability), as :meth:`Detector.decode` gives them;
* with NMS: ``detections`` ``(M, 7)`` rows ``image index, x1, y1, x2, y2, score, class``: what
  :meth:`Detector.detect` returns for the same thresholds, ordered by image, then score (highest
  first; equal scores in (box, class) order, as :func:`cspnet.ops.postprocess.postprocess` orders them).

The graph builds :mod:`cspnet.ops.postprocess`'s rule from ONNX operators, step by step:

=====================================  ======================================================================
rule                                   graph
=====================================  ======================================================================
1. candidates: score > conf, the best  ``TopK`` over each image's ``K x C`` scores (``max_candidates``; among
   ``max_candidates``                  equal values ONNX ``TopK`` takes the lower index, i.e. (box, class)
                                       order, the stable sort of the rule); the other scores become 0
2. boxes clipped to the image          :func:`~cspnet.ops.boxes.clip_boxes` (``Max``/``Min``), before NMS
3. class-aware NMS                     ``NonMaxSuppression`` per image and class (below)
4. the best ``max_detections``         three stable sorts (``TopK``: (box, class), score, image) and a rank
   per image                           within the image (``CumSum``), rows ranked ``max_detections`` and
                                       more dropped
=====================================  ======================================================================

ONNX ``NonMaxSuppression`` (as onnxruntime runs it) keeps a box of a class when its score is
strictly greater than ``score_threshold`` and suppresses one whose IoU with a kept box of the
class is strictly greater than ``iou_threshold``, taking equal scores in box order: the rule's
step 3 for one class. Its ``max_output_boxes_per_class`` is set to ``max_detections``: no class can
hold more than ``max_detections`` of an image's best ``max_detections``, so cutting each class
there first changes nothing. The result equals ``detect()`` up to float rounding of the decoded
boxes in onnxruntime (a box whose IoU or score lies within rounding of a threshold can go either way).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cspnet.detection.data.boxes import LETTERBOX_FILL
from cspnet.metadata import ModelInfo
from cspnet.models.detectors.model import Detector
from cspnet.ops.boxes import clip_boxes
from cspnet.ops.nms import batched_nms
from cspnet.ops.thresholds import PREDICT, Thresholds

NETWORK_SCOPE = "/detector/"
"""Node names of the network (backbone, neck, head) in an exported graph start with this."""


class _OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` when exported; the same selection in PyTorch when run."""

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou: Tensor, conf: Tensor) -> Tensor:
        # boxes (N, K, 4), scores (N, C, K) -> selected (M, 3): image, class, box index.
        if torch.jit.is_tracing():  # exported as the symbolic below: a selection here would be traced, then dropped
            return torch.zeros(1, 3, dtype=torch.long)
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.nonzero(scores[b, c] > conf).flatten()
                keep = batched_nms(boxes[b, candidates], scores[b, c, candidates],
                                   torch.zeros_like(candidates), float(iou))[: int(max_per_class)]  # fmt: skip
                chosen = candidates[keep]
                rows.append(torch.stack([torch.full_like(chosen, b), torch.full_like(chosen, c), chosen], 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: Any, iou: Any, conf: Any) -> Any:
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou, conf, center_point_box_i=0)


class _StableTopK(torch.autograd.Function):
    """The first ``k`` (``0``: all) of a stable sort along the last axis: ONNX ``TopK`` when exported,
    which takes the lower index first among equal values, as ``torch.sort(stable=True)`` does."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, k: int, largest: bool) -> Tensor:
        index = torch.sort(x, dim=-1, descending=largest, stable=True)[1]
        return index[..., :k] if k else index

    @staticmethod
    def symbolic(g: Any, x: Any, k: int, largest: bool) -> Any:
        if k:
            count = g.op("Constant", value_t=torch.tensor([k], dtype=torch.long))
        else:
            count = g.op("Shape", x, start_i=-1)
        _, index = g.op("TopK", x, count, axis_i=-1, largest_i=int(largest), sorted_i=1, outputs=2)
        return index


def _stable_order(x: Tensor, k: int = 0, largest: bool = False) -> Tensor:
    order = _StableTopK.apply(x, k, largest)
    assert isinstance(order, Tensor)
    return order


def nms_detections(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], limits: Thresholds) -> Tensor:
    """:func:`cspnet.ops.postprocess.postprocess` as one traceable graph (see the module docstring):
    decoded ``boxes`` ``(N, K, 4)`` and ``scores`` ``(N, K, C)`` -> ``(M, 7)`` detection rows."""
    n, k, c = scores.shape
    # 1. candidates: the best max_candidates scores of each image keep their value, the others become 0
    #    (never above the threshold: conf_threshold >= 0 and the comparison is strict).
    flat = scores.reshape(n, k * c)
    best = _stable_order(flat, min(limits.max_candidates, k * c), largest=True)
    chosen = torch.zeros_like(flat).scatter(1, best, 1.0) > 0
    candidates = torch.where(chosen, flat, torch.zeros_like(flat)).reshape(n, k, c)
    # 2. clip, 3. NMS per image and class.
    clipped = clip_boxes(boxes, float(image_size[0]), float(image_size[1]))
    selected = _OnnxNms.apply(clipped, candidates.transpose(1, 2).contiguous(),
                              torch.tensor([limits.max_detections]), torch.tensor([limits.iou_threshold]),
                              torch.tensor([limits.conf_threshold]))  # fmt: skip
    assert isinstance(selected, Tensor)
    image, label, index = selected[:, 0], selected[:, 1], selected[:, 2]
    # 4. order by image, score (highest first), (box, class): stable sorts, the least significant key first.
    order = _stable_order(index * c + label)
    image, label, index = image[order], label[order], index[order]
    order = _stable_order(candidates[image, index, label], largest=True)
    image, label, index = image[order], label[order], index[order]
    order = _stable_order(image)
    image, label, index = image[order], label[order], index[order]
    score = candidates[image, index, label]
    # Rank within the image: rows are grouped by image, so a running count per image.
    same_image = (image[:, None] == torch.arange(boxes.shape[0], device=image.device)[None, :]).long()
    rank = (same_image.cumsum(0) * same_image).sum(1) - 1
    rows = torch.cat([image[:, None].float(), clipped[image, index], score[:, None], label[:, None].float()], 1)
    return rows[rank < limits.max_detections]


class ExportableDetector(nn.Module):
    """``detector`` with decoding (and optionally post-processing, :func:`nms_detections`) in its forward, for ONNX."""

    def __init__(self, detector: Detector, nms: bool = False, conf_threshold: float = PREDICT.conf_threshold,
                 iou_threshold: float = PREDICT.iou_threshold, max_detections: int = PREDICT.max_detections,
                 max_candidates: int = PREDICT.max_candidates) -> None:  # fmt: skip
        super().__init__()
        self.detector, self.nms = detector.eval(), nms
        self.limits = Thresholds(conf_threshold, iou_threshold, max_detections, max_candidates)

    def forward(self, images: Tensor) -> Any:
        return self.finish(self.detector(images), (int(images.shape[-2]), int(images.shape[-1])))

    def finish(self, maps: list[Tensor], image_size: tuple[int, int]) -> Any:
        """The raw prediction maps -> the file's outputs: decoded ``(boxes, scores)``, or detection rows."""
        boxes, scores = self.detector.decode(maps)
        if not self.nms:
            return boxes, scores
        return nms_detections(boxes, scores, image_size, self.limits)


def detector_info(
    detector: Detector, img_size: int, class_names: Sequence[str] | None = None, *, name: str | None = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0), nms: bool = False,
    thresholds: Thresholds = PREDICT, category_ids: Sequence[int] | None = None,
) -> ModelInfo:  # fmt: skip
    """The :class:`~cspnet.metadata.ModelInfo` of ``detector`` at ``img_size``: what its exported file records.

    ``class_names`` default to the class indices; ``mean``/``std`` to pixels in [0, 1] (what ``cspnet
    detect train`` records); ``nms``: the graph post-processes with ``thresholds`` (else they are the
    defaults a caller applies); ``category_ids``: the COCO category id of each class.

    >>> from cspnet.models import create_model
    >>> info = detector_info(create_model("cspdensenet_bc40_efm", num_classes=2), 64, ["cat", "dog"])
    >>> info.task, info.strides, info.pad_value, info.output, info.boxes_per_image
    ('detection', (4, 8, 16), 114, 'boxes_scores', 1008)
    """
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(detector.num_classes))
    if len(names) != detector.num_classes:
        raise ValueError(f"{len(names)} class names for a detector of {detector.num_classes} classes")
    anchors = detector.get_buffer("anchors").reshape(-1, 2).tolist()
    return ModelInfo(
        name or detector.name or type(detector).__name__, names, img_size, tuple(float(v) for v in mean),
        tuple(float(v) for v in std), task="detection", resize="letterbox",
        output="detections" if nms else "boxes_scores", strides=tuple(int(s) for s in detector.strides),
        anchors=tuple((float(w), float(h)) for w, h in anchors), pad_value=LETTERBOX_FILL, thresholds=thresholds,
        category_ids=None if category_ids is None else tuple(int(i) for i in category_ids),
    )  # fmt: skip


@dataclass
class DetectorExport:
    path: Path
    check_batch: int
    max_rel_diff: float
    outputs: tuple[str, ...]
    info: ModelInfo | None = None
    calibration: str = ""  # int8: what it was calibrated on
    verified: str = ""  # what the caller's check of the written file said (e.g. the mAP int8 costs)

    def summary(self) -> str:
        precision = f", int8 calibrated on {self.calibration}" if self.calibration else ""
        diff = "raw maps" if self.calibration else "relative difference"
        text = (f"wrote {self.path} (ONNX, outputs {', '.join(self.outputs)}, dynamic batch{precision}); checked in "
                f"onnxruntime at batch {self.check_batch}: {diff} {self.max_rel_diff:.3g}")  # fmt: skip
        return text + (f"; {self.verified}" if self.verified else "")


def export_detector_onnx(detector: Detector, path: str | os.PathLike[str], img_size: int, nms: bool = False,
                         conf_threshold: float = PREDICT.conf_threshold, iou_threshold: float = PREDICT.iou_threshold,
                         max_detections: int = PREDICT.max_detections, max_candidates: int = PREDICT.max_candidates,
                         opset: int = 18, tolerance: float | None = None, *, info: ModelInfo | None = None,
                         int8_images: Tensor | None = None, calibration: str = "", int8_engine: str = "onnxruntime",
                         verify: Callable[[Path, ModelInfo], str] | None = None) -> DetectorExport:  # fmt: skip
    """Write the ONNX file, then run it in onnxruntime on a batch of another size and compare with PyTorch.

    Written through :func:`cspnet.io.write_checked`: a temporary file beside ``path``, moved into
    place once checked, so a full disk or a failed check (``tolerance``: the largest relative
    difference accepted) leaves ``path`` as it was.

    ``info`` (default :func:`detector_info` with class indices) is the file's metadata, with this
    export's input side, outputs and thresholds (its precision ``"bf16"`` is kept: a file OpenVINO runs in
    bfloat16 by default); it is read back and checked against the graph.
    ``int8_images``: decoded, letterboxed ``uint8 (N, 3, S, S)`` images to calibrate a static int8
    quantisation of the network on (per-channel weights, QDQ; decoding and NMS stay float;
    ``calibration`` names them; ``int8_engine``: the engine the file is for); its raw maps are then compared with PyTorch's for the record, not
    against ``tolerance``. ``verify(tmp, info)``: a further check of the written file by the caller
    (say, the mAP it reaches), whose line joins the summary; it raises to refuse the file.

    The check measures the export, not the conditioning of the network, in two parts (see
    :func:`check_detector_file`): the file's raw prediction maps against PyTorch's, and the file's
    outputs against PyTorch's decoding (and post-processing) of those very maps. An untrained
    detector's maps reach thousands, and ``exp`` of a size logit turns float32 rounding there into
    per-mille differences in box sizes: comparing decoded boxes alone would blame the export for that.
    With ``nms``, a different number of detections (or any other shape) is an infinite difference.
    """
    from cspnet.io import write_checked
    from cspnet.metadata import check_img_size

    check_img_size(img_size, detector, what="img_size")  # before an image of that size is allocated
    path = Path(path)
    module = ExportableDetector(detector, nms, conf_threshold, iou_threshold, max_detections, max_candidates).eval()
    names = ("detections",) if nms else ("boxes", "scores")
    file_info = (info or detector_info(detector, img_size)).with_(
        img_size=img_size, output="detections" if nms else "boxes_scores", thresholds=module.limits)
    # fp32 weights; "bf16" (a file OpenVINO runs in bfloat16 by default) is kept; int8 when quantised.
    precision = "int8" if int8_images is not None else file_info.precision if file_info.precision == "bf16" else "fp32"
    file_info = file_info.with_(precision=precision)

    def write(tmp: Path) -> None:
        example = torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
        dynamic = {"images": {0: "batch"}, **({"detections": {0: "detections"}} if nms else {n: {0: "batch"} for n in names})}
        with tempfile.TemporaryDirectory(prefix="cspnet-export-") as scratch:
            fp32 = tmp if int8_images is None else Path(scratch) / "fp32.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer notices about the fixed input size
                torch.onnx.export(module, (example,), str(fp32), input_names=["images"], output_names=list(names),
                                  dynamic_axes=dynamic, opset_version=opset, dynamo=False)  # fmt: skip
            _write_metadata(fp32, file_info if int8_images is None else file_info.with_(precision="fp32"))
            if int8_images is not None:
                quantize_detector(fp32, tmp, file_info.with_(precision="fp32"), int8_images, calibration or "images",
                                  engine=int8_engine)  # fmt: skip

    def check(tmp: Path) -> DetectorExport:
        from cspnet.metadata import read_onnx_info

        read_onnx_info(tmp)  # the metadata as written, read back and checked against the graph
        diff = check_detector_file(tmp, module, img_size, names)
        if int8_images is None and tolerance is not None and not diff <= tolerance:  # also NaN
            raise ValueError(f"the exported file does not reproduce PyTorch: relative difference {diff:.3g} exceeds "
                             f"{tolerance:g}; nothing was written to {path}")  # fmt: skip
        verified = verify(tmp, file_info) if verify is not None else ""
        return DetectorExport(path, 2, diff, names, file_info, calibration if int8_images is not None else "", verified)

    result = write_checked(path, write, check)
    assert result is not None
    return result


def quantize_detector(fp32_path: Path, int8_path: Path, info: ModelInfo, images: Tensor, description: str,
                      engine: str = "onnxruntime") -> Path:  # fmt: skip
    """The int8 version of an exported detector file (:func:`cspnet.export.quantize.quantize_int8`, static,
    per-channel, calibrated on ``images``: letterboxed ``uint8 (N, 3, S, S)``).

    Only the network is quantised, and not its last layers: box decoding and NMS stay float32 (an
    8-bit step of a pixel coordinate would move the boxes), and so do the prediction convs, whose
    outputs are the box and class logits (quantised, they cost 0.014 mAP@.5 of the default digits
    detector, float they cost nothing: ``docs/detection.md``). ``engine``: the engine the file is for
    (:func:`cspnet.export.quantize.activation_scheme`).
    """
    import onnx

    from cspnet.export.quantize import quantize_int8

    proto = onnx.load(str(fp32_path), load_external_data=False)
    return quantize_int8(fp32_path, int8_path, info, description, engine=engine, images=images,
                         quantize_scopes=(NETWORK_SCOPE,),
                         float_nodes=[node.name for node in _prediction_convs(proto)])  # fmt: skip


def _write_metadata(path: Path, info: ModelInfo) -> None:
    from cspnet.metadata import write_onnx_metadata

    write_onnx_metadata(path, info.to_metadata())


def _prediction_convs(proto: Any, levels: int | None = None) -> list[Any]:
    """The head's prediction convs in an exported graph, finest level first (the exporter names nodes by
    module path: the last convolution under each ``/detector/head/levels.<k>/``): ``levels`` of them,
    or (``None``) every level found."""
    found = []
    for level in range(levels if levels is not None else 64):
        scope = f"{NETWORK_SCOPE}head/levels.{level}/"
        convs = [node for node in proto.graph.node if node.op_type == "Conv" and node.name.startswith(scope)]
        if not convs:
            break
        found.append(convs[-1])
    return found


def _prediction_map_names(proto: Any, levels: int) -> list[str] | None:
    """The tensors holding the head's raw prediction maps in an exported graph, or ``None`` if not found."""
    convs = _prediction_convs(proto, levels)
    return [conv.output[0] for conv in convs] if len(convs) == levels else None


def _difference(expected: Tensor, got: Tensor) -> float:
    from cspnet.export.formats import relative_difference

    if expected.shape != got.shape:
        return float("inf")
    return relative_difference(expected.float(), got.float()) if expected.numel() else 0.0


def _rows_difference(expected: Tensor, got: Tensor) -> float:
    """:func:`_difference` of two NMS outputs, ``(M, 7)`` rows ``(image, x1, y1, x2, y2, score, label)``,
    compared as sets: each side's rows sorted by image, score and box. Rows whose score ties with
    another row of the same image are compared by image and score only: engines order equal scores
    their own way, so which of them NMS keeps (and which the ``max_detections`` cut drops) is theirs
    to choose (a model whose scores saturate at 1.0 gives hundreds of ties)."""
    if expected.shape != got.shape or not expected.numel():
        return _difference(expected, got)

    def canonical(rows: Tensor) -> Tensor:
        r = rows.numpy()  # by image, then score (highest first), then x1, y1, x2, y2: lexsort's last key first
        return rows[torch.from_numpy(np.lexsort((r[:, 4], r[:, 3], r[:, 2], r[:, 1], -r[:, 5], r[:, 0])))]

    e, g = canonical(expected.float()), canonical(got.float())
    same_image = e[1:, 0] == e[:-1, 0]
    close = (e[1:, 5] - e[:-1, 5]).abs() <= 1e-6 * e[1:, 5].abs().clamp(min=1.0)
    tied = torch.zeros(len(e), dtype=torch.bool)
    tied[1:] |= same_image & close
    tied[:-1] |= same_image & close
    single = ~tied
    return max(_difference(e[:, [0, 5]], g[:, [0, 5]]), _difference(e[single], g[single]))


def check_detector_file(path: Path, module: ExportableDetector, img_size: int, names: tuple[str, ...]) -> float:
    """The largest relative difference between the ONNX file at ``path`` and ``module`` in PyTorch, on a
    batch of 2 (the file was traced at 1): its raw prediction maps against PyTorch's, and its outputs
    against PyTorch's decoding and post-processing of the file's own maps. Where the maps cannot be
    found in the graph, the outputs are compared with PyTorch's end to end."""
    import onnx
    import onnxruntime as ort

    batch = torch.rand(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    proto = onnx.load(str(path))
    maps = _prediction_map_names(proto, len(module.detector.strides))
    if maps is not None:
        for name in maps:  # the same graph, with the maps as extra outputs: the very computation shipped
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [torch.from_numpy(v) for v in session.run([*names, *(maps or [])], {"images": batch.numpy()})]
    with torch.no_grad():
        if maps is None:
            expected = module(batch)
            return max(_difference(e, g) for e, g in zip([expected] if module.nms else list(expected), got))
        outputs, file_maps = got[: len(names)], got[len(names) :]
        network = max(_difference(e, g) for e, g in zip(module.detector(batch), file_maps))
        finished = module.finish(file_maps, (img_size, img_size))
        if module.nms:
            post = _rows_difference(finished, outputs[0])
        else:
            post = max(_difference(e, g) for e, g in zip(finished, outputs))
    return max(network, post)
