"""PeleeNet and CSPPeleeNet: one config, one builder; PeleeNet is the ``partial_ratio=0`` case.

PeleeNet (Wang, Li & Ling, "Pelee: A Real-Time Object Detection System on Mobile Devices",
NeurIPS 2018, arXiv:1804.06882, Table 1 and §2.1) at 224x224:

* stem block: 3x3/2 conv to 32, then two ways down by 2 (1x1 16 -> 3x3/2 32; 2x2/2 max-pool),
  concatenated (64) and fused by a 1x1 to 32: 56x56x32;
* 4 stages of two-way dense layers (:class:`~cspnet.layers.pelee.TwoWayDenseLayer`, growth
  k = 32; 3, 4, 8, 6 layers); bottleneck width b = k/2, k, 2k, 2k (``bottleneck_width`` =
  1, 2, 4, 4 in multiples of k/2, Pelee's own parameter). This reading of the Pelee author's
  "{k/2, k/2} in stage 1, {k, k/2} in stage 2, {2k, k/2} in stages 3 and 4" ({b, channels per
  branch}) gives exactly the published 2.79M / 1.017 BFLOPs;
* transition: 1x1 conv with no compression (128, 256, 512, 704) + 2x2/2 average pool, none after
  stage 4; global pool; FC 1000. Post-activation conv-BN-ReLU everywhere, no final norm.

Layout in this library (every stage opens with its own downsampling): the stem is Pelee's 3x3/2
conv alone, so **feature level 0 is at stride 2** (32 channels) as in every other family, and
the rest of Pelee's stem block (:class:`~cspnet.layers.pelee.PeleeStemDown`) opens stage 0, the
way DenseNet's stem max-pool does. A transition's average pool opens the next stage. Levels:
stem 32 @2, stages 128 @4, 256 @8, 512 @16, 704 @32.

CSPPeleeNet (CSPNet paper Fig. 3b, README 2.83M / 0.888 BFLOPs / 70.9 top-1) is the CSP stage of
:mod:`cspnet.models.dense_stage` (shared with CSPDenseNet) around every Pelee dense block, with
``partial_ratio`` (gamma) and ``fusion`` as in CSPDenseNet. Its registered defaults are the
layout whose cost comes closest to the published one among those the open fields span:

* ``partial_ratio=0.5``, ``fusion="csp"`` (the paper);
* T keeps the dense path's width (``transition_b_ratio=None`` fills the stage width, which
  without compression is the same thing), U to PeleeNet's width (128, 256, 512, 704);
* ``transition_pool="before"``: T at stage resolution, concat, 2x2 pool, U at the pooled
  resolution. Pooling after U (PeleeNet's order) costs more than PeleeNet itself at gamma 0.5
  (1.123 BFLOPs, +11 %): the paper's -13 % needs U on the pooled map;
* ``last_stage_transition=True``: stage 4 keeps a T/U pair as PeleeNet's stage 4 keeps its
  transition conv; concatenation alone there is cheaper than published (0.824 BFLOPs, 2.15M)
  because PeleeNet's 704x704 last transition (0.50M weights) disappears.

Over the 5 ablation points the paper's text pins down (Table 1 / Figure 4: csp and fusion_last at
gamma 0.25 and 0.5, fusion_first at 0.5) this layout also fits best of the 16 that
``transition_pool`` x ``last_stage_transition`` x ``transition_b_ratio`` (None, 0.25, 0.5, 0.75) span.
``csppeleenet`` measures 2.84M conv weights / 0.892 BFLOPs against the published 2.83M / 0.888 (the
CSPNet README, github.com/WongKinYiu/CrossStagePartialNetworks); the exact published layout is
unknown (no cfg was released).

Measured at 224 (``cspnet.profiling.profile``; conv weights and BFLOPs count the classifier, as
darknet does), against the CSPNet paper's Figure 4 / Table 1 (arXiv:1911.11929; percentages
against PeleeNet's 1.017; blank: not published)::

    model / gamma, fusion      params   conv weights  BFLOPs         paper BFLOPs
    peleenet                   2.802M   2.792M        1.016          1.017
    0.25 csp                   3.229M   3.216M        1.012 (-0.4%)  0.986 (-3%)
    0.25 fusion_first          2.629M   2.619M        0.731 (-28%)
    0.25 fusion_last           2.386M   2.376M        0.886 (-13%)   0.905 (-11%)
    0.5  csp (csppeleenet)     2.856M   2.843M        0.892 (-12%)   0.888 (-13%), 2.83M
    0.5  fusion_first          2.457M   2.446M        0.678 (-33%)   0.753 (-26%)
    0.5  fusion_last           2.014M   2.004M        0.767 (-25%)   0.803 (-21%)
    0.75 csp                   2.527M   2.514M        0.784 (-23%)   "reduces more"
    0.75 fusion_first          2.284M   2.273M        0.625 (-38%)
    0.75 fusion_last           1.684M   1.675M        0.658 (-35%)

The orderings the paper reports hold (a larger gamma is cheaper for every fusion; at gamma 0.5
fusion_first < fusion_last < csp), but fusion_first and fusion_last save more here than
published, and csp at gamma 0.25 saves less: no single layout of the open fields fits all five
published points.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cspnet.layers import ConvNormAct, DenseBlock, drop_path_rates
from cspnet.layers.pelee import PeleeStemDown, TwoWayDenseLayer
from cspnet.models.backbone import Backbone, FeatureInfo, conv_stem, init_weights
from cspnet.models.config import ModelConfig, bounded, positive_ints
from cspnet.models.dense_stage import CSPStageFields, build_csp_dense_stages
from cspnet.models.registry import ModelEntry, register_model


@dataclass(frozen=True)
class PeleeNetConfig(CSPStageFields, ModelConfig):
    """PeleeNet / CSPPeleeNet hyper-parameters (defaults: PeleeNet); CSP fields from :class:`CSPStageFields`.

    >>> PeleeNetConfig(growth_rate=31)
    Traceback (most recent call last):
    ...
    ValueError: growth_rate=31 is invalid: expected an even number (each of the two ways adds k/2)
    """

    growth_rate: int = bounded(32, 2, integer=True, doc="k: channels each two-way dense layer adds (even)")
    block_config: tuple[int, ...] = positive_ints((3, 4, 8, 6), doc="dense layers per stage")
    bottleneck_width: tuple[int, ...] = positive_ints(
        (1, 2, 4, 4), doc="per stage: 1x1 bottleneck width of each way, in multiples of k/2"
    )
    stem_chs: int = bounded(32, 2, integer=True, doc="stem output channels (even: the stem's 1x1 halves it)")

    @property
    def depths(self) -> tuple[int, ...]:
        """Dense layers per stage: ``block_config`` (torchvision's name, kept for configs and
        checkpoints that use it) under the name every family is read by (``StageNetConfig.depths``)."""
        return self.block_config

    def check(self) -> None:
        if self.growth_rate % 2:
            raise ValueError(
                f"growth_rate={self.growth_rate} is invalid: expected an even number (each of the two ways adds k/2)"
            )
        if self.stem_chs % 2:
            raise ValueError(f"stem_chs={self.stem_chs} is invalid: expected an even number")
        if len(self.bottleneck_width) != len(self.block_config):
            raise ValueError(
                f"bottleneck_width={self.bottleneck_width!r} is invalid: expected one entry per stage "
                f"({len(self.block_config)}, as block_config={self.block_config!r})"
            )


def build_peleenet(cfg: PeleeNetConfig, num_classes: int = 1000, in_chans: int = 3) -> Backbone:
    """Build a PeleeNet (``partial_ratio == 0``) or CSPPeleeNet from ``cfg``.

    >>> import torch
    >>> model = build_peleenet(PeleeNetConfig(), num_classes=10)
    >>> model(torch.randn(1, 3, 224, 224)).shape, model.feature_info.channels()
    (torch.Size([1, 10]), [32, 128, 256, 512, 704])
    """
    stem = conv_stem(in_chans, cfg.stem_chs, 3, 2, cfg.act)
    feature_info = FeatureInfo([{"num_chs": cfg.stem_chs, "reduction": 2, "module": "stem"}])
    rates = drop_path_rates(cfg.drop_path_rate, cfg.depths)
    k = cfg.growth_rate

    def make_block(i: int, in_chs: int) -> DenseBlock:
        bottleneck = cfg.bottleneck_width[i] * k // 2

        def make_layer(chs: int, rate: float) -> nn.Module:
            return TwoWayDenseLayer(chs, k, bottleneck, cfg.act, rate)

        return DenseBlock(in_chs, cfg.depths[i], k, drop_path_rates=rates[i], make_layer=make_layer)

    def make_transition(in_chs: int, out_chs: int) -> nn.Module:
        return ConvNormAct(in_chs, out_chs, 1, act=cfg.act)

    stages, _ = build_csp_dense_stages(
        cfg,
        len(cfg.depths),
        cfg.stem_chs,
        make_block,
        lambda i: cfg.depths[i] * k,
        lambda i, dense_width: dense_width,  # every stage, the last included, ends in an uncompressed 1x1
        make_transition,
        lambda: nn.AvgPool2d(2, stride=2),
        feature_info,
        first_down=PeleeStemDown(cfg.stem_chs, cfg.act),
    )
    model = Backbone(stem, stages, feature_info, num_classes, cfg.drop_rate)
    init_weights(model)
    return model


def _register(name: str, cfg: PeleeNetConfig, description: str, published: dict) -> None:
    source = {"source": "paper README", "input": 224}
    register_model(ModelEntry(name, build_peleenet, cfg, description, published=({**source, **published},)))


PELEENET = PeleeNetConfig()
CSPPELEENET = PELEENET.replace(partial_ratio=0.5, transition_pool="before", last_stage_transition=True)

_register(
    "peleenet",
    PELEENET,
    "PeleeNet (k=32, 3/4/8/6 two-way dense layers), the CSPNet paper's baseline",
    {"conv_weight_params": 2_790_000, "bflops": 1.017, "top1": 70.7, "top5": 90.0},
)
_register(
    "csppeleenet",
    CSPPELEENET,
    "CSPPeleeNet: PeleeNet with cross stage partial stages (gamma 0.5, fusion csp, U after the pool)",
    {"conv_weight_params": 2_830_000, "bflops": 0.888, "top1": 70.9, "top5": 90.2},
)
