"""visionkit.contrib: headless MobileViT backbones (v1, v2, v3) and task heads.

Stability: *contrib* — the public names below are tested and documented, but may still change between minor
releases while the API settles.
"""

from .backbone import FeatureInfo, MobileViT, MobileViTBackbone, MobileViTv2, MobileViTv3
from .checkpoint import (
    LoadReport,
    convert_state_dict,
    detect_source,
    flip_stem_channels,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .configs import BackboneConfig
from .heads import ClassificationHead
from .weights import WeightsEntry, get_weights, list_weights, load_weights

__all__ = [
    "BackboneConfig",
    "ClassificationHead",
    "FeatureInfo",
    "LoadReport",
    "MobileViT",
    "MobileViTBackbone",
    "MobileViTv2",
    "MobileViTv3",
    "WeightsEntry",
    "convert_state_dict",
    "detect_source",
    "flip_stem_channels",
    "get_weights",
    "list_weights",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint",
    "save_checkpoint",
]
