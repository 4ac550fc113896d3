"""Headless MobileViT backbones (v1, v2, v3) that return feature maps, never logits.

Papers:
    * MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (arXiv:2110.02178).
    * Separable Self-attention for Mobile Vision Transformers (MobileViTv2, arXiv:2206.02680).
    * MobileViTv3: Mobile-Friendly Vision Transformer with Simple and Effective Fusion (arXiv:2209.15159).

Module names mirror the official apple/ml-cvnets tree (``conv_1``, ``layer_1`` ... ``layer_5``,
``conv_1x1_exp``), so an official state dict (less its ``classifier``) loads with ``load_state_dict`` as is.
This file is an independent implementation written from the architecture description.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from kornia.core.exceptions import ValueCheckError
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import (
    check_choice, check_image, check_int, check_positive_int, check_probability, check_same_place, check_type,
)
from .blocks import MobileViTBlock, MobileViTBlockV2
from .composition import composes_pointwise, run_composed
from .configs import (
    BackboneConfig,
    ConvStageConfig,
    TransformerStageConfig,
    mobilevit_config,
    mobilevit_v2_config,
    mobilevit_v3_config,
)
from .deploy import fuse_batchnorm
from .layers import (
    ConvLayer,
    InvertedResidual,
    _runs_unobserved,
    batchnorm_statistics_restored_on_error,
    in_function_transform,
    is_recording,
)

__all__ = ["FeatureInfo", "MobileViT", "MobileViTBackbone", "MobileViTv2", "MobileViTv3"]

_LEVEL_MODULES = ("layer_1", "layer_2", "layer_3", "layer_4", "layer_5")


@contextlib.contextmanager
def _batchnorm_stats_kept(module: nn.Module) -> Iterator[None]:
    # A checkpointed block runs its forward twice (once more in the backward pass); BatchNorm must update its
    # running statistics only the first time, so the recomputation restores them afterwards.
    saved = [
        (buffer, buffer.clone())
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training
        for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    calls = 0

    def run(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(inputs)
        with _batchnorm_stats_kept(block):
            return block(inputs)

    return checkpoint(run, x, use_reentrant=False)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level of a backbone.

    Attributes:
        channels: channels of the level's map.
        reduction: input size divided by the map size (the stride, 2 to 32; less when ``output_stride`` dilates).
        module: name of the module whose output the level is.
    """

    channels: int
    reduction: int
    module: str


class MobileViTBackbone(nn.Module):
    """A MobileViT backbone built from a :class:`~visionkit.contrib.configs.BackboneConfig`.

    The class holds no variant names: :class:`MobileViT`, :class:`MobileViTv2` and :class:`MobileViTv3` pick the
    configuration. Layout: ``conv_1`` (stride-2 stem), ``layer_1`` (stride 1), ``layer_2`` (stride 2), then
    ``layer_3``, ``layer_4``, ``layer_5``, each a stride-2 inverted residual and a MobileViT block, then
    ``conv_1x1_exp`` (1x1 conv + BN + SiLU; only in families that have it and only if ``expand_output``).

    Feature levels (:attr:`feature_info`, :meth:`forward_intermediates`), 0-based:

    ====== ================== ==================
    index  module             reduction (OS 32)
    ====== ================== ==================
    0      stem + ``layer_1`` 2
    1      ``layer_2``        4
    2      ``layer_3``        8
    3      ``layer_4``        16
    4      ``layer_5``        32
    ====== ================== ==================

    Level 4 is the output of ``layer_5``, **before** ``conv_1x1_exp``; :meth:`forward` returns the map **after**
    it (with :attr:`out_channels` channels). With ``expand_output=False`` the expansion is not built at all and
    :meth:`forward` returns level 4.

    ``output_stride`` 16 or 8 replaces the stride of ``layer_5`` (and ``layer_4``) by dilation as the official
    segmentation models do: the downsampling inverted residual keeps the previous dilation, and blocks of
    families with ``dilate_local`` dilate their depthwise local convolution.

    On CPU, in eager mode, the layers run in channels-last memory format (oneDNN's fastest layout for these
    convolutions); the returned maps are contiguous as usual. Under tracing, ``torch.compile`` and
    ``torch.export`` the memory format is left to the compiler.

    Args:
        config: the architecture.
        in_channels: channels of the input images.
        output_stride: 32, 16 or 8.
        expand_output: build ``conv_1x1_exp`` (when the family has one) and return its output.
        grad_checkpointing: recompute each block's activations during the backward pass instead of storing them
            (see :meth:`set_grad_checkpointing`).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``in_channels < 1`` or ``output_stride`` not in (8, 16, 32).

    Example:
        >>> from visionkit.contrib.configs import mobilevit_config
        >>> gray = MobileViTBackbone(mobilevit_config("xxs"), in_channels=1, expand_output=False)
        >>> gray(torch.rand(1, 1, 64, 64)).shape
        torch.Size([1, 80, 2, 2])
    """

    def __init__(
        self,
        config: BackboneConfig,
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        expand_output: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_type("config", config, BackboneConfig)
        in_channels = check_positive_int("in_channels", in_channels)
        output_stride = check_positive_int("output_stride", output_stride)  # int or numpy integer
        check_choice("output_stride", output_stride, (8, 16, 32))
        check_type("expand_output", expand_output, bool)
        check_type("grad_checkpointing", grad_checkpointing, bool)
        self.config = config
        self.in_channels = in_channels
        self.output_stride = output_stride

        self.conv_1 = ConvLayer(in_channels, config.stem_channels, 3, stride=2)
        self.layer_1 = self._conv_stage(config.stem_channels, config.layer_1)
        self.layer_2 = self._conv_stage(config.layer_1.out_channels, config.layer_2)
        channels = [config.layer_1.out_channels, config.layer_2.out_channels]
        reductions = [2, 4]
        reduction, dilation = 4, 1
        in_ch = config.layer_2.out_channels
        for name in ("layer_3", "layer_4", "layer_5"):
            stage_cfg: TransformerStageConfig = getattr(config, name)
            prev_dilation, stride = dilation, 2
            if reduction * 2 > output_stride:
                dilation, stride = dilation * 2, 1
            else:
                reduction *= 2
            setattr(self, name, self._transformer_stage(in_ch, stage_cfg, stride, prev_dilation, dilation))
            in_ch = stage_cfg.out_channels
            channels.append(in_ch)
            reductions.append(reduction)

        if expand_output and config.expansion_channels is not None:
            self.conv_1x1_exp: nn.Module = ConvLayer(in_ch, config.expansion_channels, 1)
            self.out_channels = config.expansion_channels
        else:
            self.conv_1x1_exp = nn.Identity()
            self.out_channels = in_ch
        self.feature_info: tuple[FeatureInfo, ...] = tuple(
            FeatureInfo(c, r, m) for c, r, m in zip(channels, reductions, _LEVEL_MODULES)
        )
        self.reset_parameters()
        self.set_grad_checkpointing(grad_checkpointing)

    @staticmethod
    def _conv_stage(in_channels: int, cfg: ConvStageConfig) -> nn.Sequential:
        blocks = []
        for i in range(cfg.num_blocks):
            stride = cfg.stride if i == 0 else 1
            blocks.append(InvertedResidual(in_channels, cfg.out_channels, stride=stride, expand_ratio=cfg.expand_ratio))
            in_channels = cfg.out_channels
        return nn.Sequential(*blocks)

    def _transformer_stage(
        self, in_channels: int, cfg: TransformerStageConfig, stride: int, mv2_dilation: int, dilation: int
    ) -> nn.Sequential:
        block_cfg = self.config.block
        downsample = InvertedResidual(
            in_channels, cfg.out_channels, stride=stride, expand_ratio=cfg.expand_ratio, dilation=mv2_dilation
        )
        common = dict(
            num_layers=cfg.num_layers,
            patch_size=block_cfg.patch_size,
            dropout=self.config.dropout,
            attn_dropout=self.config.attn_dropout,
            ffn_dropout=self.config.ffn_dropout,
            fusion=block_cfg.fusion,
        )
        block: nn.Module
        if block_cfg.attention == "multi_head":
            block = MobileViTBlock(
                cfg.out_channels,
                cfg.attn_dim,
                cfg.ffn_dim,
                num_heads=block_cfg.num_heads,
                local_depthwise=block_cfg.local_depthwise,
                **common,  # type: ignore[arg-type]
            )
        else:
            block = MobileViTBlockV2(
                cfg.out_channels,
                cfg.attn_dim,
                cfg.ffn_dim,
                dilation=dilation if block_cfg.dilate_local else 1,
                **common,  # type: ignore[arg-type]
            )
        return nn.Sequential(downsample, block)

    def reset_parameters(self) -> None:
        """Initialise as the official code does: Kaiming-normal convs, truncated-normal linears, unit norms.

        BatchNorm running statistics are reset too (mean 0, variance 1, no batches tracked), as
        ``torch.nn.BatchNorm2d.reset_parameters`` does, so nothing of earlier weights is left.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                # _BatchNorm: SyncBatchNorm (after convert_sync_batchnorm) is not a BatchNorm2d
                if module.weight is not None:  # affine=False / elementwise_affine=False norms have none
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation (gradient) checkpointing on or off.

        When on, and autograd is recording, every block of ``layer_1`` ... ``layer_5`` (each inverted residual and
        each MobileViT block with its transformer layers) runs under :func:`torch.utils.checkpoint.checkpoint`
        (``use_reentrant=False``): only the block inputs are kept, and the activations inside a block are
        recomputed during the backward pass. Gradients, dropout masks and BatchNorm running statistics are the same
        as without checkpointing (the recomputation restores the statistics it updates); the price is about one
        more forward pass per training step. Measured with ``python benchmarks/grad_checkpointing_memory.py``
        (MobileViT-S, batch 8, 512x512, one CPU training step, float32): the step's peak memory fell from
        4,222 MiB to 1,439 MiB (-66%).

        A stage with hooks of its own (or global module hooks), or one replaced by another module such as a
        compiled stage, runs through its own call under one checkpoint instead (as with any checkpointed module,
        hooks inside it may run again during the recomputation). Under ``torch.func`` transforms, tracing and
        ``torch.export`` the stages run without checkpointing.

        Args:
            enable: ``True`` to checkpoint, ``False`` to store activations as usual.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> model = MobileViT(mode="xxs")
            >>> model.set_grad_checkpointing()
            >>> model.grad_checkpointing
            True
        """
        check_type("enable", enable, bool)
        self.grad_checkpointing = enable

    @staticmethod
    def _to_working_layout(x: torch.Tensor) -> torch.Tensor:
        """Channels-last on CPU in eager mode (see the class docstring); unchanged otherwise."""
        if x.device.type != "cpu" or is_recording():
            return x
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _to_output_layout(x: torch.Tensor) -> torch.Tensor:
        return x if is_recording() else x.contiguous()

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # torch.func's grad/vjp refuse the saved-tensor hooks that checkpointing uses
        plain = torch.jit.is_tracing() or torch.compiler.is_exporting() or in_function_transform()
        if plain or not (self.grad_checkpointing and torch.is_grad_enabled()):
            return stage(x)
        if type(stage) is not nn.Sequential or not _runs_unobserved(stage):
            # A replaced (e.g. compiled) or hooked stage runs through its own call, as one checkpointed piece.
            return _checkpointed(stage, x)
        for block in stage:
            x = _checkpointed(block, x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError(
                "torch.fx.symbolic_trace cannot trace a whole backbone: its forward follows the input size (the "
                "official resize rules); record it with torch.export (visionkit.contrib.export_program) or "
                "torch.jit.trace, or trace its transformer layers, which FX can"
            )
        check_image(x, self.in_channels)
        check_same_place(x, next(self.parameters(), None))

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        """The five level modules ``layer_1`` ... ``layer_5`` (the stem runs before ``layer_1``)."""
        return (self.layer_1, self.layer_2, self.layer_3, self.layer_4, self.layer_5)

    def _level_indices(self, indices: Optional[Sequence[int]]) -> list[int]:
        count = len(self.feature_info)
        if indices is None:
            return list(range(count))
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise TypeError(f"indices must be a sequence of ints such as (3, 4) or None, got {type(indices).__name__}")
        if len(indices) == 0:
            raise ValueCheckError("indices must name at least one level, got an empty sequence")
        resolved = []
        for index in indices:
            index = check_int("indices[...]", index)  # an int or a numpy integer
            if not -count <= index < count:
                raise ValueCheckError(
                    f"feature level index must be in [{-count}, {count - 1}] (levels 0..{count - 1} are strides "
                    f"{', '.join(str(f.reduction) for f in self.feature_info)}), got {index}",
                    actual_value=index,
                )
            resolved.append(index % count)
        return resolved

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Return the feature maps of the levels named by ``indices`` (all five when ``None``).

        Levels are 0-based (see the class docstring); level 4 is ``layer_5``'s output *before* ``conv_1x1_exp``.
        Only the layers up to the deepest requested level run.

        Args:
            x: images :math:`(B, C_{in}, H, W)`, floating point.
            indices: level indices in ``[-5, 4]``, returned in the order given.

        Returns:
            A list of maps :math:`(B, C_i, H_i, W_i)` with ``C_i = feature_info[i].channels``.

        Raises:
            TypeError: ``x`` is not a floating tensor, its dtype differs from the model's (outside
                :func:`torch.autocast`), or ``indices`` is not a sequence of ints.
            ValueError: ``x`` is not :math:`(B, C_{in}, H, W)`, is on another device than the model, an index is
                out of range, or (in training mode) a BatchNorm sees a single value per channel.

        Example:
            >>> model = MobileViT(mode="xxs")
            >>> [f.shape[1:] for f in model.forward_intermediates(torch.rand(1, 3, 256, 256), indices=(3, 4))]
            [torch.Size([64, 16, 16]), torch.Size([80, 8, 8])]
        """
        self._check_input(x)
        wanted = self._level_indices(indices)
        maps: dict[int, torch.Tensor] = {}
        with batchnorm_statistics_restored_on_error(self, x):
            x = self.conv_1(self._to_working_layout(x))
            stages = self.stages[: max(wanted) + 1]
            if composes_pointwise():
                x, maps = run_composed(stages, x, kept=wanted)
            else:
                for level, stage in enumerate(stages):
                    x = self._run_stage(stage, x)
                    if level in wanted:
                        maps[level] = x
        return [self._to_output_layout(maps[i]) for i in wanted]

    def fuse(self) -> "MobileViTBackbone":
        """Fold every BatchNorm into its convolution for inference, in place (see :func:`fuse_batchnorm`).

        Returns:
            The backbone itself.

        Raises:
            ValueError: the model is in training mode (call ``eval()`` first), or a BatchNorm has hooks.

        Example:
            >>> model = MobileViT(mode="xxs").eval().fuse()
            >>> model(torch.rand(1, 3, 64, 64)).shape
            torch.Size([1, 320, 2, 2])
        """
        return fuse_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the final feature map.

        Args:
            x: images :math:`(B, C_{in}, H, W)`, floating point, values as the weights expect (``[0, 1]`` for the
                official weights).

        Returns:
            :math:`(B, C_{out}, H', W')` with :math:`C_{out}` = :attr:`out_channels` and :math:`H' \\approx
            H / \\text{output\\_stride}`.

        Raises:
            TypeError: ``x`` is not a tensor, not floating point, or its dtype differs from the model's (outside
                :func:`torch.autocast`).
            ValueError: ``x`` is not 4-D, has the wrong number of channels, is on another device than the model,
                or (in training mode) a BatchNorm sees a single value per channel (batch 1 and a 1x1 map).
        """
        self._check_input(x)
        with batchnorm_statistics_restored_on_error(self, x):
            x = self.conv_1(self._to_working_layout(x))
            if composes_pointwise():
                x, _ = run_composed(self.stages, x)
            else:
                for stage in self.stages:
                    x = self._run_stage(stage, x)
            return self._to_output_layout(self.conv_1x1_exp(x))


def _with_dropouts(
    config: BackboneConfig, dropout: Optional[float], attn_dropout: Optional[float], ffn_dropout: Optional[float]
) -> BackboneConfig:
    overrides = {}
    for name, value in (("dropout", dropout), ("attn_dropout", attn_dropout), ("ffn_dropout", ffn_dropout)):
        if value is None:
            continue
        overrides[name] = check_probability(name, value)
    return dataclasses.replace(config, **overrides) if overrides else config


def _check_weights_tag(weights: Optional[str]) -> None:
    """Refuse a ``weights`` argument that names no registered checkpoint of any variant, before the model is built
    (building draws random initial weights from the global generator)."""
    from .weights import WeightsEntry, list_weights  # the weights registry imports this module

    if weights is None or isinstance(weights, WeightsEntry):
        return
    check_type("weights", weights, str)
    names = {"DEFAULT"} | {w.tag for w in list_weights()} | {w.name for w in list_weights()}
    if weights not in names:
        tags = sorted({w.tag for w in list_weights()})
        raise ValueCheckError(
            f"weights must be a registered tag such as {', '.join(map(repr, tags))} (see list_weights()), "
            f"got {weights!r}",
            actual_value=weights,
        )


def _load_registered_weights(backbone: MobileViTBackbone, weights: Optional[str]) -> None:
    if weights is not None:
        from .weights import load_weights  # the weights registry imports this module

        load_weights(backbone, weights)


class MobileViT(MobileViTBackbone):
    """MobileViT v1 backbone (XXS, XS, S), exact to the official apple/ml-cvnets v0.1 architecture.

    Args:
        mode: ``"xxs"``, ``"xs"`` or ``"s"`` (also ``"xx_small"``, ``"x_small"``, ``"small"``).
        in_channels: input image channels.
        output_stride: 32, 16 or 8 (see :class:`MobileViTBackbone`).
        expand_output: apply the final ``conv_1x1_exp`` (320 / 384 / 640 channels).
        dropout: transformer dropout; ``None`` keeps the official value (0.05 XXS, 0.1 XS and S).
        attn_dropout: attention-weight dropout; ``None`` keeps 0.
        ffn_dropout: feed-forward dropout; ``None`` keeps 0.
        weights: tag of a registered checkpoint (:func:`~visionkit.contrib.list_weights`), e.g. ``"cvnets-in1k"``,
            loaded as published (downloaded once into the torch hub cache); ``None`` keeps the random init.
        grad_checkpointing: checkpoint every block to save training memory (see
            :meth:`~MobileViTBackbone.set_grad_checkpointing`).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`, any :math:`H, W \\ge 1`.
        - Output: :math:`(B, C_{out}, \\lceil H / 32 \\rceil, \\lceil W / 32 \\rceil)` at output stride 32.

    Raises:
        TypeError: an argument has the wrong type (misspelled keywords are a ``TypeError`` too).
        ValueError: ``mode`` is unknown, or another argument is out of range.

    Example:
        >>> model = MobileViT(mode="xxs")
        >>> model(torch.rand(1, 3, 256, 256)).shape
        torch.Size([1, 320, 8, 8])
        >>> classifier = nn.Sequential(MobileViT(mode="xxs"), ClassificationHead(320, 1000))
        >>> sum(p.numel() for p in classifier.parameters())
        1272024
    """

    def __init__(
        self,
        mode: str = "xxs",
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        expand_output: bool = True,
        dropout: Optional[float] = None,
        attn_dropout: Optional[float] = None,
        ffn_dropout: Optional[float] = None,
        weights: Optional[str] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        _check_weights_tag(weights)
        config = _with_dropouts(mobilevit_config(mode), dropout, attn_dropout, ffn_dropout)
        super().__init__(
            config,
            in_channels=in_channels,
            output_stride=output_stride,
            expand_output=expand_output,
            grad_checkpointing=grad_checkpointing,
        )
        _load_registered_weights(self, weights)


class MobileViTv2(MobileViTBackbone):
    """MobileViTv2 backbone with separable self-attention (official apple/ml-cvnets v0.2 architecture).

    Any positive width multiplier builds with the official channel rules; 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 and 2.0
    are the released ones. The family has no ``conv_1x1_exp``: the output has :math:`512 \\alpha` channels.

    Args:
        width_multiplier: :math:`\\alpha > 0`.
        in_channels: input image channels.
        output_stride: 32, 16 or 8 (see :class:`MobileViTBackbone`).
        expand_output: accepted for a uniform API; v2 has no expansion so it changes nothing.
        dropout: transformer dropout (official: 0).
        attn_dropout: context-score dropout (official: 0).
        ffn_dropout: feed-forward dropout (official: 0).
        weights: tag of a registered checkpoint (:func:`~visionkit.contrib.list_weights`), e.g. ``"cvnets-in1k"``,
            loaded as published (downloaded once into the torch hub cache); ``None`` keeps the random init.
        grad_checkpointing: checkpoint every block to save training memory (see
            :meth:`~MobileViTBackbone.set_grad_checkpointing`).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`, any :math:`H, W \\ge 1`.
        - Output: :math:`(B, 512\\alpha, H', W')`. Blocks round their input *up* to even sizes and keep it, so
          :math:`H'` can exceed :math:`\\lceil H / 32 \\rceil` (224 gives 8, not 7) as in the official model.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``width_multiplier <= 0`` or another argument out of range.

    Example:
        >>> MobileViTv2(0.5)(torch.rand(1, 3, 256, 256)).shape
        torch.Size([1, 256, 8, 8])
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        expand_output: bool = True,
        dropout: Optional[float] = None,
        attn_dropout: Optional[float] = None,
        ffn_dropout: Optional[float] = None,
        weights: Optional[str] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        _check_weights_tag(weights)
        config = _with_dropouts(mobilevit_v2_config(width_multiplier), dropout, attn_dropout, ffn_dropout)
        super().__init__(
            config,
            in_channels=in_channels,
            output_stride=output_stride,
            expand_output=expand_output,
            grad_checkpointing=grad_checkpointing,
        )
        _load_registered_weights(self, weights)


class MobileViTv3(MobileViTBackbone):
    """MobileViTv3 backbone (micronDLA/MobileViTv3): two families behind one class.

    * ``mode="xxs" | "xs" | "s"`` and the low-latency ``"xxs_l2" | "xs_l2" | "s_l2"``: built on the v1 block
      with a depthwise local conv, a 1x1 fusion of ``[local, global]`` and a residual; ``conv_1x1_exp`` gives
      ``min(4 C_5, 960)`` channels (512 / 640 / 960).
    * ``width_multiplier=0.5 | 0.75 | 1.0 | ...``: built on the v2 block, with ``conv_proj`` over
      ``[global, local]`` and a residual; :math:`512\\alpha` output channels.

    Args:
        mode: v1-based variant name (also the official ``"xx_small_v3"`` ... ``"small_v3_fast"`` spellings).
        width_multiplier: v2-based width :math:`\\alpha > 0`.
        in_channels: input image channels.
        output_stride: 32, 16 or 8 (see :class:`MobileViTBackbone`).
        expand_output: apply ``conv_1x1_exp`` (v1-based family only).
        dropout: transformer dropout; ``None`` keeps the official value.
        attn_dropout: attention dropout; ``None`` keeps 0.
        ffn_dropout: feed-forward dropout; ``None`` keeps 0.
        weights: tag of a registered checkpoint (:func:`~visionkit.contrib.list_weights`), e.g. ``"cvnets-in1k"``,
            loaded as published (downloaded once into the torch hub cache); ``None`` keeps the random init.
        grad_checkpointing: checkpoint every block to save training memory (see
            :meth:`~MobileViTBackbone.set_grad_checkpointing`).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, H', W')`, resize rules of the family the variant is built on.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: not exactly one of ``mode`` and ``width_multiplier``, or an invalid value.

    Example:
        >>> MobileViTv3(mode="xxs")(torch.rand(1, 3, 256, 256)).shape
        torch.Size([1, 512, 8, 8])
        >>> MobileViTv3(width_multiplier=0.5)(torch.rand(1, 3, 256, 256)).shape
        torch.Size([1, 256, 8, 8])
    """

    def __init__(
        self,
        mode: Optional[str] = None,
        *,
        width_multiplier: Optional[float] = None,
        in_channels: int = 3,
        output_stride: int = 32,
        expand_output: bool = True,
        dropout: Optional[float] = None,
        attn_dropout: Optional[float] = None,
        ffn_dropout: Optional[float] = None,
        weights: Optional[str] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        _check_weights_tag(weights)
        config = _with_dropouts(mobilevit_v3_config(mode, width_multiplier), dropout, attn_dropout, ffn_dropout)
        super().__init__(
            config,
            in_channels=in_channels,
            output_stride=output_stride,
            expand_output=expand_output,
            grad_checkpointing=grad_checkpointing,
        )
        _load_registered_weights(self, weights)
