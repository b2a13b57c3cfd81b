"""int8 post-training static quantization of an exported ONNX file, calibrated on real images.

onnxruntime's own tool does the work (``onnxruntime.quantization.quantize_static``): QDQ format
(QuantizeLinear/DequantizeLinear pairs around each quantised op, which onnxruntime fuses into int8
kernels and OpenVINO reads as its own FakeQuantize), int8 weights per output channel, activations
with ranges from the min/max seen on the calibration images, in the form the target engine's int8
kernels take as they are (:func:`activation_scheme`): both engines run either file, each at its
best on its own. The calibration images come
from the user's data (``DATA/train/<class>/*`` or ``DATA/<class>/*``) or the digits' training split,
preprocessed exactly as the model's :class:`~cspnet.metadata.ModelInfo` says. Images not used for
calibration (the held-out digits, ``DATA/val`` or the rest of the folder) check the result.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cspnet.metadata import ModelInfo, write_onnx_metadata

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
CALIBRATION_SEED = 0
FLOAT_OPS = frozenset({"BatchNormalization"})
INT8_ENGINES = ("onnxruntime", "openvino")


def activation_scheme(engine: str) -> dict[str, Any]:
    """``quantize_static`` options for the activations of an int8 file meant for ``engine``.

    * ``"onnxruntime"``: uint8 with a zero point (the calibrated range mapped onto 0..255). Its x86
      kernels multiply uint8 activations by int8 weights; int8 activations are shifted to uint8 by
      a graph rewrite that leaves fewer ops fused.
    * ``"openvino"``: int8 with no zero point (symmetric range). OpenVINO's CPU plugin folds such a
      quantisation into its int8 convolutions (AMX / VNNI); a zero point on the activations is not
      folded but runs before every convolution as a separate conversion and subtraction in fp32.

    >>> activation_scheme("openvino")["extra_options"]
    {'ActivationSymmetric': True}
    """
    from onnxruntime.quantization import QuantType

    if engine == "onnxruntime":
        return {"activation_type": QuantType.QUInt8, "extra_options": {}}
    if engine == "openvino":
        return {"activation_type": QuantType.QInt8, "extra_options": {"ActivationSymmetric": True}}
    raise ValueError(f"int8 engine {engine!r} is invalid: expected one of {', '.join(INT8_ENGINES)}")


def sample_images(
    data: str | os.PathLike[str], img_size: int, count: int, *, held_out: bool = False,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
) -> Tensor:  # fmt: skip
    """Up to ``count`` decoded ``uint8 (N, 3, img_size, img_size)`` images from ``data``.

    ``data`` is ``"digits"`` or a folder. Calibration (``held_out=False``) draws from the training
    part (the digits' training split, ``DATA/train`` when it exists); ``held_out=True`` from images
    calibration never sees (the digits' held-out split, ``DATA/val``, or, in a folder without
    ``val``, the images after the ``calibration_count`` that calibration took). The draw is seeded,
    so the same data always gives the same int8 file.
    """
    from cspnet.data import ImageFolder, load_digits_split

    if count < 1:
        raise ValueError(f"calibration image count {count} is invalid: expected a positive integer")
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    if str(data) == "digits":
        split = load_digits_split(img_size)[1 if held_out else 0]
        order = torch.randperm(len(split), generator=gen)[:count]
        return split.images[order]
    root = Path(data)
    part = root / ("val" if held_out else "train")
    folder = ImageFolder(part if part.is_dir() else root, img_size)
    order = torch.randperm(len(folder), generator=gen)
    if held_out and not part.is_dir():  # one folder for both: calibration took the first images of the draw
        order = order[calibration_count:]
    images = [folder[int(i)][0] for i in order[:count]]
    if not images:
        raise ValueError(f"{root} has no images left to {'check' if held_out else 'calibrate'} the int8 model on")
    return torch.stack(images)


def _calibration_reader(input_name: str, batches: list[np.ndarray]) -> object:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches to onnxruntime's calibrator, one dict per batch."""

        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    batches: Sequence[np.ndarray],
    *,
    engine: str = "onnxruntime",
    scopes: tuple[str, ...] | None = None,
    float_nodes: Collection[str] = (),
) -> Path:
    """The quantisation itself: ``fp32_path`` -> int8 QDQ (per-channel weights) at ``int8_path``.

    ``batches``: calibration inputs exactly as the graph takes them; ``engine``: the engine the file
    is for (:func:`activation_scheme`); ``scopes``: when given, only nodes whose names start with one
    of these prefixes are quantised (a detector's network, not the box decoding after it, whose
    pixel coordinates an 8-bit step would move); ``float_nodes``: nodes (by name) that stay float
    besides (a detector's prediction convs). The file's metadata is not touched.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scheme = activation_scheme(engine)  # an unknown engine: refused before any work
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended first step: shape inference and graph clean-up, so every conv gets
        # its own quantisation parameters.
        prepared = Path(tmp) / "prepared.onnx"
        source, here = Path(fp32_path).resolve(), os.getcwd()
        # When its symbolic shape inference is incomplete (a detector's box decoding), onnxruntime saves the
        # model and its weights into the current folder and raises a bare Exception: the folder is the
        # temporary one while it runs, and ONNX's own shape inference then covers the convolutions.
        os.chdir(tmp)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        finally:
            os.chdir(here)
        nodes = onnx.load(str(prepared)).graph.node
        # A batch norm left standing (DenseNet's pre-activation norms, which no conv absorbs) stays in
        # float: its per-channel affine has no int8 kernel and the quantiser cannot give it one.
        op_types = sorted({node.op_type for node in nodes} - FLOAT_OPS)
        excluded = [node.name for node in nodes if node.name in float_nodes
                    or (scopes is not None and not node.name.startswith(scopes))]  # fmt: skip
        quantize_static(
            str(prepared), str(int8_path), _calibration_reader(input_name, list(batches)),
            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types, nodes_to_exclude=excluded,
            **scheme,
        )  # fmt: skip
    return Path(int8_path)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    info: ModelInfo,
    calibration_data: str | os.PathLike[str],
    *,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    engine: str = "onnxruntime",
    images: Tensor | None = None,
    quantize_scopes: tuple[str, ...] | None = None,
    float_nodes: Collection[str] = (),
) -> Path:
    """Write the int8 (QDQ, per-channel) version of ``fp32_path`` to ``int8_path``; metadata kept.

    ``info`` says how to preprocess the calibration images (``count`` of ``calibration_data``, see
    :func:`sample_images`); the written file's metadata is ``info`` with ``precision="int8"``.
    ``engine``: the engine the file is for (:func:`activation_scheme`). ``images``: the decoded
    ``uint8 (N, C, S, S)`` calibration images, already sized as the model takes them (a detector's
    letterboxed ones), instead of ``count`` drawn from ``calibration_data`` (then only named in the
    log). ``quantize_scopes`` and ``float_nodes``: what stays float (:func:`quantize_onnx`'s ``scopes``
    and ``float_nodes``).
    """
    activation_scheme(engine)  # an unknown engine: refused before the images are read
    if images is None:
        images = sample_images(calibration_data, info.img_size, count)
    batches = [info.preprocess(chunk).numpy() for chunk in images.split(CALIBRATION_BATCH)]
    int8_path = quantize_onnx(fp32_path, int8_path, batches, engine=engine, scopes=quantize_scopes,
                              float_nodes=float_nodes)  # fmt: skip
    write_onnx_metadata(int8_path, info.with_(precision="int8").to_metadata())
    log.info("int8 for %s: calibrated on %d images of %s", engine, len(images), calibration_data)
    return int8_path
