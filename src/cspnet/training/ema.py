"""An exponential moving average of a model's weights, its decay warmed up as TensorFlow's ``num_updates``."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """Keeps ``ema = d * ema + (1 - d) * weights`` after every step, ``d = min(decay, (1 + n) / (10 + n))``.

    The warm-up (the formula of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``; timm's
    ``ModelEmaV2`` has none) makes the average usable after a few hundred steps (short runs); buffers (BN
    statistics) are copied as they are. Not an ``nn.Module`` attribute of the training module on
    purpose: the trained model's ``state_dict`` stays the plain model, loadable by ``create_model``.

    >>> net = nn.Linear(2, 2); ema = ModelEma(net, decay=0.9)
    >>> ema.update(net); ema.updates
    1
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
