"""Fingerprints of every registered model, to prove a refactor left them bit-identical.

``python tests/model_reference.py`` records, for every name in ``cspnet.list_models()``: the ordered
state-dict keys with shapes and dtypes (hashed), the state dict after ``torch.manual_seed(0)`` and
``create_model`` (hashed, values and buffers), the output of that model in eval mode on a fixed
small input (hashed, plus its first logits), and ``feature_info``. It writes
``tests/data/model_reference.json``; ``tests/test_bit_identical.py`` compares the models of the
current code against it. The file was written on the code *before* the stage-factory refactor, so it
plays the part of checkpoints saved before the change: a model whose keys, initialisation or forward
pass changed fails there.

Run it again only on purpose (a deliberate change of a registered model), never to make a test pass.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

REFERENCE = Path(__file__).parent / "data" / "model_reference.json"
INPUT_SEED = 1
NUM_CLASSES = 10  # a small head keeps the hashing cheap; the classifier is still built and seeded

# Config overrides the refactor must not change either: every fusion, pool placement and T width of
# the dense families (the stagenet families took no fusion before the change).
VARIANTS: dict[str, dict[str, Any]] = {
    f"cspdensenet_bc40?{key}": overrides
    for key, overrides in {
        "fusion=fusion_first": {"fusion": "fusion_first"},
        "fusion=fusion_last": {"fusion": "fusion_last"},
        "partial_ratio=0.25,transition_b_ratio=0.5": {"partial_ratio": 0.25, "transition_b_ratio": 0.5},
        "transition_pool=before,last_stage_transition=True": {"transition_pool": "before", "last_stage_transition": True},
        "partial_ratio=0.0,transition_pool=before": {"partial_ratio": 0.0, "transition_pool": "before"},
    }.items()
} | {
    f"csppeleenet?{key}": overrides
    for key, overrides in {
        "fusion=fusion_first": {"fusion": "fusion_first"},
        "fusion=fusion_last,transition_b_ratio=0.5": {"fusion": "fusion_last", "transition_b_ratio": 0.5},
        "transition_pool=after": {"transition_pool": "after"},
        "last_stage_transition=False,partial_ratio=0.75": {"last_stage_transition": False, "partial_ratio": 0.75},
    }.items()
}


def input_side(name: str) -> int:
    """The smallest side every level of ``name`` still sees at 2x2 or more (as in test_models)."""
    import cspnet

    return 16 if cspnet.get_model_entry(name).input_size[-1] <= 32 else 64


def _digest(chunks: Any) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:32]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def fingerprint(name: str) -> dict[str, Any]:
    """What ``name`` (a registered name or a key of ``VARIANTS``) produces today (see the module docstring)."""
    import cspnet

    base = name.split("?")[0]
    torch.manual_seed(0)
    model = cspnet.create_model(base, num_classes=NUM_CLASSES, **VARIANTS.get(name, {})).eval()
    state = model.state_dict()
    layout = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in state.items()]
    side = input_side(base)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(INPUT_SEED))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine's core count
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        torch.set_num_threads(threads)
    return {
        "num_keys": len(layout),
        "params": sum(p.numel() for p in model.parameters()),
        "keys_sha": _digest(s.encode() + b"\n" for s in layout),
        "first_keys": layout[:3],
        "last_keys": layout[-3:],
        "state_sha": _digest(k.encode() + _tensor_bytes(v) for k, v in state.items()),
        "input_side": side,
        "output_sha": _digest([_tensor_bytes(out)]),
        "output_head": [float(v) for v in out.flatten()[:4]],
        "feature_info": [dict(level) for level in model.feature_info],
    }


def main() -> int:
    import cspnet

    names = [*cspnet.list_models(task="classification"), *VARIANTS]
    reference = {"torch": torch.__version__, "models": {n: fingerprint(n) for n in names}}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE} ({len(reference['models'])} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
