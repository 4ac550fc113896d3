"""visionkit.contrib: headless MobileViT backbones (v1, v2, v3) and task heads.

Stability: *contrib* — the public names below are tested and documented, but may still change between minor
releases while the API settles.
"""

from .anchors import SSD_ASPECT_RATIOS, SSDAnchorGenerator
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
from .boxes import SSDLitePostProcess, batched_nms, decode_ssd_boxes
from .configs import BackboneConfig
from .detection import SSD_PROJ_CHANNELS, SeparableConv, SSDLite, SSDLiteHead
from .features import FeatureExtractor
from .heads import ClassificationHead
from .weights import WeightsEntry, get_weights, list_weights, load_weights
from .segmentation import ASPP, ASPPPooling, DeepLabV3Head, SegmentationModel

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BackboneConfig",
    "ClassificationHead",
    "DeepLabV3Head",
    "FeatureExtractor",
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
    "SSD_ASPECT_RATIOS",
    "SSD_PROJ_CHANNELS",
    "SSDAnchorGenerator",
    "SSDLite",
    "SSDLiteHead",
    "SSDLitePostProcess",
    "SegmentationModel",
    "SeparableConv",
    "batched_nms",
    "decode_ssd_boxes",
]
