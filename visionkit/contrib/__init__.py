"""visionkit.contrib: headless MobileViT backbones (v1, v2, v3) and task heads.

Stability: *contrib* — the public names below are tested and documented, but may still change between minor
releases while the API settles.
"""

from .backbone import FeatureInfo, MobileViT, MobileViTBackbone, MobileViTv2, MobileViTv3
from .configs import BackboneConfig
from .deploy import fold_conv_batchnorm, fuse_batchnorm
from .export import export_onnx, export_program
from .heads import ClassificationHead

__all__ = [
    "BackboneConfig",
    "ClassificationHead",
    "FeatureInfo",
    "MobileViT",
    "MobileViTBackbone",
    "MobileViTv2",
    "MobileViTv3",
    "export_onnx",
    "export_program",
    "fold_conv_batchnorm",
    "fuse_batchnorm",
]
