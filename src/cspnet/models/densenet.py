"""DenseNet and CSPDenseNet: one config, one builder; a DenseNet is the ``partial_ratio=0`` case.

Stage ``i`` of both networks is a :class:`~cspnet.layers.CrossStagePartial` around a
:class:`~cspnet.layers.DenseBlock`. DenseNet's transition (BN-ReLU-conv1x1 + 2x2 average pool) is
split at the pool: the conv closes stage ``i`` and the pool opens stage ``i + 1``, so every stage's
feature map sits at the stage's own resolution (strides 4, 8, 16, 32) and the arithmetic is exactly
torchvision's. With ``partial_ratio > 0`` (the paper's gamma) the first ``gamma * C`` channels of
the stage input bypass the dense block and meet it at the partial transition chosen by ``fusion``.

The CSP stage construction is shared with CSPPeleeNet (:mod:`cspnet.models.dense_stage`). Choices the
paper leaves open (documented in ``docs/cspdensenet.md``), all config fields:

* ``transition_b_ratio`` (width of T): by default the width that makes ``[bypass, T]`` exactly as
  wide as DenseNet's stage output, so all three fusion strategies keep DenseNet's stage widths and
  ``fusion_last`` is literally ``csp`` without U.
* U's width is DenseNet's transition width (``compression * (C + n * k)``), and in the last stage
  DenseNet's final width ``C + n * k``: a CSPDenseNet and its DenseNet twin match stage for stage.
* ``transition_pool``: ``"after"`` (default) keeps DenseNet's order, pooling after the transition;
  ``"before"`` pools between the concatenation and U, so U runs on a quarter of the pixels.
* DenseNet's last stage has no transition, and by default neither has CSPDenseNet's
  (``last_stage_transition=False``): its bypass joins the partial dense block's output by
  concatenation alone, which gives DenseNet's final width. A T/U pair there would cost more than
  the partial dense block saves (DenseNet-201: +0.29 GMACs against -0.09).

``elastic`` (one flag, or one per stage) makes every dense layer of a stage an
:class:`~cspnet.layers.ElasticDenseLayer` (allenai/elastic's DenseNet-201-Elastic: half the
bottleneck at half resolution); ``densenet201_elastic`` / ``cspdensenet201_elastic`` are that
layout, the second with the CSP stages above (docs/cspdensenet.md: the paper's figures and the choices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from cspnet.layers import BatchNormAct2d, DenseBlock, ElasticDenseLayer, NormActConv, drop_path_rates
from cspnet.models.backbone import Backbone, FeatureInfo, conv_stem, init_weights, resnet_stem
from cspnet.models.config import (
    ModelConfig,
    bounded,
    elastic_pool_field,
    elastic_upsample_field,
    one_of,
    positive_ints,
)
from cspnet.models.dense_stage import CSPStageFields, build_csp_dense_stages
from cspnet.models.registry import ModelEntry, register_model

TORCHVISION_URL = "https://download.pytorch.org/models/{}.pth"


@dataclass(frozen=True)
class DenseNetConfig(CSPStageFields, ModelConfig):
    """DenseNet / CSPDenseNet hyper-parameters (defaults: DenseNet-121); CSP fields from :class:`CSPStageFields`."""

    growth_rate: int = bounded(32, 1, integer=True, doc="k: channels each dense layer adds")
    block_config: tuple[int, ...] = positive_ints((6, 12, 24, 16), doc="dense layers per stage")
    stem_chs: int = bounded(64, 1, integer=True, doc="stem output channels")
    bn_size: int = bounded(4, 1, integer=True, doc="bottleneck width of a dense layer, in multiples of k (torchvision's name)")
    compression: float = bounded(0.5, 0.0, 1.0, low_open=True, doc="transition width / its input width")
    small_input: bool = one_of(False, (False, True), doc="3x3 stride-1 stem, no stem pool (32x32 images)")
    memory_efficient: bool = one_of(False, (False, True), doc="recompute concat + bottleneck in backward")
    elastic: bool | tuple[bool, ...] = field(
        default=False,
        metadata={"doc": "ELASTIC dense layers (half the bottleneck at half resolution): one flag, or one per stage"},
    )
    elastic_pool: str = elastic_pool_field("avg")
    elastic_upsample: str = elastic_upsample_field("bilinear")

    @property
    def depths(self) -> tuple[int, ...]:
        """Dense layers per stage: ``block_config`` (torchvision's name, kept for configs and
        checkpoints that use it) under the name every family is read by (``StageNetConfig.depths``)."""
        return self.block_config

    def check(self) -> None:
        if self.small_input and len(self.block_config) < 2:
            raise ValueError(f"block_config={self.block_config!r} is invalid: expected at least 2 stages")
        if isinstance(self.elastic, list):
            object.__setattr__(self, "elastic", tuple(self.elastic))
        flags = self.elastic if isinstance(self.elastic, tuple) else (self.elastic,)
        if not all(isinstance(f, bool) for f in flags) or len(flags) not in (1, len(self.block_config)) or (
            isinstance(self.elastic, tuple) and len(flags) != len(self.block_config)
        ):
            raise ValueError(
                f"elastic={self.elastic!r} is invalid: expected True / False or {len(self.block_config)} of them, "
                "one per stage (block_config)"
            )

    def elastic_stages(self) -> tuple[bool, ...]:
        """Whether each stage's dense layers are ELASTIC layers."""
        return self.elastic if isinstance(self.elastic, tuple) else (self.elastic,) * len(self.block_config)


def _stem(cfg: DenseNetConfig, in_chans: int) -> tuple[nn.Module, int, nn.Module | None]:
    """The stem, its stride and the pooling that opens stage 0."""
    if cfg.small_input:
        return conv_stem(in_chans, cfg.stem_chs, 3, 1, cfg.act), 1, None
    stem, pool = resnet_stem(in_chans, cfg.stem_chs, cfg.act)
    return stem, 2, pool


def build_densenet(cfg: DenseNetConfig, num_classes: int = 1000, in_chans: int = 3) -> Backbone:
    """Build a DenseNet (``partial_ratio == 0``) or CSPDenseNet from ``cfg``."""
    stem, stride, stem_pool = _stem(cfg, in_chans)
    feature_info = FeatureInfo([{"num_chs": cfg.stem_chs, "reduction": stride, "module": "stem"}])
    rates = drop_path_rates(cfg.drop_path_rate, cfg.depths)
    last = len(cfg.depths) - 1

    elastic = cfg.elastic_stages()

    def make_elastic_layer(chs: int, rate: float) -> nn.Module:
        return ElasticDenseLayer(chs, cfg.growth_rate, cfg.bn_size, cfg.act, rate, cfg.memory_efficient,
                                 pool=cfg.elastic_pool, upsample=cfg.elastic_upsample)  # fmt: skip

    def make_block(i: int, in_chs: int) -> DenseBlock:
        return DenseBlock(
            in_chs, cfg.depths[i], cfg.growth_rate, cfg.bn_size, cfg.act, rates[i], cfg.memory_efficient,
            make_layer=make_elastic_layer if elastic[i] else None,
        )  # fmt: skip

    def transition_width(i: int, dense_width: int) -> int | None:
        return None if i == last else int(dense_width * cfg.compression)  # DenseNet's last stage has none

    def make_transition(in_chs: int, out_chs: int) -> nn.Module:
        return NormActConv(in_chs, out_chs, act=cfg.act)

    stages, chs = build_csp_dense_stages(
        cfg,
        len(cfg.depths),
        cfg.stem_chs,
        make_block,
        lambda i: cfg.depths[i] * cfg.growth_rate,
        transition_width,
        make_transition,
        lambda: nn.AvgPool2d(2, stride=2),
        feature_info,
        first_down=stem_pool,
    )
    model = Backbone(stem, stages, feature_info, num_classes, cfg.drop_rate, BatchNormAct2d(chs, act=cfg.act))
    init_weights(model)
    return model


def _register(name: str, cfg: DenseNetConfig, description: str, **kwargs) -> None:
    register_model(ModelEntry(name, build_densenet, cfg, description, **kwargs))


_IMAGENET = {
    # name: (growth, blocks, stem, torchvision weights, torchvision params, torchvision GMACs @224)
    "densenet121": (32, (6, 12, 24, 16), 64, "densenet121-a639ec97", 7_978_856, 2.834),
    "densenet169": (32, (6, 12, 32, 32), 64, "densenet169-b2777c0a", 14_149_480, 3.360),
    "densenet201": (32, (6, 12, 48, 32), 64, "densenet201-c1103571", 20_013_928, 4.291),
    "densenet161": (48, (6, 12, 36, 24), 96, "densenet161-8d451a50", 28_681_000, 7.728),
    "densenet264": (32, (6, 12, 64, 48), 64, None, None, None),
}

for _name, (_k, _blocks, _stem_chs, _weights, _params, _gmacs) in _IMAGENET.items():
    _cfg = DenseNetConfig(growth_rate=_k, block_config=_blocks, stem_chs=_stem_chs)
    _label = _name.removeprefix("densenet")
    _published = ({"source": "torchvision", "input": 224, "params": _params, "gmacs": _gmacs},) if _params else ()
    _register(
        _name,
        _cfg,
        f"DenseNet-{_label} (k={_k}), torchvision's layout",
        pretrained_url=TORCHVISION_URL.format(_weights) if _weights else None,
        published=_published,
    )
    if _name != "densenet161":
        _register(
            f"csp{_name}",
            _cfg.replace(partial_ratio=0.5),
            f"CSPDenseNet-{_label}: DenseNet-{_label} with cross stage partial stages (gamma 0.5, fusion csp)",
        )

# DenseNet-BC (k=12) for ~32x32 images and their CSP twins: depth 100 (three stages of 16 layers,
# the paper's CIFAR model) and depth 40 (6 layers a stage: what the embedded digits need on a CPU).
for _depth, _layers in ((100, 16), (40, 6)):
    _bc = DenseNetConfig(growth_rate=12, block_config=(_layers,) * 3, stem_chs=24, small_input=True)
    _register(f"densenet_bc{_depth}", _bc, f"DenseNet-BC-{_depth} (k=12) for ~32x32 inputs", input_size=(3, 32, 32))
    _register(
        f"cspdensenet_bc{_depth}",
        _bc.replace(partial_ratio=0.5),
        f"CSPDenseNet-BC-{_depth} (k=12, gamma 0.5) for ~32x32 inputs",
        input_size=(3, 32, 32),
    )

# DenseNet-201-Elastic as allenai/elastic's PyTorch code builds it: k=32, blocks 10/20/40/30, every
# dense layer of stages 0-2 an ELASTIC layer (2x2 average pool, bilinear upsampling); the last stage's
# layers do not pool (its 7x7 map at 224), which makes them plain dense layers: built as such.
# The paper's figures are ELASTIC's own count (its counter adds BN, ReLU and pool elements to the
# multiply-adds; the CSPNet table doubles it); see docs/cspdensenet.md.
DENSENET201_ELASTIC = DenseNetConfig(growth_rate=32, block_config=(10, 20, 40, 30), elastic=(True, True, True, False))
_register(
    "densenet201_elastic",
    DENSENET201_ELASTIC,
    "DenseNet-201-Elastic (k=32, blocks 10/20/40/30), allenai/elastic's layout",
    published=({"source": "CSPNet paper (ELASTIC's count)", "input": 224, "params": 19_480_000, "elastic_bflops": 8.77},),
)
_register(
    "cspdensenet201_elastic",
    DENSENET201_ELASTIC.replace(partial_ratio=0.5),
    "CSPDenseNet-201-Elastic: DenseNet-201-Elastic with cross stage partial stages (gamma 0.5, fusion csp)",
    published=({"source": "CSPNet paper (layout unpublished)", "input": 224, "params": 20_170_000, "elastic_bflops": 7.13},),
)
