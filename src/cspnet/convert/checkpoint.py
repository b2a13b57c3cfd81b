"""Reading weight files safely and loading them into a model with a clear mismatch report.

Nothing here executes code from a file: ``.safetensors`` files are read with safetensors, anything
else with :func:`load_torch_file` (``torch.load(..., weights_only=True)``, the one PyTorch-file
reader every loader of the project calls). Peer layouts (torchvision, timm, darknet) are
recognised by their keys and converted to this library's layout by the converters registered with
:func:`register_converter`; formats that are not a state dict (darknet's ``.weights``) by the
reader registered for their suffix with :func:`register_file_reader`. Each registry takes one
entry per name or suffix: a second one is refused, so which reader runs never depends on the order
modules were imported in.

Every problem with a file is a :class:`CheckpointError` naming it: besides files that cannot be read
or do not fit the model, a state dict whose keys are not strings, whose tensors hold no data (meta),
are not dense (sparse, nested, quantized), hold NaN or infinity, or whose dtype cannot hold the
model's values (an integer or complex tensor for a float parameter). Floating-point tensors of
another precision (fp16, bf16, fp64) are cast to the model's dtype: that is how published half
precision files are meant to be used.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A weight file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Converter:
    """Turns a peer's state dict into this library's layout.

    ``detect(state, model)`` says whether ``state`` is in the peer's layout; ``convert(state, model)``
    returns the converted dict. ``model`` is the target (some layouts need its structure).
    """

    name: str
    detect: Callable[[StateDict, nn.Module], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]


_CONVERTERS: list[Converter] = []

# File readers for formats that are not a pickled/safetensors state dict (darknet's ``.weights``).
# A reader gets the path and the target model and returns a state dict in this library's layout.
_FILE_READERS: dict[str, Callable[[Path, nn.Module], StateDict]] = {}


def _qualname(function: Callable[..., object]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def register_converter(converter: Converter) -> None:
    """Add ``converter`` to the peer layouts :func:`convert_state_dict` recognises; one per name."""
    if any(c.name == converter.name for c in _CONVERTERS):
        raise ValueError(f"a converter named {converter.name!r} is already registered: one converter per layout")
    _CONVERTERS.append(converter)


def register_file_reader(
    suffix: str, reader: Callable[[Path, nn.Module], StateDict], *,
    replaces: Callable[[Path, nn.Module], StateDict] | None = None,
) -> None:  # fmt: skip
    """Read files ending in ``suffix`` with ``reader(path, model)``; one reader per suffix.

    A second reader for a suffix is refused with a ``ValueError`` naming both, unless the caller
    names the registered one in ``replaces`` (a deliberate take-over, never an accident of import
    order). ``.safetensors`` and PyTorch files are read natively and cannot be taken over.

    >>> register_file_reader(".safetensors", lambda path, model: {})
    Traceback (most recent call last):
    ...
    ValueError: .safetensors files are read by cspnet itself; no reader can be registered for them
    """
    key = suffix.lower()
    if not key.startswith(".") or key in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
        raise ValueError(f"{suffix} files are read by cspnet itself; no reader can be registered for them"
                         if key.startswith(".") else f"suffix {suffix!r} is invalid: expected e.g. '.weights'")  # fmt: skip
    current = _FILE_READERS.get(key)
    if current is not None and current is not reader and current is not replaces:
        raise ValueError(
            f"a reader for {key} files is already registered ({_qualname(current)}); refusing a second one "
            f"({_qualname(reader)}): one reader per suffix (pass replaces= to take over from it deliberately)"
        )
    _FILE_READERS[key] = reader


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema_state_dict")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def _training_checkpoint_weights(obj: Mapping) -> Any:
    """The EMA weights of a ``cspnet train`` checkpoint (what ``eval`` and ``predict`` use), else its raw ones.

    Such a checkpoint names its model and holds Lightning's ``state_dict`` (keys ``model.*``) and,
    with EMA on, ``ema_state_dict = {"module": {...}, ...}``.
    """
    ema = obj.get("ema_state_dict")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return ema["module"]
    raw = obj.get("state_dict")
    if isinstance(raw, Mapping):
        model_keys = {k: v for k, v in raw.items() if isinstance(k, str) and k.startswith("model.")}
        return model_keys or raw
    return raw


def _unwrap(obj: Any, path: Path | str) -> StateDict:
    """Find the tensor mapping inside common checkpoint wrappers and strip DDP/Lightning prefixes."""
    if isinstance(obj, Mapping) and "model_name" in obj and "state_dict" in obj:
        obj = _training_checkpoint_weights(obj)
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and not all(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of parameter names to tensors)")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no tensors found in the checkpoint")
    check_state_dict(state, str(path))
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _describe_key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def check_state_dict(state: Mapping[Any, Any], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` maps string keys to dense tensors with data.

    >>> check_state_dict({"w": torch.zeros(2)})
    >>> check_state_dict({0: torch.zeros(2)})
    Traceback (most recent call last):
    ...
    cspnet.convert.checkpoint.CheckpointError: checkpoint: key 0 is not a string (a state dict maps parameter names to tensors)
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: expected a mapping of parameter names to tensors, not {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{source}: key {_describe_key(key)} is not a string (a state dict maps parameter names to tensors)"
            )
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor")
        if value.is_meta:
            raise CheckpointError(f"{source}: {key} is a meta tensor (a shape without data)")
        if value.layout != torch.strided or value.is_nested:
            raise CheckpointError(f"{source}: {key} is a {value.layout} tensor; only dense tensors can be loaded")
        if value.is_quantized:
            raise CheckpointError(f"{source}: {key} is a quantized tensor ({value.dtype}); cspnet models are float")


def _check_values(state: StateDict, own: StateDict, source: str) -> None:
    """Dtypes that cannot hold the model's values, and NaN / infinity, are errors (see the module doc)."""
    bad_dtype, not_finite = [], []
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            continue
        if target.is_floating_point():
            if not value.is_floating_point():
                bad_dtype.append(f"{key} ({value.dtype}, the model's is {target.dtype})")
            elif value.numel() and not bool(torch.isfinite(value.float()).all()):
                not_finite.append(key)
        elif value.is_floating_point() or value.is_complex():
            bad_dtype.append(f"{key} ({value.dtype}, the model's is {target.dtype})")
    if bad_dtype:
        raise CheckpointError(f"{source}: tensors of the wrong kind of dtype: {', '.join(bad_dtype[:5])}"
                              + (f" (+{len(bad_dtype) - 5} more)" if len(bad_dtype) > 5 else ""))
    if not_finite:
        raise CheckpointError(f"{source}: NaN or infinite values in {', '.join(not_finite[:5])}"
                              + (f" (+{len(not_finite) - 5} more)" if len(not_finite) > 5 else ""))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_torch_file(path: str | os.PathLike[str], what: str = "weight file") -> Any:
    """The object in a file written by ``torch.save``, read without running code from it.

    ``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers only. Every
    problem is a one-line :class:`CheckpointError` that names the file and says what ``what`` (e.g.
    ``"checkpoint"``) is wrong with it: missing, empty, truncated, not a PyTorch file, or refused
    because its pickle would import or call Python code (a malicious or foreign file). Torch's own
    advice to retry with ``weights_only=False`` is not passed on: that would run the file's code.

    >>> import tempfile, pathlib
    >>> empty = pathlib.Path(tempfile.mkdtemp()) / "x.pt"
    >>> _ = empty.write_bytes(b"")
    >>> load_torch_file(empty, "checkpoint")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cspnet.convert.checkpoint.CheckpointError: .../x.pt: the checkpoint is empty (0 bytes)
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the {what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notices about foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: refused: the {what} would import and run Python code ({found.group(1)}) while loading; "
                "cspnet loads tensors and plain data only"
            ) from None
        raise CheckpointError(
            f"{path}: refused: the {what} is not plain PyTorch data (corrupt, or pickled Python objects "
            "cspnet does not load)"
        ) from None
    except EOFError:
        raise CheckpointError(f"{path}: the {what} is truncated (its data ends early)") from None
    except MemoryError:
        raise
    except Exception as exc:  # a damaged zip archive (RuntimeError), a foreign format (KeyError, ...)
        if "PytorchStreamReader" in str(exc):
            raise CheckpointError(f"{path}: the {what} is truncated or corrupt (not a readable PyTorch archive)") from exc
        raise CheckpointError(
            f"{path}: the {what} is not a PyTorch file ({type(exc).__name__}: {_one_line(str(exc), 80)})"
        ) from exc


def file_kind(path: Path) -> str:
    """The suffix that says how ``path`` is read; darknet's ``partial`` files (``<net>.conv.<layers>``,
    e.g. ``csdarknet53-omega.conv.105``) are ``.weights`` files.

    >>> file_kind(Path("yolov4.conv.137")), file_kind(Path("model.PTH"))
    ('.weights', '.pth')
    """
    if re.fullmatch(r"\.\d+", path.suffix) and Path(path.stem).suffix.lower() == ".conv":
        return ".weights"
    return path.suffix.lower()


def read_state_dict(path: str | os.PathLike[str], model: nn.Module | None = None) -> StateDict:
    """Read a weight file into a flat ``{name: tensor}`` dict without executing code from it.

    ``.safetensors`` via safetensors; registered suffixes (``.weights``) via their reader, which needs
    the target ``model``; anything else via ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    suffix = file_kind(path)
    if suffix not in (".safetensors", *_FILE_READERS):
        return _unwrap(load_torch_file(path, "weight file"), path)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _unwrap(load_file(str(path), device="cpu"), path)
        if model is None:
            raise CheckpointError(f"{path}: reading a {suffix} file needs the target model")
        return _FILE_READERS[suffix](path, model)
    except CheckpointError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # a corrupt or foreign file (safetensors' and the readers' own errors)
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {_one_line(str(exc))})") from exc


def convert_state_dict(state: StateDict, model: nn.Module) -> tuple[StateDict, str]:
    """Convert ``state`` from whichever peer layout it is in; returns it and the layout's name."""
    check_state_dict(state)
    for converter in _CONVERTERS:
        if converter.detect(state, model):
            return converter.convert(state, model), converter.name
    return state, "cspnet"


def _adapt_input_conv(name: str, weight: Tensor, target: Tensor) -> Tensor | None:
    """Adapt a first-conv kernel to another number of input channels (timm's rule), else ``None``."""
    if weight.dim() != 4 or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return None
    src, dst = weight.shape[1], target.shape[1]
    if src != 3 or dst == 3:
        return None
    if dst == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-dst // src)
    return weight.repeat(1, repeats, 1, 1)[:, :dst] * (src / dst)


def _first_conv_name(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def _class_layers(model: nn.Module) -> tuple[list[str], int]:
    """The layers whose output rows are per class, and how many rows each class has.

    A classifier: ``head.fc`` (one row per class). A model whose outputs are laid out otherwise says
    so with a ``class_layers()`` method (a detector: its prediction convs, one row per anchor and class).
    """
    declared = getattr(model, "class_layers", None)
    if callable(declared):
        names, per_class = declared()
        return list(names), int(per_class)
    fc = getattr(getattr(model, "head", None), "fc", None)
    return (["head.fc"], 1) if isinstance(fc, nn.Linear) else ([], 0)


def _skip_class_layers(model: nn.Module, state: StateDict, own: StateDict) -> tuple[set[str], int] | None:
    """The keys of class layers that are in ``state`` for another class count, with that count, else ``None``.

    Every class layer's weight and bias must be in the file, with the model's shape in every
    dimension but the rows, and the rows must differ by a whole number of classes.
    """
    layers, per_class = _class_layers(model)
    keys = {f"{name}.{kind}" for name in layers for kind in ("weight", "bias")}
    if not layers or not all(k in state and k in own for k in keys):
        return None
    if any(state[k].dim() != own[k].dim() or state[k].shape[1:] != own[k].shape[1:] for k in keys):
        return None
    extra = {state[k].shape[0] - own[k].shape[0] for k in keys}
    if len(extra) != 1 or 0 in extra or next(iter(extra)) % per_class:
        return None
    return keys, getattr(model, "num_classes", 0) + next(iter(extra)) // per_class


def _summarise(label: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"  {label} ({len(keys)}): {shown}{more}"


def load_weights(model: nn.Module, state: StateDict, source: str = "checkpoint") -> list[str]:
    """Load ``state`` (already in this library's layout) into ``model``, strictly.

    Tolerated: missing ``num_batches_tracked`` buffers (published torchvision files lack them), a
    first conv with 3 input channels loaded into a model with another ``in_chans``, and a classifier
    of another size when the model was built with a different ``num_classes`` (the head keeps its
    fresh initialisation). Anything else that does not fit raises :class:`CheckpointError` listing the
    missing, unexpected and mis-shaped keys. Returns notes on what was adapted.
    """
    check_state_dict(state, source)
    own = model.state_dict()
    notes: list[str] = []
    state = dict(state)
    first_conv = _first_conv_name(model)
    if first_conv in state and first_conv in own and state[first_conv].shape != own[first_conv].shape:
        adapted = _adapt_input_conv(first_conv, state[first_conv], own[first_conv])
        if adapted is not None:
            state[first_conv] = adapted
            notes.append(f"adapted {first_conv} from 3 to {own[first_conv].shape[1]} input channels")
    file_head = state.get("head.fc.weight")
    dropped = _skip_class_layers(model, state, own)
    # A classifier in the file and none in the model (num_classes=0: pooled features) is dropped too.
    if (dropped is None and isinstance(file_head, Tensor) and file_head.dim() == 2 and "head.fc.weight" not in own
            and not _class_layers(model)[0] and getattr(model, "num_classes", None) == 0):  # fmt: skip
        dropped = ({"head.fc.weight", "head.fc.bias"}, int(file_head.shape[0]))
    head: set[str] = dropped[0] if dropped else set()
    if dropped:
        for k in head:
            state.pop(k, None)
        ckpt_classes, model_classes = dropped[1], getattr(model, "num_classes", 0)
        what = "classifier" if "head.fc.weight" in head else "prediction layers"
        note = (
            f"{what} not loaded: the checkpoint has {ckpt_classes} classes, the model {model_classes}"
            + (" (it keeps its fresh random initialisation)" if model_classes else "")
        )
        notes.append(note)
        log.warning("%s: %s", source, note)  # a random classifier must never be a surprise

    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in head]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {getattr(model, 'name', '') or type(model).__name__}:"]
        if missing:
            lines.append(_summarise("missing keys", missing))
        if unexpected:
            lines.append(_summarise("unexpected keys", unexpected))
        if mis_shaped:
            lines.append(_summarise("mis-shaped keys", mis_shaped))
        raise CheckpointError("\n".join(lines))
    _check_values(state, own, source)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return notes


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Read ``path`` (any supported format), convert it to this library's layout and load it.

    Returns notes on what was converted or adapted (for logging).
    """
    state = read_state_dict(path, model)
    state, layout = convert_state_dict(state, model)
    notes = [] if layout == "cspnet" else [f"converted from the {layout} layout"]
    return notes + load_weights(model, state, source=str(path))
