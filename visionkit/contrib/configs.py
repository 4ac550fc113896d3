"""Architecture configurations of every MobileViT variant, as data.

One frozen :class:`BackboneConfig` per variant. The v1 and v3-on-v1 variants are table rows; the v2 and v3-on-v2
families are derived from a width multiplier by the official channel rules. Numbers are those of the official
apple/ml-cvnets v0.1 (v1), v0.2 (v2) and micronDLA/MobileViTv3 configurations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from kornia.core.exceptions import ValueCheckError

from ._checks import (
    check_choice, check_positive_finite, check_positive_int, check_probability, check_real, check_type,
)
from .layers import make_divisible

__all__ = [
    "BackboneConfig",
    "BlockConfig",
    "ConvStageConfig",
    "TransformerStageConfig",
    "V1_CONFIGS",
    "V3_CONFIGS",
    "mobilevit_config",
    "mobilevit_v2_config",
    "mobilevit_v3_config",
]


#: The fusions each attention kind's block supports.
_FUSIONS: dict[str, tuple[str, ...]] = {"multi_head": ("input", "local"), "separable": ("none", "local")}


def _check_counts(config: object, *names: str) -> None:
    for name in names:
        check_positive_int(f"{type(config).__name__}.{name}", getattr(config, name))


def _check_positive_number(config: object, name: str) -> None:
    value = getattr(config, name)
    label = f"{type(config).__name__}.{name}"
    check_type(label, value, (int, float))
    check_positive_finite(label, value)


@dataclass(frozen=True)
class ConvStageConfig:
    """A stage of inverted residuals (``layer_1``, ``layer_2``); the first block carries the stride."""

    out_channels: int
    num_blocks: int
    stride: int
    expand_ratio: float

    def __post_init__(self) -> None:
        _check_counts(self, "out_channels", "num_blocks", "stride")
        _check_positive_number(self, "expand_ratio")


@dataclass(frozen=True)
class TransformerStageConfig:
    """A stage made of a stride-2 inverted residual (``.0``) and one MobileViT block (``.1``)."""

    out_channels: int
    attn_dim: int
    ffn_dim: int
    num_layers: int
    expand_ratio: float

    def __post_init__(self) -> None:
        _check_counts(self, "out_channels", "attn_dim", "ffn_dim", "num_layers")
        _check_positive_number(self, "expand_ratio")


@dataclass(frozen=True)
class BlockConfig:
    """Which MobileViT block a family uses.

    Attributes:
        attention: ``"multi_head"`` (v1 block, per-token LayerNorm) or ``"separable"`` (v2 block, GroupNorm).
        fusion: ``"input"`` (v1: 3x3 conv over [input, global]), ``"local"`` (v3: local features fused, plus a
            residual) or ``"none"`` (v2: projection only).
        local_depthwise: whether the local 3x3 convolution is depthwise.
        dilate_local: whether the block's local convolution takes the stage dilation when ``output_stride < 32``
            (v2 blocks do; the v1 block ignores dilation).
        num_heads: attention heads (multi-head attention only).
        patch_size: patch side.
    """

    attention: Literal["multi_head", "separable"]
    fusion: Literal["input", "local", "none"]
    local_depthwise: bool
    dilate_local: bool
    num_heads: int = 4
    patch_size: int = 2

    def __post_init__(self) -> None:
        check_choice("attention", self.attention, _FUSIONS)
        check_choice(f"fusion of the {self.attention!r} block", self.fusion, _FUSIONS[self.attention])
        check_type("local_depthwise", self.local_depthwise, bool)
        check_type("dilate_local", self.dilate_local, bool)
        _check_counts(self, "num_heads", "patch_size")


@dataclass(frozen=True)
class BackboneConfig:
    """Complete description of one backbone variant.

    Attributes:
        name: display name, e.g. ``"MobileViT-XXS"``.
        stem_channels: output channels of the stride-2 stem ``conv_1``.
        layer_1: stride-1 inverted residual stage.
        layer_2: stride-2 inverted residual stage.
        layer_3: stage at stride 8.
        layer_4: stage at stride 16.
        layer_5: stage at stride 32.
        block: the MobileViT block used in ``layer_3`` to ``layer_5``.
        expansion_channels: output channels of the final 1x1 ``conv_1x1_exp``; ``None`` when the family has none.
        dropout: transformer dropout (after attention and after the feed-forward network).
        attn_dropout: dropout on the attention weights.
        ffn_dropout: dropout between the feed-forward layers.
        classifier_dropout: dropout the official classifier used before its linear layer.
    """

    name: str
    stem_channels: int
    layer_1: ConvStageConfig
    layer_2: ConvStageConfig
    layer_3: TransformerStageConfig
    layer_4: TransformerStageConfig
    layer_5: TransformerStageConfig
    block: BlockConfig
    expansion_channels: Optional[int]
    dropout: float = 0.0
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0
    classifier_dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_counts(self, "stem_channels")
        for name, kind in (
            ("layer_1", ConvStageConfig), ("layer_2", ConvStageConfig), ("layer_3", TransformerStageConfig),
            ("layer_4", TransformerStageConfig), ("layer_5", TransformerStageConfig), ("block", BlockConfig),
        ):
            check_type(name, getattr(self, name), kind)
        if self.expansion_channels is not None:
            _check_counts(self, "expansion_channels")
        for name in ("dropout", "attn_dropout", "ffn_dropout", "classifier_dropout"):
            check_probability(name, getattr(self, name))
        # The backbone's feature strides (2, 4, 8, 16, 32), its output_stride dilation and the official key names
        # all assume these two strides, as every official variant has them.
        for name, stride in (("layer_1", 1), ("layer_2", 2)):
            stage = getattr(self, name)
            if stage.stride != stride:
                raise ValueError(f"{name}.stride must be {stride} (stage strides are fixed), got {stage.stride}")


_V1_BLOCK = BlockConfig(attention="multi_head", fusion="input", local_depthwise=False, dilate_local=False)
_V3_V1_BLOCK = BlockConfig(attention="multi_head", fusion="local", local_depthwise=True, dilate_local=False)
_V2_BLOCK = BlockConfig(attention="separable", fusion="none", local_depthwise=True, dilate_local=True)
_V3_V2_BLOCK = BlockConfig(attention="separable", fusion="local", local_depthwise=True, dilate_local=True)


def _vit(out: int, dim: int, layers: int, expand: float) -> TransformerStageConfig:
    # Every v1/v3 stage uses an FFN of twice the transformer width.
    return TransformerStageConfig(out, dim, 2 * dim, layers, expand)


def _v1_family(
    name: str,
    block: BlockConfig,
    expand: float,
    channels: tuple[int, int, int, int, int],
    dims: tuple[int, int, int],
    layer_4_layers: int,
    dropout: float,
) -> BackboneConfig:
    c1, c2, c3, c4, c5 = channels
    return BackboneConfig(
        name=name,
        stem_channels=16,
        layer_1=ConvStageConfig(c1, 1, 1, expand),
        layer_2=ConvStageConfig(c2, 3, 2, expand),
        layer_3=_vit(c3, dims[0], 2, expand),
        layer_4=_vit(c4, dims[1], layer_4_layers, expand),
        layer_5=_vit(c5, dims[2], 3, expand),
        block=block,
        expansion_channels=min(4 * c5, 960),
        dropout=dropout,
        classifier_dropout=0.1,
    )


#: MobileViT v1 (cvnets v0.1 ``config/mobilevit.py``): L1, L2, L3, L4, L5 channels and transformer widths.
V1_CONFIGS: dict[str, BackboneConfig] = {
    "xxs": _v1_family("MobileViT-XXS", _V1_BLOCK, 2, (16, 24, 48, 64, 80), (64, 80, 96), 4, 0.05),
    "xs": _v1_family("MobileViT-XS", _V1_BLOCK, 4, (32, 48, 64, 80, 96), (96, 120, 144), 4, 0.1),
    "s": _v1_family("MobileViT-S", _V1_BLOCK, 4, (32, 64, 96, 128, 160), (144, 192, 240), 4, 0.1),
}

#: Seed spellings of the v1 modes (the official config's names).
V1_ALIASES: dict[str, str] = {"xx_small": "xxs", "x_small": "xs", "small": "s"}

#: MobileViTv3 on the v1 block (micronDLA ``MobileViTv3-v1``): wider stages, same transformer widths; the
#: "-L2" low-latency variants keep only 2 transformer layers in layer_4.
V3_CONFIGS: dict[str, BackboneConfig] = {
    "xxs": _v1_family("MobileViTv3-XXS", _V3_V1_BLOCK, 2, (16, 24, 64, 80, 128), (64, 80, 96), 4, 0.05),
    "xs": _v1_family("MobileViTv3-XS", _V3_V1_BLOCK, 4, (32, 48, 96, 160, 160), (96, 120, 144), 4, 0.1),
    "s": _v1_family("MobileViTv3-S", _V3_V1_BLOCK, 4, (32, 64, 128, 256, 320), (144, 192, 240), 4, 0.1),
    "xxs_l2": _v1_family("MobileViTv3-XXS-L2", _V3_V1_BLOCK, 2, (16, 24, 64, 80, 128), (64, 80, 96), 2, 0.05),
    "xs_l2": _v1_family("MobileViTv3-XS-L2", _V3_V1_BLOCK, 4, (32, 48, 96, 160, 160), (96, 120, 144), 2, 0.1),
    "s_l2": _v1_family("MobileViTv3-S-L2", _V3_V1_BLOCK, 4, (32, 64, 128, 256, 320), (144, 192, 240), 2, 0.1),
}

#: Seed spellings of the v3 modes (the official config's names).
V3_ALIASES: dict[str, str] = {
    "xx_small_v3": "xxs",
    "x_small_v3": "xs",
    "small_v3": "s",
    "xx_small_v3_fast": "xxs_l2",
    "x_small_v3_fast": "xs_l2",
    "small_v3_fast": "s_l2",
}


def _resolve_mode(mode: object, table: dict[str, BackboneConfig], aliases: dict[str, str]) -> BackboneConfig:
    check_type("mode", mode, str)
    key = aliases.get(str(mode), str(mode))
    check_choice("mode", key, [*table, *aliases])
    return table[key]


def mobilevit_config(mode: str) -> BackboneConfig:
    """Configuration of MobileViT v1 ``"xxs"``, ``"xs"`` or ``"s"`` (or ``"xx_small"``, ``"x_small"``,
    ``"small"``).

    Raises:
        TypeError: ``mode`` is not a string.
        ValueError: ``mode`` is not one of the valid names.

    Example:
        >>> mobilevit_config("xxs").expansion_channels
        320
    """
    return _resolve_mode(mode, V1_CONFIGS, V1_ALIASES)


def format_width(width: float) -> str:
    """Width multiplier as written in the papers' tables: ``0.5``, ``0.75``, ``1.0``, ``2.0``.

    Example:
        >>> format_width(1), format_width(0.75)
        ('1.0', '0.75')
    """
    text = f"{width:g}"
    return text if "." in text or "e" in text else text + ".0"


def _width_config(name: str, width_multiplier: float, block: BlockConfig) -> BackboneConfig:
    width_multiplier = check_real("width_multiplier", width_multiplier)  # int, float or numpy scalar; not bool
    if not math.isfinite(width_multiplier) or width_multiplier <= 0:
        raise ValueCheckError(
            f"width_multiplier must be a finite number > 0 (released: 0.5, 0.75, 1.0, ..., 2.0), "
            f"got {width_multiplier!r}",
            actual_value=width_multiplier,
        )
    alpha = float(width_multiplier)

    def ch(base: float) -> int:
        return make_divisible(base * alpha, 8)

    def vit(out_base: float, dim_base: float, layers: int) -> TransformerStageConfig:
        dim = ch(dim_base)
        return TransformerStageConfig(ch(out_base), dim, int(2 * dim // 16 * 16), layers, 2)

    return BackboneConfig(
        name=f"{name}-{format_width(alpha)}",
        stem_channels=make_divisible(min(max(32 * alpha, 16), 64), 8, 16),
        layer_1=ConvStageConfig(make_divisible(64 * alpha, 16), 1, 1, 2),
        layer_2=ConvStageConfig(ch(128), 2, 2, 2),
        layer_3=vit(256, 128, 2),
        layer_4=vit(384, 192, 4),
        layer_5=vit(512, 256, 3),
        block=block,
        expansion_channels=None,
    )


def mobilevit_v2_config(width_multiplier: float) -> BackboneConfig:
    """Configuration of MobileViTv2 at any positive width multiplier (official rules of cvnets v0.2).

    Raises:
        TypeError: ``width_multiplier`` is not a number.
        ValueError: ``width_multiplier`` is not a finite number above zero.

    Example:
        >>> cfg = mobilevit_v2_config(0.5)
        >>> cfg.stem_channels, cfg.layer_5.out_channels, cfg.layer_5.attn_dim
        (16, 256, 128)
    """
    return _width_config("MobileViTv2", width_multiplier, _V2_BLOCK)


def mobilevit_v3_config(mode: Optional[str] = None, width_multiplier: Optional[float] = None) -> BackboneConfig:
    """Configuration of MobileViTv3: ``mode`` for the v1-based family, ``width_multiplier`` for the v2-based one.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: both or neither argument is given, or the value is not valid.

    Example:
        >>> mobilevit_v3_config("xxs").expansion_channels
        512
        >>> mobilevit_v3_config(width_multiplier=1.0).layer_5.out_channels
        512
    """
    if (mode is None) == (width_multiplier is None):
        raise ValueCheckError(
            "MobileViTv3 takes exactly one of mode (v1-based family: "
            f"{', '.join(repr(m) for m in V3_CONFIGS)}) or width_multiplier (v2-based family, e.g. 0.5, 0.75, 1.0); "
            f"got mode={mode!r}, width_multiplier={width_multiplier!r}"
        )
    if width_multiplier is None:
        return _resolve_mode(mode, V3_CONFIGS, V3_ALIASES)
    return _width_config("MobileViTv3", width_multiplier, _V3_V2_BLOCK)
