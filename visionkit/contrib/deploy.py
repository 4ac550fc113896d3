"""Deploy-time simplification: fold every BatchNorm into the convolution before it.

:func:`fuse_batchnorm` works on any module tree built from :class:`~visionkit.contrib.layers.ConvLayer` blocks
(backbones and heads alike). A folded ``ConvLayer`` keeps its ``block.conv`` module (with new weight and bias
parameters) and ``block.act`` and loses ``block.norm``, so the fused model runs fewer kernels and has no BatchNorm
left (norms that cannot be folded, such as a ``GroupNorm`` put in a BatchNorm's place, stay). It is meant for
inference: the folded statistics no longer update, hence fusing a model in training mode is refused.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from .layers import ConvLayer

__all__ = ["fold_conv_batchnorm", "fuse_batchnorm"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@torch.no_grad()
def fold_conv_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new convolution computing ``norm(conv(x))`` in eval mode.

    :math:`W' = W \\gamma / \\sqrt{\\sigma^2 + \\epsilon}` per output channel and
    :math:`b' = (b - \\mu) \\gamma / \\sqrt{\\sigma^2 + \\epsilon} + \\beta`. The arithmetic is done in float64 and
    cast back to the convolution's dtype.

    Args:
        conv: the convolution.
        norm: the BatchNorm that follows it, with running statistics.

    Returns:
        A convolution with a bias, on the same device and with the same dtype as ``conv``.

    Raises:
        TypeError: the arguments are not a ``Conv2d`` and a ``BatchNorm2d`` (or ``SyncBatchNorm``, which is the same
            computation in eval mode).
        ValueError: the channel counts differ, or the norm tracks no running statistics.

    Example:
        >>> conv, norm = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8).eval()
        >>> x = torch.rand(1, 3, 8, 8)
        >>> torch.allclose(fold_conv_batchnorm(conv, norm)(x), norm(conv(x)), atol=1e-6)
        True
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        raise TypeError(
            "expected an nn.Conv2d and an nn.BatchNorm2d or nn.SyncBatchNorm, "
            f"got {type(conv).__name__} and {type(norm).__name__}"
        )
    if conv.out_channels != norm.num_features:
        raise ValueError(
            f"the convolution has {conv.out_channels} output channels but the BatchNorm {norm.num_features} features"
        )
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("the BatchNorm tracks no running statistics (track_running_stats=False); it cannot be folded")
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(bias)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(bias)
    scale = gamma / torch.sqrt(norm.running_var.double() + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_((bias - norm.running_mean.double()) * scale + beta)
    # A frozen layer stays frozen, and a channels-last weight stays channels-last.
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def fuse_batchnorm(module: ModuleT) -> ModuleT:
    """Fold every BatchNorm of every :class:`~visionkit.contrib.layers.ConvLayer` in ``module``, in place.

    Each folded layer keeps its ``block.conv`` module, with new weight and bias parameters (hooks on the
    convolution keep running; requires-grad flags and channels-last weights are kept), and loses its
    ``block.norm``. Norms that cannot be folded (other types, such as a
    ``GroupNorm`` put in a BatchNorm's place, or a BatchNorm with ``track_running_stats=False``, which normalises
    with batch statistics in eval mode too) are left in place and run as before.

    Args:
        module: a model in eval mode (backbone, head, or a ``nn.Sequential`` of both).

    Returns:
        ``module`` itself, fused (outputs equal the unfused model's within float rounding).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` (or a submodule) is in training mode, or a BatchNorm to fold has hooks (they would
            never run again); nothing is changed then.

    Example:
        >>> from visionkit.contrib import MobileViT
        >>> model = fuse_batchnorm(MobileViT("xxs").eval())
        >>> any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        False
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    training = [name or "<root>" for name, m in module.named_modules() if m.training]
    if training:
        raise ValueError(
            "fusing folds the BatchNorm running statistics, which only holds for inference: call model.eval() "
            f"before fusing (in training mode: {', '.join(training[:3])}{', ...' if len(training) > 3 else ''})"
        )
    layers = [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, ConvLayer)
        and type(m.block._modules.get("conv")) is nn.Conv2d
        and isinstance(m.block._modules.get("norm"), (nn.BatchNorm2d, nn.SyncBatchNorm))
        and m.block.norm.running_mean is not None
        and m.block.norm.running_var is not None
    ]
    normalised = [
        f"{name}.block.conv" for name, m in layers
        if any(isinstance(hook, WeightNorm) for hook in m.block.conv._forward_pre_hooks.values())
    ]
    if normalised:
        raise ValueError(
            "fusing writes folded weights into the convolutions, but these compute their weight with the old "
            f"weight_norm hook, which would overwrite them: {', '.join(normalised[:3])}"
            f"{', ...' if len(normalised) > 3 else ''}; call torch.nn.utils.remove_weight_norm on them first"
        )
    hooked = [f"{name}.block.norm" for name, m in layers if _hooked(m.block.norm)]
    if hooked:
        raise ValueError(
            "fusing removes the BatchNorms, but these have hooks that would never run again: "
            f"{', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}; remove the hooks first (hooks on the "
            "convolutions are kept)"
        )
    folded = [fold_conv_batchnorm(m.block.conv, m.block.norm) for _, m in layers]  # all computed before any change
    for (_, layer), new in zip(layers, folded):
        # New parameters on the same module: its hooks keep running, and a weight shared with another layer (or an
        # inference tensor, which cannot be written in place) is not folded twice.
        layer.block.conv.weight, layer.block.conv.bias = new.weight, new.bias
        del layer.block.norm
        layer._folded_cache = None  # it held the unfused weights and the removed BatchNorm's tensors
    return module
