"""A detector as ONNX: dynamic batch, box decoding inside, NMS optional (ONNX ``NonMaxSuppression``).

Inputs ``images``: float ``(N, 3, S, S)`` in [0, 1], letterboxed as in training. Outputs:

* without NMS: ``boxes`` ``(N, K, 4)`` xyxy input pixels and ``scores`` ``(N, K, C)``
  (objectness x class probability), as :meth:`Detector.decode` gives them;
* with NMS: ``detections`` ``(M, 7)`` rows ``image index, x1, y1, x2, y2, score, class``, from ONNX's
  ``NonMaxSuppression`` per image and class (class-aware, as the PyTorch detector's NMS), ordered by
  image, class, then score.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cspnet.models.detectors.model import Detector
from cspnet.ops.nms import batched_nms


class _OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` when exported; the same selection in PyTorch when run."""

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou: Tensor, conf: Tensor) -> Tensor:
        # boxes (N, K, 4), scores (N, C, K) -> selected (M, 3): image, class, box index.
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


class ExportableDetector(nn.Module):
    """``detector`` with decoding (and optionally NMS) in its forward, for ONNX."""

    def __init__(self, detector: Detector, nms: bool = False, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
                 max_per_class: int = 100) -> None:  # fmt: skip
        super().__init__()
        self.detector, self.nms = detector.eval(), nms
        self.conf, self.iou, self.max_per_class = conf_threshold, iou_threshold, max_per_class

    def forward(self, images: Tensor) -> Any:
        boxes, scores = self.detector.decode(self.detector(images))
        if not self.nms:
            return boxes, scores
        selected = _OnnxNms.apply(boxes, scores.transpose(1, 2).contiguous(), torch.tensor([self.max_per_class]),
                                  torch.tensor([self.iou]), torch.tensor([self.conf]))  # fmt: skip
        image, label, index = selected[:, 0], selected[:, 1], selected[:, 2]
        return torch.cat([image[:, None].float(), boxes[image, index], scores[image, index, label][:, None],
                          label[:, None].float()], 1)  # fmt: skip


@dataclass
class DetectorExport:
    path: Path
    check_batch: int
    max_rel_diff: float
    outputs: tuple[str, ...]

    def summary(self) -> str:
        return (f"wrote {self.path} (ONNX, outputs {', '.join(self.outputs)}, dynamic batch); checked in onnxruntime at "
                f"batch {self.check_batch}: relative difference {self.max_rel_diff:.3g}")  # fmt: skip


def export_detector_onnx(detector: Detector, path: str | os.PathLike[str], img_size: int, nms: bool = False,
                         conf_threshold: float = 0.25, iou_threshold: float = 0.45, max_per_class: int = 100,
                         opset: int = 18, tolerance: float | None = None) -> DetectorExport:  # fmt: skip
    """Write the ONNX file, then run it in onnxruntime on a batch of another size and compare with PyTorch.

    Written through :func:`cspnet.io.write_checked`: a temporary file beside ``path``, moved into
    place once checked, so a full disk or a failed check (``tolerance``: the largest relative
    difference accepted) leaves ``path`` as it was.
    """
    from cspnet.export.formats import relative_difference
    from cspnet.io import write_checked
    from cspnet.metadata import check_img_size

    check_img_size(img_size, detector, what="img_size")  # before an image of that size is allocated
    path = Path(path)
    module = ExportableDetector(detector, nms, conf_threshold, iou_threshold, max_per_class).eval()
    names = ("detections",) if nms else ("boxes", "scores")

    def write(tmp: Path) -> None:
        example = torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
        dynamic = {"images": {0: "batch"}, **({"detections": {0: "detections"}} if nms else {n: {0: "batch"} for n in names})}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notices about the fixed input size
            torch.onnx.export(module, (example,), str(tmp), input_names=["images"], output_names=list(names),
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)  # fmt: skip

    def check(tmp: Path) -> DetectorExport:
        import onnxruntime as ort

        batch = torch.rand(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = [torch.from_numpy(v) for v in session.run(list(names), {"images": batch.numpy()})]
        with torch.no_grad():
            expected = module(batch)
        expected = [expected] if nms else list(expected)
        diff = max(relative_difference(e.float(), g.float()) if e.numel() else float(g.numel() != 0)
                   for e, g in zip(expected, got))  # fmt: skip
        if tolerance is not None and not diff <= tolerance:  # also NaN
            raise ValueError(f"the exported file does not reproduce PyTorch: relative difference {diff:.3g} exceeds "
                             f"{tolerance:g}; nothing was written to {path}")  # fmt: skip
        return DetectorExport(path, 2, diff, names)

    result = write_checked(path, write, check)
    assert result is not None
    return result
