"""DeepLabv3 semantic-segmentation head (ASPP + 1x1 classifier), exact to the official apple/ml-cvnets head.

Paper: Rethinking Atrous Convolution for Semantic Image Segmentation (DeepLabv3, arXiv:1706.05587).

Submodule names mirror the official keys after ``seg_head.`` (``aspp.aspp_layer.convs.{0..3}``,
``aspp.aspp_layer.convs.4.aspp_pool.conv_1x1``, ``aspp.aspp_layer.project``, ``classifier``), so the mapping from
an official checkpoint is a readable table (:meth:`DeepLabV3Head.cvnets_key`). This file is an independent
implementation written from the architecture description.

The official configurations are reached by arguments:

=================================== ============================================================================
official model                      visionkit
=================================== ============================================================================
v1 (XXS/XS/S), VOC, OS16            ``MobileViT(mode, output_stride=16, expand_output=False)`` +
                                    ``DeepLabV3Head(C5, 21)`` (ASPP 256, rates 6/12/18);
                                    full-size logits: ``scale_factor=16, align_corners=False``
v2 / v3-on-v2, VOC, OS16            ``MobileViTv2(width, output_stride=16)`` + ``DeepLabV3Head(C5, 21,
                                    aspp_channels=512, classifier_dropout=0.0)`` (cvnets v0.2 has no dropout
                                    before the classifier); full size: ``scale_factor=16, align_corners=True``
v2, ADE20K, OS8                     ``MobileViTv2(width, output_stride=8)`` + ``DeepLabV3Head(C5, 151,
                                    aspp_channels=512, atrous_rates=(12, 24, 36), classifier_dropout=0.0)``;
                                    full size: ``scale_factor=8, align_corners=True``
=================================== ============================================================================
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import (
    check_image,
    check_positive_finite,
    check_positive_int,
    check_probability,
    check_same_place,
    check_type,
)
from .layers import ConvLayer, batchnorm_statistics_restored_on_error, is_recording

__all__ = ["ASPP", "ASPPPooling", "DeepLabV3Head", "SegmentationModel"]


def _check_atrous_rates(atrous_rates: Sequence[int]) -> None:
    if isinstance(atrous_rates, (str, bytes)) or not isinstance(atrous_rates, Sequence) or len(atrous_rates) != 3:
        raise ValueCheckError(
            f"atrous_rates must be a sequence of three ints such as (6, 12, 18), got {atrous_rates!r}",
            actual_value=atrous_rates,
        )
    for rate in atrous_rates:
        check_positive_int("atrous_rates[...]", rate)


def _check_size_pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    if not isinstance(value, bool) and hasattr(type(value), "__index__"):  # int, numpy integer
        size = check_positive_int(name, value)
        return size, size
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeCheckError(
            f"{name} must be an int or a pair (H, W) of ints, got {type(value).__name__} ({value!r})",
            actual_type=type(value),
        )
    if len(value) != 2:
        raise ValueCheckError(f"{name} must be an int or a pair (H, W) of ints, got {value!r}", actual_value=value)
    height, width = (check_positive_int(f"{name}[...]", item) for item in value)
    return height, width


class ASPPPooling(nn.Module):
    """Image-pooling branch of ASPP: global average pool, 1x1 conv + BN + ReLU, broadcast to the input size.

    The official branch upsamples its 1x1 map bilinearly; from a single pixel that is a constant, so it is
    broadcast here (same values, no interpolation kernel in exported graphs).

    Args:
        in_channels: input channels :math:`C`.
        out_channels: output channels :math:`A`.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, A, H, W)`

    Raises:
        TypeError: a channel count is not an int.
        ValueError: a channel count is not positive.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.aspp_pool = nn.Sequential(
            OrderedDict(
                global_pool=nn.AdaptiveAvgPool2d(1),
                conv_1x1=ConvLayer(in_channels, out_channels, 1, act_layer=nn.ReLU),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.aspp_pool(x)
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, concatenation, 1x1 projection, dropout.

    ``convs.0`` is a 1x1 conv, ``convs.1..3`` are 3x3 convs with dilation (and padding) equal to each atrous
    rate, ``convs.4`` is :class:`ASPPPooling`. Every conv has no bias and is followed by BN + ReLU.

    Args:
        in_channels: input channels :math:`C`.
        out_channels: branch and output channels :math:`A`.
        atrous_rates: the three dilation rates.
        dropout: dropout probability after the projection.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, A, H, W)`
    """

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        _check_atrous_rates(atrous_rates)
        check_probability("dropout", dropout)
        branches: list[nn.Module] = [ConvLayer(in_channels, out_channels, 1, act_layer=nn.ReLU)]
        branches += [
            ConvLayer(in_channels, out_channels, 3, dilation=rate, act_layer=nn.ReLU) for rate in atrous_rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = ConvLayer(len(branches) * out_channels, out_channels, 1, act_layer=nn.ReLU)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and not is_recording() and self._pooling_normalises_per_batch():
            # checked first: the pooling branch runs last and would fail after the others updated their statistics
            raise ValueCheckError(
                "in training mode ASPP needs a batch of at least 2: its image-pooling branch normalises a 1x1 map, "
                "where BatchNorm sees a single value per channel; got a batch of 1 (or call .eval())",
                actual_value=tuple(x.shape),
            )
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.convs], dim=1)))

    def _pooling_normalises_per_batch(self) -> bool:
        """Whether a BatchNorm of the image-pooling branch is in training mode (frozen norms, in eval, are fine)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.convs[-1].modules())


class DeepLabV3Head(nn.Module):
    """DeepLabv3 head: ASPP, dropout and a 1x1 classifier; logits at the feature stride by default.

    Composes after a backbone built with ``output_stride=16`` (or 8) and ``expand_output=False``, since the official
    head reads the ``layer_5`` output. All head activations are ReLU.

    The head only sees the feature map, not the image. To get logits at the input size either

    * pass ``scale_factor`` equal to the backbone's output stride (what the official models do: v0.1 with
      ``align_corners=False``, v0.2 and later with ``align_corners=True``; exact when the input size divides by
      the stride), or
    * pass a fixed ``output_size``, or
    * wrap backbone and head in :class:`SegmentationModel`, which resizes to each input's own size.

    Args:
        in_channels: channels :math:`C` of the feature map (the backbone's ``out_channels``).
        num_classes: number of classes :math:`K` (21 for PASCAL VOC, 151 for ADE20K).
        aspp_channels: ASPP branch width :math:`A` (256 official v1, 512 official v2 / v3-on-v2).
        atrous_rates: the three atrous rates ((6, 12, 18) at OS16, (12, 24, 36) at OS8).
        dropout: dropout after the ASPP projection.
        classifier_dropout: ``Dropout2d`` probability before the classifier: 0.1 in the official v1 and v3-on-v1
            heads (cvnets v0.1); the v2 and v3-on-v2 heads (cvnets v0.2) have none, so pass 0.0 to train those
            recipes. Inference does not depend on it.
        output_size: resize the logits to this fixed :math:`(H_o, W_o)`.
        scale_factor: upsample the logits by this factor (e.g. 16).
        align_corners: ``align_corners`` of the bilinear resize (official v0.1: ``False``, v0.2+: ``True``).

    Shape:
        - Input: :math:`(B, C, H', W')`
        - Output: :math:`(B, K, H', W')`; :math:`(B, K, H_o, W_o)` with ``output_size``; :math:`(B, K, sH', sW')`
          with ``scale_factor`` :math:`s`.

    Raises:
        TypeError: an argument has the wrong type, or the input is not a floating tensor or (outside
            :func:`torch.autocast`) not of the head's dtype.
        ValueError: ``in_channels``, ``num_classes``, ``aspp_channels`` or a rate is not a positive int, there are
            not exactly three rates, a dropout is outside ``[0, 1)``, both ``output_size`` and ``scale_factor``
            are given, ``scale_factor`` is not positive and finite, or the input has the wrong number of channels
            or is on another device than the head.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from visionkit.contrib import DeepLabV3Head, MobileViT
        >>> backbone = MobileViT(mode="xxs", output_stride=16, expand_output=False)
        >>> model = nn.Sequential(backbone, DeepLabV3Head(backbone.out_channels, 21)).eval()
        >>> model(torch.rand(1, 3, 128, 96)).shape
        torch.Size([1, 21, 8, 6])
        >>> full = nn.Sequential(backbone, DeepLabV3Head(80, 21, scale_factor=16)).eval()
        >>> full(torch.rand(1, 3, 128, 96)).argmax(1).shape
        torch.Size([1, 128, 96])
    """

    #: Top-level prefixes of official cvnets checkpoint keys that this head owns (see :meth:`cvnets_key`).
    cvnets_prefixes: tuple[str, ...] = ("seg_head.",)

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 21,
        *,
        aspp_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        classifier_dropout: float = 0.1,
        output_size: Optional[int | Sequence[int]] = None,
        scale_factor: Optional[float] = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("aspp_channels", aspp_channels)
        _check_atrous_rates(atrous_rates)
        check_probability("dropout", dropout)
        check_probability("classifier_dropout", classifier_dropout)
        check_type("align_corners", align_corners, bool)
        if output_size is not None and scale_factor is not None:
            raise ValueCheckError("pass either output_size or scale_factor, not both")
        size = None if output_size is None else _check_size_pair("output_size", output_size)
        if scale_factor is not None:
            check_positive_finite("scale_factor", scale_factor)  # a real number: int, float, numpy scalar

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.output_size = size
        self.scale_factor = None if scale_factor is None else float(scale_factor)
        self.align_corners = align_corners
        self.aspp = nn.Sequential(
            OrderedDict(aspp_layer=ASPP(in_channels, aspp_channels, tuple(atrous_rates), float(dropout)))
        )
        self.classifier_dropout = nn.Dropout2d(classifier_dropout)
        self.classifier = ConvLayer(aspp_channels, num_classes, 1, bias=True, norm=False, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits.

        Args:
            x: feature map :math:`(B, C, H', W')`.

        Returns:
            Logits :math:`(B, K, \\cdot, \\cdot)` (see the class docstring for the size).
        """
        check_image(x, self.in_channels)
        check_same_place(x, next(self.parameters(), None))
        if x.shape[0] == 1 and not is_recording() and self.aspp.aspp_layer._pooling_normalises_per_batch():
            # checked here too, to name the head and what ran before it
            raise ValueCheckError(
                "in training mode DeepLabV3Head needs a batch of at least 2: its image-pooling branch normalises a "
                "1x1 map, where BatchNorm sees a single value per channel; got a batch of 1 (or call .eval()). A "
                "backbone before it in an nn.Sequential has already updated its running statistics with this batch; "
                "SegmentationModel checks before its backbone runs",
                actual_value=tuple(x.shape),
            )
        if self.scale_factor is not None and not is_recording() and min(x.shape[-2:]) * self.scale_factor < 1:
            raise ValueCheckError(
                f"scale_factor={self.scale_factor} would shrink the {tuple(x.shape[-2:])} map to nothing: "
                "the logits need at least one pixel on each side",
                actual_value=tuple(x.shape),
            )
        logits = self.classifier(self.classifier_dropout(self.aspp(x)))
        if self.output_size is not None:
            return F.interpolate(logits, size=self.output_size, mode="bilinear", align_corners=self.align_corners)
        if self.scale_factor is not None:
            return F.interpolate(
                logits, scale_factor=self.scale_factor, mode="bilinear", align_corners=self.align_corners
            )
        return logits

    def cvnets_key(self, key: str) -> Optional[str]:
        """Map an official cvnets checkpoint key to this head's state-dict key.

        ============================================== ==========================
        official                                       this head
        ============================================== ==========================
        ``seg_head.aspp.*``                            ``aspp.*``
        ``seg_head.classifier.classifier.block.*``     ``classifier.block.*`` (v0.1)
        ``seg_head.classifier.block.*``                ``classifier.block.*`` (v0.2+)
        ``seg_head.aux_head.*``                        ``None``: the training-only auxiliary head is dropped
        ============================================== ==========================

        Args:
            key: a full official key starting with ``seg_head.``.

        Returns:
            The key relative to this head, or ``None`` when the head does not take it.

        Example:
            >>> head = DeepLabV3Head(80, 21)
            >>> head.cvnets_key("seg_head.classifier.classifier.block.conv.bias")
            'classifier.block.conv.bias'
            >>> head.cvnets_key("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight")
            'aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight'
            >>> head.cvnets_key("seg_head.aux_head.0.block.conv.weight") is None
            True
        """
        for official, ours in (
            ("seg_head.classifier.classifier.", "classifier."),
            ("seg_head.classifier.", "classifier."),
            ("seg_head.aspp.", "aspp."),
        ):
            if key.startswith(official):
                return ours + key[len(official) :]
        return None

    def cvnets_export_key(self, key: str, family: str) -> str:
        """Official key of this head's state-dict key ``key`` (used when saving in the official layout).

        Backbones with the v1 block (v1, v3-XXS/XS/S, built on cvnets v0.1) name the classifier
        ``seg_head.classifier.classifier.*``; those with the v2 block (v2, v3-0.5/0.75/1.0) ``seg_head.classifier.*``.
        The v0.2 zoo's "DeepLabv3 MobileViTv1" (output stride 8, ASPP 512) names it ``seg_head.classifier.*``
        although its backbone is v1: such a file loads, and saving writes the v0.1 name.

        Args:
            key: a key of this head's state dict, e.g. ``"classifier.block.conv.weight"``.
            family: ``"v1"`` or ``"v2"``, the backbone's block family.

        Example:
            >>> DeepLabV3Head(80, 21).cvnets_export_key("classifier.block.conv.bias", "v1")
            'seg_head.classifier.classifier.block.conv.bias'
        """
        if key.startswith("classifier."):
            return ("seg_head.classifier." if family == "v1" else "seg_head.") + key
        return "seg_head." + key


class SegmentationModel(nn.Module):
    """Backbone + segmentation head returning logits at each input's own size (bilinear resize).

    Use it when inputs vary in size or do not divide by the output stride; the head's own ``scale_factor`` then
    cannot hit the input size.

    Args:
        backbone: a module mapping images :math:`(B, 3, H, W)` to a feature map.
        head: a module mapping that feature map to logits :math:`(B, K, H', W')`.
        align_corners: ``align_corners`` of the resize (official v0.1: ``False``, v0.2+: ``True``).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, K, H, W)`

    Raises:
        TypeError: ``backbone`` or ``head`` is not an ``nn.Module`` or ``align_corners`` is not a bool.
        ValueError: the backbone's ``out_channels`` differs from the head's ``in_channels`` (where both have one).

    Example:
        >>> import torch
        >>> from visionkit.contrib import DeepLabV3Head, MobileViTv2, SegmentationModel
        >>> backbone = MobileViTv2(0.5, output_stride=16)
        >>> head = DeepLabV3Head(backbone.out_channels, 21, aspp_channels=512)
        >>> model = SegmentationModel(backbone, head, align_corners=True).eval()
        >>> model(torch.rand(1, 3, 100, 75)).shape
        torch.Size([1, 21, 100, 75])
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, align_corners: bool = False) -> None:
        super().__init__()
        check_type("backbone", backbone, nn.Module)
        check_type("head", head, nn.Module)
        check_type("align_corners", align_corners, bool)
        produced, taken = getattr(backbone, "out_channels", None), getattr(head, "in_channels", None)
        if isinstance(produced, int) and isinstance(taken, int) and produced != taken:
            raise ValueCheckError(
                f"the backbone's feature map has {produced} channels but the head takes {taken}: build the head "
                f"with in_channels=backbone.out_channels ({produced}); a DeepLabV3 head reads a backbone built with "
                "expand_output=False",
                actual_value=(produced, taken),
            )
        self.backbone = backbone
        self.head = head
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with batchnorm_statistics_restored_on_error(self, x):  # the head's batch check comes after the backbone
            logits = self.head(self.backbone(x))
        if logits.shape[-2:] == x.shape[-2:]:
            return logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
