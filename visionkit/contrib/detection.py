"""SSDLite detection head and detector, exact to the official apple/ml-cvnets SSD on MobileViT.

Paper: SSD: Single Shot MultiBox Detector (arXiv:1512.02325); SSDLite from MobileNetV2 (arXiv:1801.04381).

The head takes the stride-16 and stride-32 backbone maps, adds four extra levels (strides 64, 128, 256 and a
global 1x1 level) and predicts, per anchor, 4 box offsets then :math:`K` class logits (class 0 = background).
Submodule names mirror the official keys (``extra_layers.os_64 ...``, ``ssd_heads.{i}.proj_layer`` and
``ssd_heads.{i}.loc_cls_layer``), so official checkpoints load unchanged. All head activations are ReLU.
This file is an independent implementation written from the architecture description.

From raw outputs to detections: :class:`SSDLite` runs backbone, head, :class:`SSDAnchorGenerator` and
:class:`SSDLitePostProcess`; or, after an ``nn.Sequential(FeatureExtractor(...), SSDLiteHead(...))``, call
:meth:`SSDLiteHead.feature_sizes` and the generator yourself (see :class:`SSDLite`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import check_image, check_positive_int, check_positive_int_or_pair, check_same_place, check_type
from .anchors import SSD_ASPECT_RATIOS, SSDAnchorGenerator
from .boxes import SSDLitePostProcess
from .features import FeatureExtractor
from .layers import ConvLayer, batchnorm_statistics_restored_on_error, is_recording

__all__ = ["SSD_PROJ_CHANNELS", "SSDLite", "SSDLiteHead", "SeparableConv"]

#: Official ``proj_channels``: widths of the six levels (strides 16, 32, 64, 128, 256, global).
SSD_PROJ_CHANNELS: tuple[int, ...] = (512, 256, 256, 128, 128, 64)
#: Official names of the extra levels, after the two backbone levels.
_EXTRA_LEVEL_NAMES = ("os_64", "os_128", "os_256", "os_-1")
_NUM_BACKBONE_LEVELS = 2
_NUM_LEVELS = _NUM_BACKBONE_LEVELS + len(_EXTRA_LEVEL_NAMES)
_BOX_CODE_SIZE = 4


class SeparableConv(nn.Module):
    """Depthwise kxk conv + BN (no activation), then pointwise 1x1 conv with optional bias, BN and ReLU.

    Args:
        in_channels: input channels :math:`C_{in}`.
        out_channels: output channels :math:`C_{out}`.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        bias: bias on the pointwise conv.
        norm: BN after the pointwise conv.
        act: ReLU after the pointwise conv.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, \\lceil H / s \\rceil, \\lceil W / s \\rceil)` for an odd ``kernel_size``
          (padding ``(kernel_size - 1) // 2``).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a channel count, ``kernel_size`` or ``stride`` (an int or a pair) is not positive.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            check_positive_int(name, value)
        check_positive_int_or_pair("stride", stride)  # an int or (sy, sx), as nn.Conv2d takes
        for name, flag in (("bias", bias), ("norm", norm), ("act", act)):
            check_type(name, flag, bool)
        self.dw_conv = ConvLayer(
            in_channels, in_channels, kernel_size, stride=stride, groups=in_channels, act_layer=None
        )
        self.pw_conv = ConvLayer(
            in_channels, out_channels, 1, bias=bias, norm=norm, act_layer=nn.ReLU if act else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_conv(self.dw_conv(x))


class _SSDLevelHead(nn.Module):
    """One level's predictor: optional 1x1 projection, then the loc/cls conv, reshaped to (B, H*W*A, 4 + K)."""

    def __init__(self, in_channels: int, proj_channels: int, num_anchors: int, num_classes: int, kernel_size: int):
        super().__init__()
        self.proj_layer: Optional[ConvLayer] = None
        if proj_channels != in_channels and kernel_size > 1:
            self.proj_layer = ConvLayer(in_channels, proj_channels, 1, act_layer=nn.ReLU)
            in_channels = proj_channels
        out_channels = num_anchors * (_BOX_CODE_SIZE + num_classes)
        self.loc_cls_layer: nn.Module
        if kernel_size > 1:
            self.loc_cls_layer = SeparableConv(in_channels, out_channels, kernel_size, bias=True, norm=False, act=False)
        else:
            self.loc_cls_layer = ConvLayer(in_channels, out_channels, 1, bias=True, norm=False, act_layer=None)
        self.num_anchors = num_anchors
        self.num_outputs = _BOX_CODE_SIZE + num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj_layer is not None:
            x = self.proj_layer(x)
        x = self.loc_cls_layer(x)
        batch, _, height, width = x.shape
        return x.permute(0, 2, 3, 1).reshape(batch, height * width * self.num_anchors, self.num_outputs)


class SSDLiteHead(nn.Module):
    """SSDLite head: extra pyramid levels and separable box/class predictors, as the official MobileViT SSD.

    Levels, in output order: the two input maps (strides 16 and 32), then ``extra_layers.os_64``, ``os_128``,
    ``os_256`` (each a stride-2 :class:`SeparableConv`, BN + ReLU) and ``os_-1`` (global average pool, 1x1 conv,
    ReLU). ``ssd_heads.{i}`` predicts level ``i``; it has a ``proj_layer`` (1x1 conv + BN + ReLU to
    ``proj_channels[i]``) only where the official model has one, i.e. where the input width differs from
    ``proj_channels[i]`` on a 3x3 level.

    Args:
        in_channels: channels of the two input maps (strides 16 and 32), e.g. ``FeatureExtractor.channels``.
        num_classes: classes :math:`K` including the background class 0 (81 for COCO).
        proj_channels: widths of the six levels (official ``(512, 256, 256, 128, 128, 64)``).
        aspect_ratios: per level, the anchor aspect ratios; fixes the anchors per location
            :math:`A_i = 2 + 2 \\cdot` ``len(aspect_ratios[i])`` (official 6, 6, 6, 6, 6, 4). Use the same value
            for :class:`SSDAnchorGenerator`.

    Shape:
        - Input: a list of two maps :math:`(B, C_0, H_0, W_0)` and :math:`(B, C_1, H_1, W_1)`.
        - Output: ``(offsets, logits)``: :math:`(B, N, 4)` box offsets and :math:`(B, N, K)` class logits,
          :math:`N = \\sum_i H_i W_i A_i` over the six levels, ordered by level, then ``y``, ``x``, anchor.

    Raises:
        TypeError: an argument has the wrong type, or the input is not a list/tuple of tensors.
        ValueError: ``in_channels`` does not have two entries, ``num_classes < 2``, ``proj_channels`` or
            ``aspect_ratios`` do not have six entries, or (at forward) the maps' count or channels differ from
            ``in_channels``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from visionkit.contrib import FeatureExtractor, MobileViT, SSDLiteHead
        >>> features = FeatureExtractor(MobileViT(mode="xxs", expand_output=False), indices=(3, 4))
        >>> model = nn.Sequential(features, SSDLiteHead(features.channels, num_classes=81)).eval()
        >>> offsets, logits = model(torch.rand(1, 3, 320, 320))
        >>> offsets.shape, logits.shape
        (torch.Size([1, 3232, 4]), torch.Size([1, 3232, 81]))
    """

    #: Top-level prefixes of official cvnets checkpoint keys that this head owns (see :meth:`cvnets_key`).
    cvnets_prefixes: tuple[str, ...] = ("extra_layers.", "ssd_heads.")

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = 81,
        *,
        proj_channels: Sequence[int] = SSD_PROJ_CHANNELS,
        aspect_ratios: Sequence[Sequence[float]] = SSD_ASPECT_RATIOS,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence):
            raise TypeCheckError(
                f"in_channels must be the channels of the stride-16 and stride-32 maps, e.g. (64, 80), "
                f"got {in_channels!r}",
                actual_type=type(in_channels),
            )
        if len(in_channels) != _NUM_BACKBONE_LEVELS:
            raise ValueCheckError(
                f"SSDLiteHead takes {_NUM_BACKBONE_LEVELS} feature maps (strides 16 and 32, e.g. "
                f"FeatureExtractor(backbone, indices=(3, 4))), but in_channels has {len(in_channels)} entries: "
                f"{tuple(in_channels)!r}",
                actual_value=in_channels,
            )
        for channels in in_channels:
            check_positive_int("in_channels[...]", channels)
        if check_positive_int("num_classes", num_classes) < 2:
            raise ValueCheckError(
                f"num_classes counts the background class 0 and at least one object class, so it must be at least "
                f"2, got {num_classes}",
                actual_value=num_classes,
            )
        if isinstance(proj_channels, (str, bytes)) or not isinstance(proj_channels, Sequence) or (
            len(proj_channels) != _NUM_LEVELS
        ):
            raise ValueCheckError(
                f"proj_channels must have {_NUM_LEVELS} entries (one per level), got {proj_channels!r}",
                actual_value=proj_channels,
            )
        for channels in proj_channels:
            check_positive_int("proj_channels[...]", channels)
        # the generator validates the aspect ratios and gives the anchors per location
        anchors_per_location = SSDAnchorGenerator(aspect_ratios).num_anchors_per_location
        if len(anchors_per_location) != _NUM_LEVELS:
            raise ValueCheckError(
                f"aspect_ratios must have {_NUM_LEVELS} entries (one per level), got {len(anchors_per_location)}",
                actual_value=aspect_ratios,
            )

        self.in_channels: tuple[int, ...] = tuple(in_channels)
        self.num_classes = num_classes
        self.proj_channels: tuple[int, ...] = tuple(proj_channels)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.num_anchors_per_location: tuple[int, ...] = anchors_per_location

        extra: OrderedDict[str, nn.Module] = OrderedDict()
        width = self.in_channels[-1]
        for name, out_width in zip(_EXTRA_LEVEL_NAMES[:-1], self.proj_channels[_NUM_BACKBONE_LEVELS:-1]):
            extra[name] = SeparableConv(width, out_width, 3, stride=2)
            width = out_width
        extra[_EXTRA_LEVEL_NAMES[-1]] = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvLayer(width, self.proj_channels[-1], 1, norm=False, act_layer=nn.ReLU)
        )
        self.extra_layers = nn.ModuleDict(extra)

        level_inputs = self.in_channels + self.proj_channels[_NUM_BACKBONE_LEVELS:]
        self.ssd_heads = nn.ModuleList(
            _SSDLevelHead(
                level_inputs[i],
                self.proj_channels[i],
                anchors_per_location[i],
                num_classes,
                kernel_size=1 if i == _NUM_LEVELS - 1 else 3,
            )
            for i in range(_NUM_LEVELS)
        )

    def pyramid(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return the six level maps the predictors read: the two inputs, then the four extra levels.

        Args:
            features: the stride-16 and stride-32 maps.

        Raises:
            TypeError: ``features`` is not a list or tuple.
            ValueError: the number of maps or their channels differ from :attr:`in_channels`, or their batch sizes
                differ.
        """
        if not isinstance(features, (list, tuple)):
            raise TypeError(
                "SSDLiteHead expects a list of feature maps, e.g. from FeatureExtractor(backbone, indices=(3, 4)); "
                f"got {type(features).__name__}"
            )
        if len(features) != _NUM_BACKBONE_LEVELS:
            raise ValueCheckError(
                f"SSDLiteHead expects {_NUM_BACKBONE_LEVELS} feature maps (strides 16 and 32), got {len(features)}",
                actual_value=len(features),
            )
        weight = next(self.parameters(), None)
        for feature, channels in zip(features, self.in_channels):
            check_image(feature, channels)
            check_same_place(feature, weight)
        if features[0].shape[0] != features[1].shape[0]:
            raise ValueCheckError(
                f"the two feature maps must have the same batch size, got {features[0].shape[0]} and "
                f"{features[1].shape[0]}"
            )
        if features[0].shape[0] == 1 and not is_recording():
            self._check_single_values(features)
        levels = list(features)
        x = levels[-1]
        for layer in self.extra_layers.values():
            x = layer(x)
            levels.append(x)
        return levels

    def _check_single_values(self, features: Sequence[torch.Tensor]) -> None:
        """Refuse a batch of one whose 1x1 levels would reach a training BatchNorm, before any layer runs (it
        would fail only after the layers before it had updated their running statistics)."""
        extra = list(self.extra_layers.values())
        for i, size in enumerate(self.feature_sizes(features)):
            if size != (1, 1):
                continue
            at_level = [self.ssd_heads[i], *([extra[i - _NUM_BACKBONE_LEVELS]] if i >= _NUM_BACKBONE_LEVELS else [])]
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                   for layer in at_level for m in layer.modules()):
                raise ValueCheckError(
                    f"in training mode SSDLiteHead needs a batch of at least 2 for these maps: level {i} of its "
                    f"pyramid is 1x1 for input maps of {tuple(features[0].shape[-2:])} and "
                    f"{tuple(features[1].shape[-2:])}, and BatchNorm sees a single value per channel there; got a "
                    "batch of 1 (use larger images, or call .eval()). A backbone before it in an nn.Sequential has "
                    "already updated its running statistics with this batch; SSDLite puts them back",
                    actual_value=[tuple(f.shape) for f in features],
                )

    def predict(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the six predictors on the :meth:`pyramid` levels and return ``(offsets, logits)``."""
        outputs = torch.cat([head(level) for head, level in zip(self.ssd_heads, levels)], dim=1)
        return outputs[..., :_BOX_CODE_SIZE], outputs[..., _BOX_CODE_SIZE:]

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return raw ``(offsets, logits)`` for the two input maps (see the class docstring)."""
        first = features[0] if isinstance(features, (list, tuple)) and features else None
        with batchnorm_statistics_restored_on_error(self, first):  # type: ignore[arg-type]
            return self.predict(self.pyramid(features))

    @staticmethod
    def feature_sizes(features: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
        """Sizes :math:`(H_i, W_i)` of the six levels for the given stride-16/32 maps (the anchor grid).

        The extra levels are 3x3 stride-2 convs (size :math:`\\lceil n / 2 \\rceil`) and a global level (1x1).

        Raises:
            TypeError: ``features`` is not a list or tuple of tensors.
            ValueError: it does not hold two maps, or a map has fewer than two dimensions.

        Example:
            >>> SSDLiteHead.feature_sizes([torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 10, 10)])
            [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
        """
        if not isinstance(features, (list, tuple)):
            raise TypeCheckError(
                f"features must be a list or tuple of the stride-16 and stride-32 maps, got {type(features).__name__}",
                actual_type=type(features),
            )
        if len(features) != _NUM_BACKBONE_LEVELS:
            raise ValueCheckError(
                f"features must hold {_NUM_BACKBONE_LEVELS} maps (strides 16 and 32), got {len(features)}",
                actual_value=len(features),
            )
        for feature in features:
            check_type("each feature map", feature, torch.Tensor)
            if feature.dim() < 2:
                raise ValueCheckError(f"feature maps must be (..., H, W), got shape {tuple(feature.shape)}")
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        height, width = sizes[-1]
        for _ in _EXTRA_LEVEL_NAMES[:-1]:
            height, width = (height + 1) // 2, (width + 1) // 2
            sizes.append((height, width))
        sizes.append((1, 1))
        return sizes

    def cvnets_key(self, key: str) -> Optional[str]:
        """Map an official cvnets detection key to this head's state-dict key.

        The head mirrors the official tree, so ``extra_layers.*`` and ``ssd_heads.*`` keys are taken as they are.

        Args:
            key: a full official key.

        Returns:
            The same key when it starts with one of :attr:`cvnets_prefixes`, else ``None``.

        Example:
            >>> SSDLiteHead((64, 80)).cvnets_key("extra_layers.os_-1.1.block.conv.weight")
            'extra_layers.os_-1.1.block.conv.weight'
        """
        return key if key.startswith(self.cvnets_prefixes) else None


class SSDLite(nn.Module):
    """SSDLite detector: feature extractor, :class:`SSDLiteHead`, anchors and post-processing in one module.

    :meth:`forward` returns the raw ``(offsets, logits, anchors)`` for training or export; :meth:`detect` returns
    per-image detections in pixels. The same pipeline from an ``nn.Sequential`` is::

        features = extractor(images)
        offsets, logits = head(features)
        anchors = SSDAnchorGenerator()(SSDLiteHead.feature_sizes(features))
        detections = SSDLitePostProcess()(offsets, logits, anchors, images.shape[-2:])

    Args:
        features: a :class:`FeatureExtractor` giving the stride-16 and stride-32 maps.
        head: an :class:`SSDLiteHead` whose ``in_channels`` equal ``features.channels``.
        postprocess: thresholds for :meth:`detect`; default :class:`SSDLitePostProcess` (official v0.2+ values).
        min_scale: smallest anchor scale (official 0.1).
        max_scale: largest anchor scale (official 1.05).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``head.in_channels`` differs from ``features.channels``.

    Example:
        >>> import torch
        >>> from visionkit.contrib import FeatureExtractor, MobileViTv2, SSDLite, SSDLiteHead, SSDLitePostProcess
        >>> features = FeatureExtractor(MobileViTv2(0.5), indices=(3, 4))
        >>> detector = SSDLite(features, SSDLiteHead(features.channels, num_classes=81),
        ...                    postprocess=SSDLitePostProcess(conf_threshold=0.3)).eval()
        >>> offsets, logits, anchors = detector(torch.rand(1, 3, 320, 320))
        >>> anchors.shape
        torch.Size([3232, 4])
        >>> result = detector.detect(torch.rand(2, 3, 256, 320))
        >>> len(result), sorted(result[0])
        (2, ['boxes', 'labels', 'scores'])
    """

    def __init__(
        self,
        features: FeatureExtractor,
        head: SSDLiteHead,
        *,
        postprocess: Optional[SSDLitePostProcess] = None,
        min_scale: float = 0.1,
        max_scale: float = 1.05,
    ) -> None:
        super().__init__()
        check_type("features", features, FeatureExtractor)
        check_type("head", head, SSDLiteHead)
        if postprocess is None:
            postprocess = SSDLitePostProcess()
        check_type("postprocess", postprocess, SSDLitePostProcess)
        if tuple(features.channels) != head.in_channels:
            raise ValueCheckError(
                f"channel mismatch: the feature extractor gives {tuple(features.channels)} channels at levels "
                f"{features.indices}, but the head was built for in_channels={head.in_channels}",
                actual_value=features.channels,
            )
        self.features = features
        self.head = head
        self.anchor_generator = SSDAnchorGenerator(head.aspect_ratios, min_scale=min_scale, max_scale=max_scale)
        self.postprocess = postprocess

    @property
    def backbone(self) -> nn.Module:
        """The backbone inside :attr:`features` (official ``encoder.*`` keys load into it)."""
        return self.features.backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return raw ``offsets`` :math:`(B, N, 4)`, ``logits`` :math:`(B, N, K)` and ``anchors`` :math:`(N, 4)`.

        Anchors are normalised ``(cx, cy, w, h)``, float32 when the model runs in float16 or bfloat16;
        :func:`~visionkit.contrib.decode_ssd_boxes` turns offsets and anchors into normalised ``xyxy`` boxes.
        """
        with batchnorm_statistics_restored_on_error(self, images):
            features = self.features(images)
            levels = self.head.pyramid(features)
            offsets, logits = self.head.predict(levels)
        sizes = [(int(level.shape[-2]), int(level.shape[-1])) for level in levels]
        # at least float32: in bfloat16 the anchors alone would be off by up to 1.6e-3 of the image
        dtype = torch.promote_types(offsets.dtype, torch.float32)
        anchors = self.anchor_generator(sizes, device=offsets.device, dtype=dtype)
        return offsets, logits, anchors

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detect objects: one dict per image with ``boxes`` :math:`(M, 4)` ``xyxy`` in input pixels, ``scores``
        :math:`(M,)` and ``labels`` :math:`(M,)` (1 .. K-1); empty tensors when nothing passes the threshold.

        Call :meth:`~torch.nn.Module.eval` first: in training mode BatchNorm uses batch statistics.
        """
        offsets, logits, anchors = self(images)
        return self.postprocess(offsets, logits, anchors, images.shape[-2:])
