"""What every loaded model is: an engine that runs batches and the :class:`~cspnet.metadata.ModelInfo` that
says how to feed it (:class:`InferenceModel`); a detector's is :class:`cspnet.inference.detection.DetectionModel`."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from cspnet.metadata import ModelInfo


class Engine(Protocol):
    backend: str

    def run(self, batch: Tensor) -> list[Tensor]: ...


class InferenceModel:
    """A model ready for inference: its :class:`ModelInfo` and an engine that runs batches.

    ``model(batch)`` returns the first output (a classifier's logits, or probabilities when the
    file was exported with the preprocessing in the graph) as a float32 tensor; :meth:`outputs`
    returns every output, which is what a detector's decoding will read. :meth:`preprocess` turns
    decoded ``uint8 (N, C, H, W)`` images into the batch this model takes, so
    ``model.probabilities(model.preprocess(images))`` is right for every kind of file.
    """

    def __init__(self, engine: Engine, info: ModelInfo, *, resources: list[Any] | None = None) -> None:
        self.engine, self.info = engine, info
        # Set when the source was a `cspnet train` checkpoint: its TrainedModel (train_config: the
        # run's data and settings, weights: "ema" or "raw"), for commands that evaluate on the run's data.
        self.trained: Any = None
        # Kept alive with the model: e.g. the temporary folder of the ONNX file an engine compiled.
        self._resources = resources or []

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def precision(self) -> str:
        return self.info.precision

    def __repr__(self) -> str:
        return f"InferenceModel({self.info.model_name!r}, backend={self.backend!r}, precision={self.precision!r})"

    def preprocess(self, images_uint8: Tensor) -> Tensor:
        return self.info.preprocess(images_uint8)

    def check_input(self, batch: Tensor) -> Tensor:
        """``batch`` as the engine takes it, else ``ValueError`` saying what the model takes.

        A float model accepts any floating dtype (float64 from NumPy, bf16, fp16), cast to float32
        here so that every engine takes the same inputs; a uint8 model takes uint8 pixels only.
        """
        expected = self.info.input_shape
        uint8 = self.info.input_format == "uint8_nhwc"
        layout = "uint8 (N, H, W, C) pixels" if uint8 else "float (N, C, H, W), normalised"
        if batch.dim() != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"input batch of shape {tuple(batch.shape)} does not fit {self.info.model_name}: it takes "
                f"{layout} of shape (N, {', '.join(map(str, expected))}) (img_size {self.info.img_size})"
            )
        if uint8 != (batch.dtype == torch.uint8) or not (uint8 or batch.is_floating_point()):
            raise ValueError(f"input batch is {batch.dtype}; {self.info.model_name} takes {layout}")
        return batch if uint8 else batch.float()

    def outputs(self, batch: Tensor | np.ndarray) -> list[Tensor]:
        """Every output of the model for ``batch`` (float32 tensors, batch first)."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        return self.engine.run(self.check_input(batch))

    def __call__(self, batch: Tensor | np.ndarray) -> Tensor:
        return self.outputs(batch)[0]

    def logits(self, batch: Tensor | np.ndarray) -> Tensor:
        """Logits, or log-probabilities for a file that outputs probabilities: equal up to a constant
        per image, so softmax, top-k and cross-entropy are the same for both."""
        out = self(batch)
        return out.clamp_min(torch.finfo(out.dtype).tiny).log() if self.info.output == "probabilities" else out

    def probabilities(self, batch: Tensor | np.ndarray) -> Tensor:
        out = self(batch)
        return out if self.info.output == "probabilities" else out.softmax(dim=1)
