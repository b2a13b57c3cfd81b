"""Detectors on every engine: ``model.detect(images)`` from what users have to boxes on their images.

:func:`~cspnet.inference.load_model` returns a :class:`DetectionModel` for a detector (a registered
name with weights, a ``cspnet detect train`` checkpoint or an exported detector file). Its
:meth:`~DetectionModel.detect` takes paths, PIL images, ``uint8`` HWC arrays or a list of them and,
per image, in named steps that :mod:`cspnet.inference.benchmark` times one by one:

1. **decode** (:func:`as_image`): a path through the one image reader (EXIF orientation, 16-bit
   images scaled), an array or a PIL image as it is;
2. **letterbox** (:meth:`DetectionModel.letterbox`): fitted into the input side with the file's pad
   grey (:func:`cspnet.detection.data.letterbox_image`, as in training), then normalised as its
   metadata says;
3. **model**: the engine runs the network and the box decoding (and NMS, for a file exported with it);
4. **post-processing** (:meth:`DetectionModel.detect_letterboxed`): the one rule
   (:func:`cspnet.ops.postprocess.postprocess_numpy`: score threshold, clip, class-aware NMS, the best
   ``max_detections``), then the letterbox undone: boxes in the original image's pixels.

Thresholds default to those the file records (``PREDICT`` for the project's own files).

>>> import numpy as np
>>> from cspnet.inference import load_model
>>> model = load_model("cspdensenet_bc40_efm", class_names=["a", "b"], img_size=64)
>>> found = model.detect(np.zeros((48, 80, 3), dtype=np.uint8), conf_threshold=0.0, max_detections=5)
>>> len(found), found[0].boxes.shape, found[0].image_size, set(found[0].class_names) <= {"a", "b"}
(1, (5, 4), (80, 48), True)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cspnet.inference.base import InferenceModel
from cspnet.inference.engines import TorchEngine
from cspnet.metadata import ModelInfo
from cspnet.ops.postprocess import postprocess_numpy
from cspnet.ops.thresholds import PREDICT, Thresholds

ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray (uint8, HW or HWC)


@dataclass
class Detections:
    """One image's detections: ``boxes`` ``(M, 4)`` x1, y1, x2, y2 in the image's pixels, ``scores``
    ``(M,)``, ``class_ids`` ``(M,)`` and their ``class_names``, best first; ``image_size`` is
    ``(width, height)``; ``source``: the path it was read from, if any."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    source: str | None = None
    category_ids: list[int] | None = field(default=None, repr=False)  # COCO ids of class_ids, when known

    def __len__(self) -> int:
        return len(self.scores)

    def xywh(self) -> np.ndarray:
        """The boxes as COCO writes them: ``x, y, width, height``."""
        out = self.boxes.copy()
        out[:, 2:] -= out[:, :2]
        return out


def as_image(image: ImageLike) -> Any:
    """A path, PIL image or ``uint8`` array (``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``) as a PIL image;
    ``ValueError`` in one line for anything else (a path that does not decode names the file)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str | os.PathLike):
        from cspnet.data.folder import decode_image

        return decode_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must hold uint8 pixels, not {image.dtype}")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            if min(image.shape[:2]) < 1:
                raise ValueError(f"an image array of shape {image.shape} has no pixels")
            return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8 pixels, not {image.shape}")
    raise ValueError(f"cannot detect in a {type(image).__name__}: give a path, a PIL image or a uint8 array (H, W, 3)")


def image_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """``images`` as a list: one image, a list/tuple of them, or a ``uint8 (N, H, W, C)`` array."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, list | tuple):
        return list(images)
    return [images]


class DetectorOutputs(nn.Module):
    """A detector's network (folded, in its compute dtype) and its box decoding in float32: what the
    torch engine runs, with the outputs of an exported file without NMS (``boxes``, ``scores``)."""

    def __init__(self, network: nn.Module, anchors: Tensor, strides: list[int], num_classes: int) -> None:
        super().__init__()
        self.network, self.strides, self.num_classes = network, list(strides), num_classes
        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        from cspnet.models.detectors.head import decode

        maps = [m.float() for m in self.network(x)]  # bf16 maps: decoded in float32 (pixel coordinates)
        return decode(maps, self.get_buffer("anchors"), self.strides, self.num_classes)


def torch_detector_engine(detector: Any, dtype: torch.dtype = torch.float32, threads: int | None = None) -> TorchEngine:
    """The torch engine of a :class:`~cspnet.models.detectors.Detector`: folded, channels-last, ``dtype``."""
    from cspnet.export import optimize_for_inference

    anchors = detector.get_buffer("anchors")
    network = optimize_for_inference(detector, dtype=dtype)
    return TorchEngine(DetectorOutputs(network, anchors, detector.strides, detector.num_classes), dtype, threads=threads)


class DetectionModel(InferenceModel):
    """A detector ready for inference on one engine (see the module docstring); ``info.task == "detection"``."""

    batch_size: int = 1  # images per engine run in detect(): load_model's batch_size

    @classmethod
    def from_detector(cls, detector: Any, info: ModelInfo | None = None, threads: int | None = None,
                      img_size: int | None = None) -> DetectionModel:  # fmt: skip
        """A PyTorch detector on the torch engine; without ``info``, one of pixels in [0, 1] at ``img_size``
        (default: its registered input side) with class indices as names."""
        if info is None:
            from cspnet.detection.export import detector_info

            info = detector_info(detector, img_size or _input_side(detector))
        return cls(torch_detector_engine(detector, threads=threads), info)

    # -- thresholds ------------------------------------------------------------------------------
    def thresholds(self, conf_threshold: float | None = None, iou_threshold: float | None = None,
                   max_detections: int | None = None) -> Thresholds:  # fmt: skip
        """The thresholds of a call: those given, the file's recorded ones for the rest.

        A file with NMS in its graph has already applied its own: a lower score threshold, another
        IoU threshold or more detections than it keeps cannot be honoured (``ValueError``).
        """
        base = self.info.thresholds or PREDICT
        changes = {k: v for k, v in (("conf_threshold", conf_threshold), ("iou_threshold", iou_threshold),
                                     ("max_detections", max_detections)) if v is not None}  # fmt: skip
        limits = base.replace(**changes)
        if self.info.output == "detections":
            if limits.conf_threshold < base.conf_threshold or limits.iou_threshold != base.iou_threshold or (
                    limits.max_detections > base.max_detections):  # fmt: skip
                raise ValueError(
                    f"{self.info.model_name}: its graph post-processes with conf {base.conf_threshold}, iou "
                    f"{base.iou_threshold}, at most {base.max_detections} detections; asked for conf "
                    f"{limits.conf_threshold}, iou {limits.iou_threshold}, {limits.max_detections}: export it without "
                    "NMS (`cspnet detect export` without --nms) to choose thresholds at run time"
                )
        return limits

    def _class_filter(self, classes: Sequence[int] | None) -> Tensor | None:
        if classes is None:
            return None
        count = len(self.info.class_names)
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 0 <= c < count]
        if bad:
            raise ValueError(f"classes {bad[:5]} are invalid: expected class ids 0..{count - 1}")
        keep = torch.zeros(count, dtype=torch.bool)
        keep[list(classes)] = True
        return keep

    # -- the steps ---------------------------------------------------------------------------------
    def letterbox(self, images: Sequence[Any]) -> tuple[Tensor, list[Any]]:
        """PIL images -> ``uint8 (N, 3, S, S)`` letterboxed as the metadata says, and each one's
        :class:`~cspnet.detection.data.Letterbox` (to map boxes back)."""
        from cspnet.detection.data.boxes import letterbox_image

        pad = self.info.pad_value if self.info.pad_value is not None else 114
        boxed = [letterbox_image(image, self.info.img_size, pad) for image in images]
        return torch.stack([b[0] for b in boxed]), [b[1] for b in boxed]

    def detect_letterboxed(self, images_uint8: Tensor, limits: Thresholds | None = None,
                           classes: Sequence[int] | None = None, augment: bool = False) -> list[dict[str, Tensor]]:  # fmt: skip
        """Letterboxed ``uint8 (N, 3, S, S)`` images -> per image ``boxes`` (input pixels), ``scores``,
        ``labels`` after the post-processing rule with ``limits`` (default: :meth:`thresholds`).

        ``augment``: test-time augmentation (:mod:`cspnet.detection.tta`): the decoded boxes of every
        view meet in the one post-processing. A file with NMS inside cannot be augmented (``ValueError``).
        """
        if not augment:
            outputs = self.outputs(self.preprocess(images_uint8))
            return self.postprocess(outputs, tuple(images_uint8.shape), limits or self.thresholds(), classes)
        if self.info.output == "detections":
            raise ValueError(f"{self.info.model_name}: test-time augmentation needs the decoded boxes of every view, "
                             "and this file's graph applies NMS itself: export it without --nms to use --augment")
        from cspnet.detection.tta import augmented_predictions

        def decoded(x: Tensor) -> tuple[Tensor, Tensor]:
            boxes, scores = self.outputs(self.preprocess(x))
            return boxes, scores

        merged = augmented_predictions(decoded, images_uint8)
        return self.postprocess(list(merged), tuple(images_uint8.shape), limits or self.thresholds(), classes)

    def postprocess(self, outputs: list[Tensor], shape: Sequence[int], limits: Thresholds,
                    classes: Sequence[int] | None = None) -> list[dict[str, Tensor]]:  # fmt: skip
        """The engine's outputs for an input batch of ``shape`` ``(N, C, H, W)`` -> per image ``boxes``
        (input pixels), ``scores``, ``labels``: the one post-processing rule (or the graph's NMS rows)."""
        keep = self._class_filter(classes)
        if self.info.output == "detections":
            return self._split_rows(outputs[0], int(shape[0]), limits, keep)
        boxes, scores = outputs
        if keep is not None:  # another class's score is no candidate (scores > conf >= 0 are)
            scores = scores * keep.to(scores.dtype)
        return postprocess_numpy(boxes, scores, (int(shape[-2]), int(shape[-1])), **limits.kwargs())

    @staticmethod
    def _split_rows(rows: Tensor, count: int, limits: Thresholds, keep: Tensor | None) -> list[dict[str, Tensor]]:
        """An NMS graph's ``(M, 7)`` rows -> per image dicts (rows are ordered by image, then score)."""
        found = []
        for i in range(count):
            mine = rows[rows[:, 0] == i]
            mine = mine[mine[:, 5] > limits.conf_threshold]
            if keep is not None:
                mine = mine[keep[mine[:, 6].long()]]
            mine = mine[: limits.max_detections]
            found.append({"boxes": mine[:, 1:5], "scores": mine[:, 5], "labels": mine[:, 6].long()})
        return found

    def detect(self, images: ImageLike | Iterable[ImageLike], conf_threshold: float | None = None,
               iou_threshold: float | None = None, max_detections: int | None = None,
               classes: Sequence[int] | None = None, augment: bool = False) -> list[Detections]:  # fmt: skip
        """Detections in each of ``images`` (see the module docstring), one :class:`Detections` per image.

        ``classes``: keep these class ids only. Thresholds default to the file's (:meth:`thresholds`).
        ``augment``: test-time augmentation (:meth:`detect_letterboxed`).
        """
        limits = self.thresholds(conf_threshold, iou_threshold, max_detections)
        items = image_list(images)
        results: list[Detections] = []
        step = max(1, self.batch_size)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            decoded = [as_image(item) for item in chunk]
            batch, boxes = self.letterbox(decoded)
            for item, lb, found in zip(chunk, boxes, self.detect_letterboxed(batch, limits, classes, augment)):
                results.append(self.on_image(found, lb, str(item) if isinstance(item, str | os.PathLike) else None))
        return results

    def on_image(self, found: dict[str, Tensor], letterbox: Any, source: str | None = None) -> Detections:
        """One image's post-processed detections (input pixels) -> :class:`Detections` on the image."""
        names = self.info.class_names
        labels = found["labels"].long().numpy()
        ids = self.info.category_ids
        return Detections(
            boxes=letterbox.to_image(found["boxes"]).numpy().astype(np.float32),
            scores=found["scores"].float().numpy(), class_ids=labels.astype(np.int64),
            class_names=[names[int(k)] for k in labels], image_size=(letterbox.width, letterbox.height),
            source=source, category_ids=None if ids is None else [ids[int(k)] for k in labels],
        )  # fmt: skip


def _input_side(detector: Any) -> int:
    from cspnet.models import get_model_entry

    name = getattr(detector, "name", "")
    try:
        return int(get_model_entry(name).input_size[-1])
    except ValueError:
        return 64 * int(detector.max_stride)
