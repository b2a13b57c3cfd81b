"""The registered detectors: the paper's cfg layouts, the EFM detectors and their FPN baselines.

Cost figures in ``published`` are darknet's printouts of the official cfgs (conv layers only,
2 x MACs), which ``tests/test_detection_costs.py`` reproduces exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cspnet.models.detectors.config import YOLOV3_ANCHORS, DetectorConfig
from cspnet.models.detectors.model import build_detector
from cspnet.models.registry import ModelEntry, register_model


def cfg_figures(cfg: str, side: int, bflops: float, **extra: Any) -> dict[str, Any]:
    """A darknet cfg's printed BFLOPs at ``side`` x ``side``."""
    return {"source": f"darknet {cfg}", "input": side, "bflops": bflops, **extra}


def register_detector(name: str, cfg: DetectorConfig, description: str, side: int, **kwargs: Any) -> ModelEntry:
    return register_model(
        ModelEntry(name, build_detector, cfg, description, input_size=(3, side, side), num_classes=80, task="detection", **kwargs)
    )


PANET_SPP = DetectorConfig(neck="panet", spp=True, neck_widths=(128, 256, 512))

register_detector(
    "cspresnext50_panet_spp",
    replace(PANET_SPP, backbone="cspresnext50_paper"),
    "CSPResNeXt50-PANet-SPP exactly as csresnext50-panet-spp.cfg (the paper's GPU detector, Table 4)",
    512,
    published=(
        cfg_figures("csresnext50-panet-spp.cfg", 416, 47.063),
        cfg_figures("csresnext50-panet-spp.cfg", 512, 71.291, coco_ap=38.0, coco_ap50=60.0),
        cfg_figures("csresnext50-panet-spp.cfg", 608, 100.53),
    ),
)
register_detector(
    "cspdarknet53_panet_spp",
    replace(PANET_SPP, backbone="cspdarknet53_paper"),
    "CSPDarknet53-PANet-SPP exactly as csdarknet53-panet-spp.cfg",
    512,
    published=(cfg_figures("csdarknet53-panet-spp.cfg", 512, 91.05, coco_ap=38.7, coco_ap50=61.3),),
)
register_detector(
    "cspresnet50_panet_spp",
    replace(PANET_SPP, backbone="cspresnet50_paper"),
    "CSPResNet50-PANet-SPP exactly as csresnet50-panet-spp.cfg",
    512,
    published=(cfg_figures("csresnet50-panet-spp.cfg", 512, 74.65, coco_ap=38.0, coco_ap50=60.5),),
)
register_detector(
    "darknet53_fpn_spp",
    DetectorConfig(backbone="darknet53_paper", neck="fpn", spp=True),
    "YOLOv3-SPP exactly as yolov3-spp.cfg (Darknet-53, FPN, SPP): the baseline of the PANet-SPP detectors",
    608,
    published=(cfg_figures("yolov3-spp.cfg", 608, 141.45),),
)

# EFM detectors (no cfg is public; widths and resampling are this library's choice, see
# docs/detection-models.md) and the same backbones with YOLOv3's FPN for comparison.
# Widths and stack depth chosen so that EFM on CSPPeleeNet at 416 costs about Table 2's budget
# (4.69 BFLOPs here; the paper's EFM row 4.868, GFM 4.605, PRN-3l 4.586).
PELEE = DetectorConfig(backbone="csppeleenet", neck_widths=(32, 64, 128), stack_convs=3, spp=False)
register_detector(
    "csppeleenet_efm",
    replace(PELEE, neck="efm"),
    "CSPPeleeNet-EFM (paper Fig. 6c, Table 2): Maxout-compressed exact fusion; sam=True for EFM(SAM)",
    416,
    published=({"source": "paper Table 2 EFM row (layout unpublished; widths chosen to its budget)", "input": 416, "bflops": 4.868, "coco_ap": 26.4, "coco_ap50": 48.6},),
)
register_detector(
    "csppeleenet_fpn",
    replace(PELEE, neck="fpn"),
    "CSPPeleeNet with YOLOv3's FPN neck (the EFM detector's baseline)",
    416,
)
DENSE = DetectorConfig(backbone="cspdensenet121", neck_widths=(128, 256, 512), spp=False)
register_detector(
    "cspdensenet121_efm",
    replace(DENSE, neck="efm"),
    "CSPDenseNet-121 with the exact fusion model (EFM, Maxout)",
    416,
)
register_detector(
    "cspdensenet121_fpn",
    replace(DENSE, neck="fpn"),
    "CSPDenseNet-121 with YOLOv3's FPN neck (the EFM detector's baseline)",
    416,
)
SMALL_ANCHORS = tuple((w / 4, h / 4) for w, h in YOLOV3_ANCHORS)
register_detector(
    "cspdensenet_bc40_efm",
    DetectorConfig(
        backbone="cspdensenet_bc40",
        backbone_overrides=(("small_input", False),),
        neck="efm",
        neck_widths=(32, 64, 128),
        stack_convs=3,
        spp=False,
        anchors=SMALL_ANCHORS,
    ),
    "small CSPDenseNet-BC-40 EFM detector for 64-128 px inputs (strides 4, 8, 16; YOLOv3 anchors / 4)",
    128,
)
