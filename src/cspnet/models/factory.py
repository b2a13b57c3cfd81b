"""``create_model``: the one entry point that builds any registered model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cspnet.convert import load_checkpoint
from cspnet.models.backbone import Backbone, FeatureExtractor
from cspnet.models.registry import get_model_entry

log = logging.getLogger(__name__)


def _fetch_pretrained(name: str, url: str | None) -> Path:
    if url is None:
        raise ValueError(
            f"no published weights are known for {name!r}; pass pretrained=<path to a weight file> instead"
        )
    import torch.hub

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / (f"{name}-{Path(url).name}" if url.endswith("model.safetensors") else Path(url).name)
    if not target.exists():
        torch.hub.download_url_to_file(url, str(target), progress=True)
    return target


def create_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`cspnet.list_models`.
        pretrained: ``False``; ``True`` to fetch the published weights (torchvision / timm, needs a
            network); or the path of a weight file: this library's own ``state_dict`` (``torch.save``
            or ``.safetensors``), a torchvision or timm checkpoint as published, or darknet
            ``.weights`` for the ``_paper`` models, or a ``cspnet train`` checkpoint (``best.ckpt``,
            ``last.ckpt``), whose EMA weights are loaded: the ones ``cspnet eval`` and ``predict``
            use (its raw weights when the run kept no EMA). Peer layouts are detected and converted;
            a bad file raises :class:`~cspnet.convert.CheckpointError` naming the problem.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features);
            object classes for a detector. Default: the entry's (1000, or 80 for COCO detectors).
        in_chans: input channels.
        features_only: return a :class:`FeatureExtractor` giving the multi-scale maps.
        out_indices: feature levels to return with ``features_only`` (0 = stem, i = stage i).
        **overrides: any field of the model's config (``partial_ratio``, ``fusion``, ``growth_rate``,
            ``drop_path_rate``, ...). Invalid values raise ``ValueError`` naming the field.

    >>> import cspnet, torch
    >>> model = cspnet.create_model("cspdensenet121", partial_ratio=0.25, num_classes=10)
    >>> model(torch.randn(2, 3, 224, 224)).shape
    torch.Size([2, 10])
    """
    entry = get_model_entry(name)
    if num_classes is None:
        num_classes = entry.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:  # True is an int
        raise ValueError(f"num_classes={num_classes!r} is invalid: expected an integer >= 0")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r} is invalid: expected an integer >= 1")
    config = entry.config.replace(**overrides) if overrides else entry.config
    model: Any = entry.builder(config, num_classes, in_chans)
    model.name = name
    model.config = config
    if pretrained is True:
        pretrained = _fetch_pretrained(name, entry.pretrained_url)
    if pretrained:
        for note in load_checkpoint(model, pretrained):
            log.info("%s: %s", name, note)
    if features_only:
        if not isinstance(model, Backbone):
            raise ValueError(f"features_only=True needs a backbone; {name!r} is a {type(model).__name__}")
        return FeatureExtractor(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices is only meaningful with features_only=True")
    return model
