"""Deploy-time simplification: fold every BatchNorm into the convolution before it.

:func:`fuse_batchnorm` works on any module tree built from :class:`~visionkit.contrib.layers.ConvLayer` blocks
(backbones and heads alike). A folded ``ConvLayer`` keeps its ``block.conv`` (now with a bias) and ``block.act``
and loses ``block.norm``, so the fused model has fewer kernels and no BatchNorm at all. It is meant for
inference: the folded statistics no longer update, hence fusing a model in training mode is refused.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

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


def fuse_batchnorm(module: ModuleT) -> ModuleT:
    """Fold every BatchNorm of every :class:`~visionkit.contrib.layers.ConvLayer` in ``module``, in place.

    Args:
        module: a model in eval mode (backbone, head, or a ``nn.Sequential`` of both).

    Returns:
        ``module`` itself, fused (outputs equal the unfused model's within float rounding).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` (or a submodule) is in training mode; nothing is changed then.

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
    layers = [m for m in module.modules() if isinstance(m, ConvLayer) and "norm" in m.block._modules]
    folded = [fold_conv_batchnorm(m.block.conv, m.block.norm) for m in layers]  # all computed before any change
    for layer, conv in zip(layers, folded):
        conv.train(False)
        layer.block.conv = conv
        del layer.block.norm
    return module
