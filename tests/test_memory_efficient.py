"""DenseNetConfig.memory_efficient: the same outputs, gradients and BN statistics, with less memory."""

from __future__ import annotations

import pytest
import torch

import cspnet

SMALL = {"block_config": (3, 3, 3), "growth_rate": 8, "stem_chs": 16}


def _train_step(name: str, memory_efficient: bool, x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    torch.manual_seed(0)  # same initial weights for both variants
    model = cspnet.create_model(name, num_classes=5, memory_efficient=memory_efficient, **SMALL).train()
    inp = x.clone().requires_grad_(True)
    out = model(inp)
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads["input"] = inp.grad
    return out.detach(), grads, dict(model.named_buffers())


@pytest.mark.parametrize("name", ["densenet_bc100", "cspdensenet_bc100"])
def test_memory_efficient_outputs_and_gradients_match(name: str) -> None:
    x = torch.randn(4, 3, 16, 16)
    out, grads, _ = _train_step(name, False, x)
    out_me, grads_me, _ = _train_step(name, True, x)
    torch.testing.assert_close(out_me, out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_me.keys()
    for key in grads:
        torch.testing.assert_close(grads_me[key], grads[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["densenet_bc100", "cspdensenet_bc100"])
def test_memory_efficient_updates_norm_statistics_once(name: str) -> None:
    # Recomputing the bottleneck in the backward pass must not run the BN statistics update again.
    x = torch.randn(4, 3, 16, 16)
    _, _, buffers = _train_step(name, False, x)
    _, _, buffers_me = _train_step(name, True, x)
    for key in buffers:
        torch.testing.assert_close(buffers_me[key], buffers[key], rtol=1e-5, atol=1e-6, msg=key)


def test_memory_efficient_is_only_a_training_change() -> None:
    torch.manual_seed(0)
    model = cspnet.create_model("cspdensenet_bc100", num_classes=5, **SMALL).eval()
    efficient = cspnet.create_model("cspdensenet_bc100", num_classes=5, memory_efficient=True, **SMALL).eval()
    efficient.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(efficient(x), model(x))
