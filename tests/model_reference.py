"""Fingerprints of every registered model, to show that a change of the code left the models as they were.

A fingerprint holds three kinds of facts.

- The *layout*, exact: the ordered state-dict keys with shapes and dtypes (hashed, plus the first
  and last few in clear), the parameter count and ``feature_info``. A checkpoint saved earlier loads
  unchanged exactly when these match.
- The *initial weights* after ``torch.manual_seed(0)`` and ``create_model``: a summary per part of
  the model (the stem, each stage, the final norm, the head), compared with ``INIT_TOL``.
- The *forward pass*: the model's whole float state replaced by ``exact_state`` (values drawn from
  integers, so the same bits on every machine, and norms that are not identities), then on a fixed
  input in eval mode a summary of every feature level's output and the logits themselves, compared
  with ``OUTPUT_TOL``. A change in what the model computes moves the first level it reaches.

Floats are summarised and compared with tolerances instead of hashed because their last bits depend
on the machine: other CPU kernels (AVX2 or AVX-512 oneDNN convolutions, the scalar ``normal_`` of a
CPU without AVX2, such as an Arm one) or another torch release round differently, which changes a
hash but not the model. A summary of ``n`` numbers ``x`` is ``[rms(x), mean(x), p1, p2, p3]`` with
``p_j = sum(x * s_j) / sqrt(n)`` for fixed random +-1 vectors ``s_j`` (from an integer generator).
A change ``d`` of ``x`` moves the RMS and the mean by at most ``rms(d)`` and each ``p_j`` by about
``rms(d)`` (times a standard normal number), so comparing the summary to a fraction of ``rms(x)``
tests the relative change of the whole tensor, in five numbers.

``python tests/model_reference.py`` records the models that ``tests/data/model_reference.json`` does
not hold yet and keeps every recorded entry (adding a family only adds entries);
``--rerecord NAME...`` (or ``--rerecord all``) records those again. Re-record only on purpose (a
deliberate change of a registered model), never to make a test pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

REFERENCE = Path(__file__).parent / "data" / "model_reference.json"
FORMAT = 2  # 1: everything hashed, floats bit for bit; 2: floats summarised and compared with tolerances
NUM_CLASSES = 10  # a small head keeps the fingerprint cheap; the classifier is still built and seeded

# Tolerances, as a fraction of the RMS of what is compared (the largest logit for the logits); the
# noise and the changes they were set between: tests/test_model_fingerprints.py's docstring.
INIT_TOL = 1e-4
OUTPUT_TOL = 1e-4

# Config overrides whose models are fingerprinted besides the registered ones: every fusion, pool
# placement and T width of the dense families.
VARIANTS: dict[str, dict[str, Any]] = {
    f"cspdensenet_bc40?{key}": overrides
    for key, overrides in {
        "fusion=fusion_first": {"fusion": "fusion_first"},
        "fusion=fusion_last": {"fusion": "fusion_last"},
        "partial_ratio=0.25,transition_b_ratio=0.5": {"partial_ratio": 0.25, "transition_b_ratio": 0.5},
        "transition_pool=before,last_stage_transition=True": {
            "transition_pool": "before",
            "last_stage_transition": True,
        },
        "partial_ratio=0.0,transition_pool=before": {"partial_ratio": 0.0, "transition_pool": "before"},
    }.items()
} | {
    f"csppeleenet?{key}": overrides
    for key, overrides in {
        "fusion=fusion_first": {"fusion": "fusion_first"},
        "fusion=fusion_last,transition_b_ratio=0.5": {"fusion": "fusion_last", "transition_b_ratio": 0.5},
        "transition_pool=after": {"transition_pool": "after"},
        "last_stage_transition=False,partial_ratio=0.75": {
            "last_stage_transition": False,
            "partial_ratio": 0.75,
        },
    }.items()
}


def names() -> list[str]:
    """Every name a fingerprint is recorded for: the registered classifiers and ``VARIANTS``."""
    import cspnet

    return [*cspnet.list_models(task="classification"), *VARIANTS]


def input_side(name: str) -> int:
    """The smallest side every level of ``name`` still sees at 2x2 or more (as in test_models)."""
    import cspnet

    return 16 if cspnet.get_model_entry(name).input_size[-1] <= 32 else 64


def build(name: str) -> nn.Module:
    """The seeded model of ``name`` (a registered name or a key of ``VARIANTS``), in eval mode."""
    import cspnet

    torch.manual_seed(0)
    return cspnet.create_model(name.split("?")[0], num_classes=NUM_CLASSES, **VARIANTS.get(name, {})).eval()


def _uniform(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform in (-1, 1) on a grid of 2**-15, from integers: the same bits on every machine."""
    return (torch.randint(-(2**15), 2**15, shape, generator=generator).float() + 0.5) / 2**15


def reference_input(name: str) -> torch.Tensor:
    """The input of the forward fingerprint: 1 x 3 x side x side, uniform with unit variance."""
    side = input_side(name.split("?")[0])
    return _uniform((1, 3, side, side), torch.Generator().manual_seed(1)) * math.sqrt(3)


def exact_state(model: nn.Module) -> nn.Module:
    """Replace every float tensor of ``model``'s state, in place, with values drawn from integers:
    conv and linear weights He-uniform (bound ``sqrt(6 / fan_in)``), norm scales and running
    variances in (0.5, 1.5), biases and running means in (-0.1, 0.1). Norms that are not identities
    make the forward pass depend on every norm's four tensors."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            u = _uniform(t.shape, generator)
            if t.dim() > 1:
                t.copy_(u * math.sqrt(6 / t[0].numel()))
            elif key.endswith(("weight", "running_var")):
                t.copy_(1 + u / 2)
            else:
                t.copy_(u / 10)
    return model


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()[:32]


# The random +-1 vectors of the projections: a period of ``PERIOD`` signs (a prime, so that it lines
# up with no tensor's structure), restarting with every tensor.
PERIOD = 4099
SIGNS = torch.randint(0, 2, (3, PERIOD), generator=torch.Generator().manual_seed(0)).double() * 2 - 1


def summary(*tensors: torch.Tensor) -> list[float]:
    """``[rms, mean, p1, p2, p3]`` of ``tensors`` flattened and concatenated (see the module
    docstring); one pass over the data, in float64."""
    n, square, columns = 0, 0.0, torch.zeros(PERIOD, dtype=torch.float64)
    for t in tensors:
        x = t.detach().reshape(-1)
        n, whole = n + x.numel(), x.numel() - x.numel() % PERIOD
        square += torch.linalg.vector_norm(x, dtype=torch.float64).item() ** 2
        columns += x[:whole].view(-1, PERIOD).sum(0, dtype=torch.float64)
        columns[: x.numel() - whole] += x[whole:].double()
    return [(square / n) ** 0.5, columns.sum().item() / n, *(SIGNS @ columns / n**0.5).tolist()]


def part_of(key: str, levels: list[str]) -> str:
    """The part a state-dict key belongs to: the deepest feature level whose module holds it, else
    its top-level module (``final_norm``, ``head``)."""
    held = [m for m in levels if key.startswith(m + ".")]
    return max(held, key=len) if held else key.split(".")[0]


def weight_summaries(model: nn.Module) -> dict[str, list[float]]:
    """The summary of every part's float state (parameters and norm statistics), in model order."""
    levels = [level["module"] for level in model.feature_info]  # type: ignore[union-attr]
    parts: dict[str, list[torch.Tensor]] = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            parts.setdefault(part_of(key, levels), []).append(value)
    return {part: summary(*values) for part, values in parts.items()}


def outputs(name: str, model: nn.Module) -> dict[str, Any]:
    """``{"levels": summary per feature level, "logits": [...]}`` of ``model`` on ``reference_input``."""
    levels: dict[str, list[float]] = {}
    hooks = [
        model.get_submodule(level["module"]).register_forward_hook(
            lambda _m, _i, out, name=level["module"]: levels.__setitem__(name, summary(out))
        )
        for level in model.feature_info  # type: ignore[union-attr]
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order wherever the kernels are the same
    try:
        with torch.no_grad():
            logits = model.eval()(reference_input(name))
    finally:
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()
    return {"levels": levels, "logits": [float(v) for v in logits.flatten()]}


def fingerprint(name: str) -> dict[str, Any]:
    """What ``name`` (a registered name or a key of ``VARIANTS``) builds today: see the module docstring."""
    model = build(name)
    layout = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()]
    return {
        "num_keys": len(layout),
        "params": sum(p.numel() for p in model.parameters()),
        "keys_sha": _digest(layout),
        "first_keys": layout[:3],
        "last_keys": layout[-3:],
        "feature_info": [dict(level) for level in model.feature_info],  # type: ignore[union-attr]
        "input_side": input_side(name.split("?")[0]),
        "weights": weight_summaries(model),
        **outputs(name, exact_state(model)),
    }


LAYOUT = ("num_keys", "params", "first_keys", "last_keys", "feature_info", "keys_sha", "input_side")


def assert_same_layout(name: str, ours: dict[str, Any], recorded: dict[str, Any]) -> None:
    """Keys, shapes, dtypes, parameter count and feature levels: exactly as recorded."""
    # Readable fields first, so that a failure says what changed before the hash does.
    for key in LAYOUT:
        assert ours[key] == recorded[key], f"{name}: {key} changed"


def _assert_summaries_close(
    name: str, what: str, ours: dict[str, list[float]], recorded: dict[str, list[float]], tol: float
) -> None:
    assert list(ours) == list(recorded), (
        f"{name}: the parts of the {what} changed: {list(ours)} != {list(recorded)}"
    )
    for part, ref in recorded.items():  # in model order: the first part reported is where a change begins
        scale = ref[0]
        torch.testing.assert_close(
            torch.tensor(ours[part], dtype=torch.float64),
            torch.tensor(ref, dtype=torch.float64),
            rtol=0,
            atol=tol * scale,
            msg=lambda m, part=part, scale=scale: (
                f"{name}: the {what} of {part} changed (tolerance {tol:g} of its RMS {scale:.4g})\n{m}"
            ),
        )


def assert_same_weights(name: str, ours: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The seeded initial weights of every part, to ``INIT_TOL`` of the part's RMS."""
    _assert_summaries_close(name, "seeded initial weights", ours["weights"], recorded["weights"], INIT_TOL)


def assert_same_outputs(name: str, ours: dict[str, Any], recorded: dict[str, Any]) -> None:
    """Every feature level's output to ``OUTPUT_TOL`` of its RMS, the logits to ``OUTPUT_TOL`` of the
    largest one (round-off scales with the activations)."""
    _assert_summaries_close(name, "output", ours["levels"], recorded["levels"], OUTPUT_TOL)
    expected = torch.tensor(recorded["logits"])
    torch.testing.assert_close(
        torch.tensor(ours["logits"]),
        expected,
        rtol=OUTPUT_TOL,
        atol=OUTPUT_TOL * expected.abs().max().item(),
        msg=lambda m: f"{name}: the logits changed\n{m}",
    )


def machine() -> dict[str, str]:
    """Where a fingerprint was recorded: the floats' last digits depend on it."""
    from cspnet.cpu import cpu_model

    return {"torch": torch.__version__, "cpu": cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rerecord", nargs="+", default=[], metavar="NAME", help="record these again ('all': every one)"
    )
    args = parser.parse_args(argv)
    existing = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    kept = existing.get("models", {}) if existing.get("format") == FORMAT else {}
    wanted = names()
    unknown = sorted(set(args.rerecord) - {"all", *wanted})
    if unknown:
        parser.error(f"not a fingerprinted name: {', '.join(unknown)}")
    redo = set(wanted) if "all" in args.rerecord else set(args.rerecord)
    models = {n: kept[n] if n in kept and n not in redo else fingerprint(n) for n in wanted}
    fresh = [n for n in wanted if n not in kept or n in redo]
    # Which machine recorded which models: earlier entries lose the models recorded now.
    earlier = [
        {**e, "models": [n for n in e["models"] if n in models and n not in fresh]}
        for e in existing.get("recorded_on", [])
    ]
    recorded_on = [e for e in earlier if e["models"]] + ([{**machine(), "models": fresh}] if fresh else [])
    reference = {"format": FORMAT, "recorded_on": recorded_on, "models": models}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    # One line per summary and per list of logits: a re-recorded model reads as a short diff.
    text = re.sub(
        r"\[\n\s+([^\[\]{}\"]*?)\n\s*\]",
        lambda m: "[" + " ".join(m.group(1).split()) + "]",
        json.dumps(reference, indent=1),
    )
    REFERENCE.write_text(text + "\n")
    print(f"wrote {REFERENCE}: {len(models)} models, {len(fresh)} recorded now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
