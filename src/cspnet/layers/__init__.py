"""Building blocks shared by every model family."""

from cspnet.layers.act import ACTIVATION_NAMES, make_act
from cspnet.layers.cross_stage import (
    FUSIONS,
    TRANSITION_POOLS,
    CrossStagePartial,
    Fusion,
    StagePlan,
    plan_stage,
    split_channels,
    transition_pool_slots,
)
from cspnet.layers.dense import DenseBlock, DenseLayer
from cspnet.layers.drop import DropPath, drop_path_rates
from cspnet.layers.elastic import (
    ELASTIC_POOLS,
    ELASTIC_UPSAMPLES,
    ElasticBlock,
    ElasticDenseLayer,
    HalfResolution,
)
from cspnet.layers.norm import BatchNormAct2d, ConvNormAct, NormActConv
from cspnet.layers.residual import SHORTCUTS, BottleneckBlock, DarkBlock, darknet_shortcut

__all__ = [
    "ACTIVATION_NAMES",
    "ELASTIC_POOLS",
    "ELASTIC_UPSAMPLES",
    "FUSIONS",
    "SHORTCUTS",
    "TRANSITION_POOLS",
    "BatchNormAct2d",
    "BottleneckBlock",
    "ConvNormAct",
    "CrossStagePartial",
    "DenseBlock",
    "DarkBlock",
    "DenseLayer",
    "DropPath",
    "ElasticBlock",
    "ElasticDenseLayer",
    "Fusion",
    "HalfResolution",
    "NormActConv",
    "StagePlan",
    "darknet_shortcut",
    "drop_path_rates",
    "make_act",
    "plan_stage",
    "split_channels",
    "transition_pool_slots",
]
