"""CSPResNet-50 / CSPResNeXt-50 and the darknet ResNet-50 / ResNeXt-50 baselines (registrations only).

Two layouts of each CSP model:

* ``cspresnet50`` / ``cspresnext50``: timm's layout (LeakyReLU 0.01, 3x3/2 stem pool, even 50/50
  split, linear split convs); loads timm's published checkpoints unchanged.
* ``*_paper``: exactly the official darknet cfgs (``csresnet50.cfg``, ``csresnext50.cfg``, pjreddie's
  ``resnet50.cfg`` / ``resnext50.cfg``): LeakyReLU 0.1, 2x2/2 stem pool, stage 1 split 128 / 64 with a
  partial-channel shortcut in its first block, split convs linear in stages 2-3 only, and
  parameter-free darknet shortcuts (no projection convs) in the baselines. Loads darknet ``.weights``.
* ``*_elastic_paper``: exactly ``csresnet50-elastic.cfg`` / ``csresnext50-elastic.cfg``: every
  residual block an ELASTIC block (:class:`~cspnet.layers.ElasticBlock`). Loads darknet ``.weights``.
"""

from __future__ import annotations

from cspnet.models.stagenet import (
    TIMM_URL,
    StageNetConfig,
    cfg_figures,
    readme_bflops,
    readme_figures,
    register_stagenet,
    timm_figures,
)

CSPRESNET50 = StageNetConfig(
    act="leaky_relu",
    stem="resnet",
    stem_pool="3x3",
    out_chs=(128, 256, 512, 1024),
    depths=(3, 3, 5, 2),
    strides=(1, 2, 2, 2),
    expand_ratio=(2.0,) * 4,
    partial_ratio=(0.5,) * 4,
    bottle_ratio=(0.5,) * 4,
    split_linear=(True,) * 4,
)  # blocks as wide as the block path (block_ratio=None): out_chs here, at any partial_ratio
CSPRESNEXT50 = CSPRESNET50.replace(out_chs=(256, 512, 1024, 2048), expand_ratio=1.0, bottle_ratio=1.0, groups=32)

# The darknet cfgs: split convs leaky in stages 1 and 4, linear in 2 and 3; stage 1's two split convs
# give a 128-channel bypass and a 64-channel block path (conv_exp 192 wide, gamma 2/3), which the first
# block widens to the stage's block width (block_ratio, stage 1 only) through the partial-channel
# shortcut. The other stages' blocks are as wide as their block path, as in the timm layouts.
_PAPER = {"act": "leaky", "stem_pool": "2x2", "shortcut": "darknet", "split_linear": (False, True, True, False)}
CSPRESNET50_PAPER = CSPRESNET50.replace(
    **_PAPER, expand_ratio=(1.5, 2.0, 2.0, 2.0), partial_ratio=(2 / 3, 0.5, 0.5, 0.5), block_ratio=(1.0, None, None, None)
)
CSPRESNEXT50_PAPER = CSPRESNEXT50.replace(
    **_PAPER, expand_ratio=(0.75, 1.0, 1.0, 1.0), partial_ratio=(2 / 3, 0.5, 0.5, 0.5), block_ratio=(0.5, None, None, None)
)
# The -elastic cfgs: the timm layout's even stage-1 split (block path 128, so no partial shortcut), the
# darknet activations, and ELASTIC blocks whose halves have no bottleneck (1x1, 3x3, 1x1 at half width;
# the ResNeXt's halves g16, the block's 4 / 8 / 16 / 32 channels per group).
CSPRESNET50_ELASTIC_PAPER = CSPRESNET50.replace(**_PAPER, bottle_ratio=1.0, elastic=True)
CSPRESNEXT50_ELASTIC_PAPER = CSPRESNEXT50.replace(**_PAPER, elastic=True)
# pjreddie's baselines: plain stages, the first block's 3x3 strided, parameter-free shortcuts.
RESNET50_PAPER = StageNetConfig(
    act="leaky",
    stem="resnet",
    stem_pool="2x2",
    out_chs=(256, 512, 1024, 2048),
    depths=(3, 4, 6, 3),
    strides=(1, 2, 2, 2),
    down="block",
    partial_ratio=(0.0,) * 4,
    bottle_ratio=(0.25,) * 4,
    block_ratio=(1.0,) * 4,
    shortcut="darknet",
)
RESNEXT50_PAPER = RESNET50_PAPER.replace(bottle_ratio=0.5, groups=32)


register_stagenet(
    "cspresnet50",
    CSPRESNET50,
    "CSPResNet-50, timm's layout (LeakyReLU 0.01, 3x3 stem pool, even split)",
    pretrained_url=TIMM_URL.format("cspresnet50.ra_in1k"),
    published=(timm_figures(21_616_168),),
)
register_stagenet(
    "cspresnext50",
    CSPRESNEXT50,
    "CSPResNeXt-50 (32 groups), timm's layout (LeakyReLU 0.01, 3x3 stem pool, even split)",
    pretrained_url=TIMM_URL.format("cspresnext50.ra_in1k"),
    published=(timm_figures(20_569_896),),
)
register_stagenet(
    "cspresnet50_paper",
    CSPRESNET50_PAPER,
    "CSPResNet-50 exactly as the official darknet cfg (csresnet50.cfg)",
    published=(readme_figures(21.57, 8.97, 76.6, 93.3),),
)
register_stagenet(
    "cspresnext50_paper",
    CSPRESNEXT50_PAPER,
    "CSPResNeXt-50 exactly as the official darknet cfg (csresnext50.cfg)",
    published=(readme_figures(20.50, 7.93, 77.9, 94.0),),
)
register_stagenet(
    "cspresnet50_elastic_paper",
    CSPRESNET50_ELASTIC_PAPER,
    "CSPResNet-50-Elastic exactly as the official darknet cfg (csresnet50-elastic.cfg)",
    published=(cfg_figures("csresnet50-elastic.cfg", 29_795_520, 9.362), readme_bflops(9.36, 76.8, 93.5)),
)
register_stagenet(
    "cspresnext50_elastic_paper",
    CSPRESNEXT50_ELASTIC_PAPER,
    "CSPResNeXt-50-Elastic exactly as the official darknet cfg (csresnext50-elastic.cfg)",
    published=(cfg_figures("csresnext50-elastic.cfg", 16_857_792, 5.447), readme_bflops(5.45, 77.2, 93.8)),
)
register_stagenet(
    "resnet50_paper",
    RESNET50_PAPER,
    "ResNet-50 as darknet's resnet50.cfg: parameter-free shortcuts, 2x2 stem pool (CSPResNet-50's baseline)",
    published=(readme_figures(22.73, 9.74, 75.8, 92.9),),
)
register_stagenet(
    "resnext50_paper",
    RESNEXT50_PAPER,
    "ResNeXt-50 (32x4d) as darknet's resnext50.cfg: parameter-free shortcuts (CSPResNeXt-50's baseline)",
    published=(readme_figures(22.19, 10.11, 77.8, 94.2),),
)
