"""One vocabulary for numeric precision on every command: ``fp32``, ``bf16``, ``fp16``, ``int8``;
and the inference engines (:data:`BACKENDS`) with the precisions each runs (:data:`BACKEND_PRECISIONS`).

Training runs mixed precision through Lightning, whose own names (``"32-true"``, ``"bf16-mixed"``,
``"16-mixed"``, and ``"32"``) are accepted as aliases and stored as the short names; inference
(``eval``, ``predict``, ``benchmark``, ``cspnet.inference``) uses the short names directly.

>>> canonical("bf16-mixed"), canonical("32"), lightning_precision("fp16")
('bf16', 'fp32', '16-mixed')
>>> BACKEND_PRECISIONS["onnxruntime"]
('fp32', 'int8')

Stdlib only, so the command line can offer these choices without loading torch.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")  # mixed precision for the two 16-bit ones
EAGER_INFERENCE_PRECISIONS = ("fp32", "bf16")  # PyTorch eager inference (eval, predict)

# The inference engines of cspnet.inference, and what each computes in.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}

_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
LIGHTNING_ALIASES = {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
# `train --precision` choices: the project's names, then Lightning's (stored as the short names).
# "64" is not offered: kornia's augmentation is float32-only, so a double run fails in its first step.
TRAINING_PRECISION_CHOICES = (*TRAINING_PRECISIONS, *LIGHTNING_ALIASES)


def canonical(name: str) -> str:
    """The short name of a precision (Lightning's names mapped); unknown names are returned as given."""
    return LIGHTNING_ALIASES.get(name, name)


def lightning_precision(name: str) -> str:
    """Lightning's ``Trainer(precision=...)`` value for a training precision."""
    return _LIGHTNING[canonical(name)]
