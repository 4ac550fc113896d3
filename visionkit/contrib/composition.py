"""Consecutive 1x1 convolutions composed into one, in compiled inference with frozen weights.

Two blocks of the backbones end with a 1x1 convolution that has no activation and no residual after it: an
``InvertedResidual`` without shortcut (its ``red_1x1``) and the MobileViTv2 block (``MobileViTBlockV2`` without
fusion: its ``conv_proj``). Where the next block starts with a 1x1 convolution (the ``exp_1x1`` of an inverted
residual without shortcut), nothing nonlinear lies between the two, so they are one affine map: with BatchNorms
(eval mode) folded in, :math:`W_2 (W_1 x + b_1) + b_2 = (W_2 W_1) x + (W_2 b_1 + b_2)`. For :math:`C_{in} \\to
C_{mid} \\to C_{out}` channels the pair costs :math:`C_{mid} (C_{in} + C_{out})` multiply-adds per pixel and the
composition :math:`C_{in} C_{out}`; it is used only where that is fewer, and the intermediate map is never written.

In MobileViTv2 this removes three of the largest convolutions: ``layer_1``'s last projection into ``layer_2``'s first
expansion (:math:`C_{in} = C_{mid}`), and ``conv_proj`` of ``layer_3`` and ``layer_4`` into the expansion that starts
the next level (:math:`C_{mid} = 2 C_{in}`). MobileViT v1 and v3-on-v1 have no pair where composing saves work;
v3-on-v2 has the first of the three (its blocks add their input after ``conv_proj``).

The composition happens only while :func:`torch.compile` traces with gradients off and Inductor's global freezing
flag (``torch._inductor.config.freezing``) set, as :func:`~visionkit.contrib.compile_for_inference` arranges around
each call (``torch.compile``'s ``options={"freezing": True}`` alone reaches Inductor after the trace, so it does not
compose): the weights are then constants, and Inductor computes the product :math:`W_2 W_1` once, at compile time. A
level whose map the caller asks for (:meth:`~visionkit.contrib.MobileViTBackbone.forward_intermediates`) is a
boundary nothing is composed across, and modules with hooks or with a replaced ``forward`` (on the instance, as hook
libraries do, or on the class) run as themselves. Recorded graphs (:func:`torch.export.export`, hence ONNX and
AOTInductor, tracing) keep the official convolutions. The results equal the uncomposed ones to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MobileViTBlockV2
from .layers import ConvLayer, InvertedResidual, _folded_weight_and_bias, _runs_unobserved
from .linear import _inductor_freezes

__all__ = ["composes_pointwise", "run_composed"]

Step = Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


class _LevelEnd(NamedTuple):
    """A marker between steps: the map at this point is the output of ``level``, which the caller keeps."""

    level: int


class _Pointwise(NamedTuple):
    """The parts of a :class:`ConvLayer` that is a 1x1 convolution, an optional BatchNorm, an optional activation."""

    conv: nn.Conv2d
    norm: Optional[nn.Module]
    act: Optional[nn.Module]

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map of the convolution and BatchNorm: weight :math:`(C_{out}, C_{in})`, bias :math:`(C_{out})`."""
        conv = self.conv
        if self.norm is not None:
            weight, bias = _folded_weight_and_bias(conv, self.norm)
        else:
            weight = conv.weight
            bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
        return weight.flatten(1), bias


def composes_pointwise() -> bool:
    """Whether the graph being traced composes consecutive 1x1 convolutions (see the module docstring)."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting() and _inductor_freezes()


# The forwards the decomposed path stands in for: a module whose forward is replaced (on the instance, as hook
# libraries do, or on the class) runs as itself.
_BUILT_FORWARDS = {
    cls: cls.forward
    for cls in (
        ConvLayer, InvertedResidual, MobileViTBlockV2, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.SyncBatchNorm
    )
}


def _runs_as_built(*modules: Optional[nn.Module]) -> bool:
    """Whether no hook would notice, and no replaced ``forward`` would be skipped, if ``modules`` ran decomposed."""
    for module in modules:
        if module is not None and (
            "forward" in module.__dict__ or type(module).forward is not _BUILT_FORWARDS.get(type(module))
        ):
            return False
    return _runs_unobserved(*modules)


def _pointwise(step: Step) -> Optional[_Pointwise]:
    """``step``'s parts when it is a :class:`ConvLayer` (as built, no hooks) with a 1x1 convolution, else None."""
    if type(step) is not ConvLayer or type(step.block) is not nn.Sequential:
        return None
    modules = step.block._modules
    conv, norm, act = modules.get("conv"), modules.get("norm"), modules.get("act")
    if list(modules) != [name for name, module in (("conv", conv), ("norm", norm), ("act", act)) if module is not None]:
        return None
    if type(conv) is not nn.Conv2d or not _runs_as_built(step, step.block, conv, norm) or not _runs_unobserved(act):
        return None
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        return None
    if norm is not None and not (
        type(norm) in (nn.BatchNorm2d, nn.SyncBatchNorm)  # the same computation in eval mode
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
    ):
        return None
    return _Pointwise(conv, norm, act)


def _block_steps(block: nn.Module) -> list[Step]:
    """``block`` as steps whose composition is its forward: its modules where it is a plain chain, else itself."""
    if not _runs_as_built(block):
        return [block]
    if type(block) is InvertedResidual and not block.use_residual:
        chain = block.block
        if type(chain) is nn.Sequential and _runs_as_built(chain):
            return list(chain)
    if type(block) is MobileViTBlockV2 and not block.fuse_local and "forward_before_projection" not in block.__dict__:
        return [lambda x: block.forward_before_projection(x)[1], block.conv_proj]
    return [block]


def _composed(first: _Pointwise, second: _Pointwise) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The weight :math:`(C_{out}, C_{in}, 1, 1)` and bias of ``second``'s convolution after ``first``'s, or None
    where ``first`` has an activation or the composition costs no fewer multiply-adds than the pair."""
    c_in, c_mid, c_out = first.conv.in_channels, first.conv.out_channels, second.conv.out_channels
    if first.act is not None or second.conv.in_channels != c_mid or c_in * c_out >= c_mid * (c_in + c_out):
        return None
    first_weight, first_bias = first.weight_and_bias()
    second_weight, second_bias = second.weight_and_bias()
    dtype = second_weight.dtype
    # float64 products, computed once: Inductor folds them into constants
    weight = second_weight.double() @ first_weight.double()
    bias = second_weight.double() @ first_bias.double() + second_bias.double()
    return weight.to(dtype)[:, :, None, None], bias.to(dtype)


def run_composed(
    stages: Sequence[nn.Module], x: torch.Tensor, kept: Sequence[int] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run ``stages`` one after the other, composing consecutive 1x1 convolutions where that saves work.

    Args:
        stages: the modules to run in order (a backbone's levels).
        x: the input of the first stage.
        kept: indices of stages whose outputs are returned; nothing is composed across their ends.

    Returns:
        The output of the last stage and a dict from each index in ``kept`` to that stage's output.

    Example:
        >>> from visionkit.contrib.layers import ConvLayer
        >>> stage = nn.Sequential(ConvLayer(16, 16, 1, act_layer=None), ConvLayer(16, 32, 1)).eval()
        >>> x = torch.rand(1, 16, 8, 8)
        >>> with torch.no_grad():
        ...     out, maps = run_composed([stage], x, kept=(0,))
        ...     torch.allclose(out, stage(x), atol=1e-5), maps[0] is out
        (True, True)
    """
    steps: list[Union[Step, _LevelEnd]] = []
    for level, stage in enumerate(stages):
        if type(stage) is nn.Sequential and _runs_as_built(stage):
            for block in stage:
                steps.extend(_block_steps(block))
        else:
            steps.append(stage)
        if level in kept:
            steps.append(_LevelEnd(level))
    maps: dict[int, torch.Tensor] = {}
    index = 0
    while index < len(steps):
        step = steps[index]
        index += 1
        if isinstance(step, _LevelEnd):
            maps[step.level] = x
            continue
        first, second = _pointwise(step), _pointwise(steps[index]) if index < len(steps) else None
        composed = _composed(first, second) if first is not None and second is not None else None
        if composed is None:
            x = step(x)
            continue
        x = F.conv2d(x, *composed)
        if second.act is not None:
            x = second.act(x)
        index += 1  # the second convolution ran too
    return x, maps
