"""Activation factory: one place that maps a config string to a module."""

from __future__ import annotations

from torch import nn

# "leaky" is darknet's LeakyReLU (slope 0.1, used by every official CSP cfg);
# "leaky_relu" is PyTorch's default slope 0.01, which timm's CSP models use.
_ACTIVATIONS: dict[str, type[nn.Module] | tuple[type[nn.Module], dict]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky": (nn.LeakyReLU, {"negative_slope": 0.1}),
    "leaky_relu": (nn.LeakyReLU, {"negative_slope": 0.01}),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "linear": nn.Identity,
    "identity": nn.Identity,
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(_ACTIVATIONS)


def make_act(name: str, inplace: bool = True) -> nn.Module:
    """Build the activation called ``name`` (see ``ACTIVATION_NAMES``).

    >>> make_act("leaky")
    LeakyReLU(negative_slope=0.1, inplace=True)
    """
    try:
        spec = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATION_NAMES)}") from None
    cls, kwargs = spec if isinstance(spec, tuple) else (spec, {})
    if cls in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Mish):
        kwargs = {**kwargs, "inplace": inplace}
    return cls(**kwargs)
