"""CSPDarknet-53 and Darknet-53 (registrations only).

* ``cspdarknet53`` / ``darknet53``: timm's layout (LeakyReLU 0.01); load timm's checkpoints unchanged.
* ``cspdarknet53_paper`` / ``darknet53_paper``: the official darknet cfgs (``csdarknet53.cfg``,
  ``darknet53.cfg``), LeakyReLU 0.1; same topology as timm's. Load darknet ``.weights``.
* ``cspdarknet53_elastic_paper``: exactly ``csdarknet53-elastic.cfg`` (ELASTIC blocks). Loads darknet ``.weights``.
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

CSPDARKNET53 = StageNetConfig(
    act="leaky_relu",
    stem="darknet",
    stem_chs=32,
    out_chs=(64, 128, 256, 512, 1024),
    depths=(1, 2, 8, 8, 4),
    strides=(2, 2, 2, 2, 2),
    down_growth=True,
    expand_ratio=(2.0, 1.0, 1.0, 1.0, 1.0),
    partial_ratio=(0.5,) * 5,
    bottle_ratio=(0.5, 1.0, 1.0, 1.0, 1.0),
    split_linear=(False,) * 5,
    block="dark",
)  # blocks as wide as the block path (block_ratio=None): 64, 64, 128, 256, 512 at gamma 0.5
DARKNET53 = CSPDARKNET53.replace(partial_ratio=0.0, bottle_ratio=0.5)
# csdarknet53-elastic.cfg: ELASTIC blocks whose halves have no bottleneck (1x1 and 3x3 at half width).
CSPDARKNET53_ELASTIC_PAPER = CSPDARKNET53.replace(act="leaky", shortcut="darknet", bottle_ratio=1.0, elastic=True)

register_stagenet(
    "cspdarknet53",
    CSPDARKNET53,
    "CSPDarknet-53, timm's layout (LeakyReLU 0.01)",
    pretrained_url=TIMM_URL.format("cspdarknet53.ra_in1k"),
    published=(timm_figures(27_642_184),),
)
register_stagenet(
    "darknet53",
    DARKNET53,
    "Darknet-53, timm's layout (LeakyReLU 0.01)",
    pretrained_url=TIMM_URL.format("darknet53.c2ns_in1k"),
    published=(timm_figures(41_609_928),),
)
register_stagenet(
    "cspdarknet53_paper",
    CSPDARKNET53.replace(act="leaky", shortcut="darknet"),
    "CSPDarknet-53 exactly as the official darknet cfg (csdarknet53.cfg, LeakyReLU 0.1)",
    published=(readme_figures(27.61, 13.07, 77.2, 93.6),),
)
register_stagenet(
    "cspdarknet53_elastic_paper",
    CSPDARKNET53_ELASTIC_PAPER,
    "CSPDarknet-53-Elastic exactly as the official darknet cfg (csdarknet53-elastic.cfg)",
    published=(cfg_figures("csdarknet53-elastic.cfg", 19_045_216, 7.741), readme_bflops(7.74, 76.1, 93.3)),
)
register_stagenet(
    "darknet53_paper",
    DARKNET53.replace(act="leaky", shortcut="darknet"),
    "Darknet-53 as darknet's darknet53.cfg (LeakyReLU 0.1; CSPDarknet-53's baseline)",
    published=(readme_figures(41.57, 18.57, 77.2, 93.8),),
)
