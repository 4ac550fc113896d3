"""visionkit.contrib: headless MobileViT backbones (v1, v2, v3) and task heads.

Stability: *contrib* — the public names below are tested and documented, but may still change between minor
releases while the API settles.
"""

from .anchors import SSD_ASPECT_RATIOS, SSDAnchorGenerator
from .backbone import FeatureInfo, MobileViT, MobileViTBackbone, MobileViTv2, MobileViTv3
from .boxes import SSDLitePostProcess, batched_nms, decode_ssd_boxes
from .checkpoint import (
    LoadReport,
    convert_state_dict,
    detect_source,
    flip_stem_channels,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .compiled import CompiledInference, compile_for_inference
from .configs import BackboneConfig
from .deploy import fold_conv_batchnorm, fuse_batchnorm
from .detection import SSD_PROJ_CHANNELS, SeparableConv, SSDLite, SSDLiteHead
from .export import export_aoti_package, export_onnx, export_program, load_aoti_package
from .features import FeatureExtractor
from .heads import ClassificationHead
from .segmentation import ASPP, ASPPPooling, DeepLabV3Head, SegmentationModel
from .weights import WeightsEntry, get_weights, list_weights, load_weights

__all__ = [
    "ASPP",
    "ASPPPooling",
    "BackboneConfig",
    "batched_nms",
    "ClassificationHead",
    "compile_for_inference",
    "CompiledInference",
    "convert_state_dict",
    "decode_ssd_boxes",
    "DeepLabV3Head",
    "detect_source",
    "export_aoti_package",
    "export_onnx",
    "export_program",
    "FeatureExtractor",
    "FeatureInfo",
    "flip_stem_channels",
    "fold_conv_batchnorm",
    "fuse_batchnorm",
    "get_weights",
    "list_weights",
    "load_aoti_package",
    "load_checkpoint",
    "load_weights",
    "LoadReport",
    "MobileViT",
    "MobileViTBackbone",
    "MobileViTv2",
    "MobileViTv3",
    "read_checkpoint",
    "save_checkpoint",
    "SegmentationModel",
    "SeparableConv",
    "SSD_ASPECT_RATIOS",
    "SSD_PROJ_CHANNELS",
    "SSDAnchorGenerator",
    "SSDLite",
    "SSDLiteHead",
    "SSDLitePostProcess",
    "WeightsEntry",
]
