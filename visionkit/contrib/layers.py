"""Convolutional building blocks shared by every MobileViT family.

Module and attribute names mirror the official apple/ml-cvnets tree (``block.conv``, ``block.norm``,
``block.act``; ``exp_1x1``, ``conv_3x3``, ``red_1x1``) so that official checkpoints load without renaming.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Callable, Optional

import torch
from kornia.core.exceptions import ValueCheckError
from torch import nn
from torch.autograd import forward_ad
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._checks import check_positive_finite, check_positive_int, check_positive_int_or_pair, check_type

__all__ = ["ConvLayer", "InvertedResidual", "make_divisible"]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10%.

    This is the channel rounding rule of the official MobileViT code.

    Args:
        value: the number to round.
        divisor: the multiple to round to.
        min_value: the smallest result allowed; ``divisor`` when ``None``.

    Returns:
        The rounded value.

    Example:
        >>> make_divisible(32 * 0.75, 8)
        24
        >>> make_divisible(64 * 0.75, 16)
        48
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def is_recording() -> bool:
    """Whether TorchScript, a tracer, ``torch.compile`` or ``torch.export`` records the forward, or a function
    transform (``torch.func.vmap``/``grad``/``jvp``) or forward-mode AD (``torch.autograd.forward_ad``) runs it.

    Eager-only speed-ups (memory layout, run-time BatchNorm folding, oneDNN's packed weights, the fused training
    function) step aside then, so that recorded graphs hold the plain operations, compilers make their own choices,
    and transforms see operations they have rules for (a packed oneDNN call would drop a forward-mode tangent).
    """
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or in_function_transform()
    )


def in_function_transform() -> bool:
    """Whether ``torch.func`` (``vmap``, ``grad``, ``jvp``, ...) or ``torch.autograd.forward_ad`` runs the forward."""
    return torch._C._functorch.peek_interpreter_stack() is not None or forward_ad._current_level >= 0


def _batchnorm_buffers(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each running-statistics buffer of the training-mode BatchNorms in ``module``, with a copy of its value."""
    return [
        (buffer, buffer.clone())
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training
        for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        if buffer is not None
    ]


_SINGLE_VALUE_MESSAGE = "Expected more than 1 value per channel when training"


@contextlib.contextmanager
def batchnorm_statistics_restored_on_error(module: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Run a training forward of ``module`` on a batch of one so that a failure leaves the statistics as they were.

    In training mode a BatchNorm that sees one value per channel (batch 1 and a 1x1 map somewhere in the network)
    raises only after every BatchNorm before it has updated its running statistics. For batches of one (the only
    ones where that can happen) the statistics are copied first and put back when the forward raises, and
    PyTorch's message gets the input size and what to do. Other batches, eval mode and recorded graphs run as they
    are.
    """
    if not module.training or not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != 1 or is_recording():
        yield
        return
    saved = _batchnorm_buffers(module)
    try:
        yield
    except BaseException as error:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        if isinstance(error, ValueError) and str(error).startswith(_SINGLE_VALUE_MESSAGE):
            raise ValueError(
                f"in training mode every BatchNorm needs more than one value per channel, but with a batch of 1 "
                f"and input {tuple(x.shape)} a map in {type(module).__name__} is 1x1 ({error}); train with a batch "
                f"of at least 2 or a larger input, or call .eval(). The running statistics of this "
                f"{type(module).__name__} were left as they were."
            ) from error
        raise


class _BatchNormSiLU(torch.autograd.Function):
    """Training-mode BatchNorm followed by SiLU that keeps only the BatchNorm *input* for backward.

    Run as two modules, BatchNorm saves its input and SiLU saves BatchNorm's output: two tensors of the layer's
    output size per layer. Here the normalised values are recomputed from the input in backward (a few elementwise
    operations), so one tensor per layer is kept. Forward values, gradients and running statistics are those of
    ``F.silu(F.batch_norm(...))``: the same ATen BatchNorm kernels run forward and backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: "torch.autograd.function.FunctionCtx",
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        normalized, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, bias, running_mean, running_var, mean, invstd)
        ctx.eps = eps
        return nn.functional.silu(normalized)

    @staticmethod
    def backward(ctx: "torch.autograd.function.FunctionCtx", grad_out: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight, bias, running_mean, running_var, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # backward(create_graph=True), e.g. a gradient penalty: the gradients must carry their own graph, which
            # the kernels below do not record (the batch statistics depend on x), so differentiate a recomputation.
            wanted = [t for t, need in zip((x, weight, bias), ctx.needs_input_grad[:3]) if need]
            out = nn.functional.silu(nn.functional.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps))
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None, None, None)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = invstd * weight
        normalized = torch.addcmul((bias - mean * scale).view(shape), x, scale.view(shape))
        grad_normalized = torch.ops.aten.silu_backward(grad_out, normalized)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_normalized, x, weight, running_mean, running_var, mean, invstd, True, ctx.eps,
            list(ctx.needs_input_grad[:3]),
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _can_fuse_batchnorm_silu(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`_BatchNormSiLU` may replace ``act(norm(x))`` exactly (eager training, plain modules).

    :meth:`ConvLayer.forward` has already ruled out recording (tracing, compile, export) and hooks.
    """
    return (
        type(norm) is nn.BatchNorm2d
        and type(act) is nn.SiLU
        and norm.training
        and norm.affine
        and norm.track_running_stats
        and torch.is_grad_enabled()
        and x.requires_grad
        and x.numel() > x.shape[1]  # empty or one value per channel: the plain modules handle (or refuse) it
        and x.dtype in (torch.float32, torch.float64)
        and x.device.type in ("cpu", "cuda")  # devices with an autocast state to ask (not "meta")
        and not torch.is_autocast_enabled(x.device.type)
    )


def _batchnorm_silu(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))`` in training mode through :class:`_BatchNormSiLU`, updating the running statistics."""
    norm.num_batches_tracked.add_(1)
    momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    return _BatchNormSiLU.apply(x, norm.weight, norm.bias, norm.running_mean, norm.running_var, momentum, norm.eps)


def _runs_unobserved(*modules: Optional[nn.Module]) -> bool:
    """Whether no forward or backward hook (global, or on any of ``modules``) would notice a module being skipped."""
    global_hooks = nn.modules.module
    if (
        global_hooks._global_forward_hooks
        or global_hooks._global_forward_pre_hooks
        or global_hooks._global_backward_hooks
        or global_hooks._global_backward_pre_hooks
    ):
        return False
    for module in modules:  # a plain loop, not a generator: this runs on every call of every ConvLayer
        if module is not None and (
            module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        ):
            return False
    return True


def _can_fold_batchnorm(norm: nn.Module) -> bool:
    """Whether ``norm`` (in eval mode, with running statistics) may be folded into the convolution at run time.

    :meth:`ConvLayer.forward` has already ruled out recording and hooks. CPU only: there the fold saves a pass over
    the activations; on a GPU these small models are bound by kernel launches, and the fold's few small kernels
    cost more than the one BatchNorm kernel they replace.
    """
    return (
        type(norm) in (nn.BatchNorm2d, nn.SyncBatchNorm)  # the same computation in eval mode
        and not norm.training
        and norm.track_running_stats
        and (running_mean := norm._buffers.get("running_mean")) is not None
        and running_mean.device.type == "cpu"
    )


def _folded_weight_and_bias(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to ``norm(conv(x))`` in eval mode.

    Five small kernels (``addcmul`` folds the shift in one): on batch-1 inputs their dispatch is a measurable share of
    the layer, so the fold keeps the count low.
    """
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
        shift = torch.addcmul(norm.bias, norm.running_mean, scale, value=-1)
    else:
        shift = -norm.running_mean * scale
    if conv.bias is not None:
        shift = torch.addcmul(shift, conv.bias, scale)
    weight = conv.weight
    if scale.dtype != weight.dtype:  # float32 statistics of a float64 or half convolution
        scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), shift


def _weight_sources(conv: nn.Conv2d, norm: Optional[nn.Module]) -> tuple[Optional[torch.Tensor], ...]:
    # The modules' own dicts: nn.Module.__getattr__ costs about a microsecond per parameter or buffer. Both modules
    # are of the plain types (checked by the caller), so nothing is a property.
    conv_params = conv._parameters
    if norm is None:
        return (conv_params["weight"], conv_params.get("bias"))
    norm_params, norm_buffers = norm._parameters, norm._buffers
    return (
        conv_params["weight"],
        conv_params.get("bias"),
        norm_params.get("weight"),
        norm_params.get("bias"),
        norm_buffers.get("running_mean"),
        norm_buffers.get("running_var"),
        # The BatchNorm kernel updates the running statistics in place without bumping their version counters;
        # the module's own num_batches_tracked.add_(1) alongside does bump its counter.
        norm_buffers.get("num_batches_tracked"),
    )


def _weight_stamp(tensors: tuple[Optional[torch.Tensor], ...]) -> Optional[tuple]:
    """Identity, version counter, storage address, dtype and device of each tensor.

    Any in-place change, ``.data`` swap, replacement or move changes it. ``None`` when a tensor has no version
    counter (an inference tensor), so that nothing is cached. Built in one comprehension and compared as one tuple:
    it runs on every inference call of every :class:`ConvLayer`.
    """
    try:
        stamp = [
            None if tensor is None else (id(tensor), tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device)
            for tensor in tensors
        ]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None
    return tuple(stamp)


_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Global ``torch.optim`` post-step hook: any optimizer step may have changed weights in place without bumping
    their version counters (fused optimizers do), so cached inference weights made before it are stale."""
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class _ConvWeightCache:
    """The weight and bias a :class:`ConvLayer` convolves with at inference, with what they were computed from.

    ``weight`` and ``bias`` are the BatchNorm-folded ones, or the convolution's own when there is no BatchNorm;
    ``packed`` is ``weight`` reordered once for oneDNN (see :func:`_can_use_packed_weight`). An entry is reused only
    when the modules hold the very same tensor objects, each with the same version counter, storage, dtype and
    device, and the same ``eps``. It keeps references to those tensors, so an object id cannot be recycled while the
    entry lives.
    """

    __slots__ = ("inputs", "stamp", "eps", "weight", "bias", "packed", "steps")

    def __init__(
        self, inputs: tuple, stamp: tuple, eps: Optional[float], weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> None:
        self.inputs, self.stamp, self.eps, self.weight, self.bias = inputs, stamp, eps, weight, bias
        self.packed: Optional[torch.Tensor] = None
        self.steps = _optimizer_steps  # optimizer steps taken in this process when the entry was made

    def matches(self, stamp: Optional[tuple], eps: Optional[float]) -> bool:
        # The stamp holds the inputs' ids; the entry keeps the inputs alive, so an equal id is the same object.
        return stamp is not None and self.stamp == stamp and self.eps == eps and self.steps == _optimizer_steps


_ONEDNN_CONVOLUTION = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# PyTorch sends a float32 CPU convolution with batch 1, no groups, a kernel of at most 3x3 and at most this many
# input values to its native kernel instead of oneDNN. For 1x1 kernels the native kernel is the faster one there
# (v2 attention inputs (1, 128, 4, 16) and (1, 256, 4, 16): 48 and 39 µs native, 55 and 50 µs with a packed oneDNN
# weight). For 3x3 kernels a packed weight is faster in isolation ((1, 320, 8, 8) into 160 channels: 662 µs native,
# 268 µs packed) but made no measurable difference in the models, so the packed weight is used only where F.conv2d
# would have called oneDNN anyway, and such layers keep F.conv2d's results exactly.
_NATIVE_CONVOLUTION_MAX_NUMEL = 20480


def _can_use_packed_weight(conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a oneDNN weight reordered once may replace ``conv``'s call (float32, CPU, channels-last input).

    ``F.conv2d`` hands such inputs to oneDNN too, but reorders the plain weight into oneDNN's blocked layout on every
    call; at batch 1 that reorder is a large share of a small convolution. Channels-last only, because oneDNN then
    returns channels-last exactly as ``F.conv2d`` does; and only where ``F.conv2d`` would call oneDNN at all.
    """
    return (
        _ONEDNN_CONVOLUTION
        and torch._C._get_mkldnn_enabled()  # what torch.backends.mkldnn.enabled reads, without its descriptor
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and x.shape[1] == conv.in_channels  # others get F.conv2d's message, not oneDNN's reorder failure
        and x.device.type == "cpu"
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not torch.is_autocast_enabled("cpu")
        and (
            x.shape[0] > 1
            or conv.groups > 1
            or x.numel() > _NATIVE_CONVOLUTION_MAX_NUMEL
            or min(conv.kernel_size) > 3
        )
    )


def _inference_parameters(owner: "ConvLayer", conv: nn.Conv2d, norm: Optional[nn.Module]) -> _ConvWeightCache:
    """The (folded) weight and bias for a call without gradients, from ``owner``'s cache when still valid."""
    inputs = _weight_sources(conv, norm)
    stamp = _weight_stamp(inputs)
    eps = None if norm is None else norm.eps
    cache = owner._folded_cache
    if cache is not None and cache.matches(stamp, eps):
        return cache
    if norm is None:
        weight, bias = conv.weight, conv.bias
    else:
        weight, bias = _folded_weight_and_bias(conv, norm)
    entry = _ConvWeightCache(inputs, stamp, eps, weight, bias)
    owner._folded_cache = entry if stamp is not None else None  # inference tensors: used once, not kept
    return entry


def _inference_conv(owner: "ConvLayer", conv: nn.Conv2d, norm: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` or ``conv(x)`` without gradients, from the cached weights (packed for oneDNN if it applies)."""
    entry = _inference_parameters(owner, conv, norm)
    if entry is owner._folded_cache and _can_use_packed_weight(conv, entry.weight, x):
        if entry.packed is None:  # the input size is a hint for the layout; other sizes run with the same weight
            entry.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                entry.weight.detach().to_mkldnn(), conv.padding, conv.stride, conv.dilation, conv.groups, x.shape
            )
        return torch.ops.mkldnn._convolution_pointwise(
            x, entry.packed, entry.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "none", [], ""
        )
    return conv._conv_forward(x, entry.weight, entry.bias)


def _conv_with_folded_batchnorm(
    conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, owner: Optional["ConvLayer"] = None
) -> torch.Tensor:
    """``norm(conv(x))`` in eval mode as one convolution whose weight and bias absorb the BatchNorm.

    Without gradients, ``owner`` (the calling :class:`ConvLayer`) keeps the folded weight and bias until one of
    their inputs changes, so repeated inference calls skip the fold. With gradients the fold is recomputed on every
    call and stays part of the autograd graph.
    """
    if owner is None or torch.is_grad_enabled():
        weight, bias = _folded_weight_and_bias(conv, norm)
        return conv._conv_forward(x, weight, bias)
    return _inference_conv(owner, conv, norm, x)


class ConvLayer(nn.Module):
    """Convolution, then an optional BatchNorm, then an optional activation.

    Padding is ``(kernel_size - 1) // 2 * dilation`` so spatial size is kept at stride 1. The convolution has a
    bias only when ``bias=True``.

    In eager eval mode on CPU the BatchNorm is folded into the convolution's weight and bias at run time (one kernel
    instead of two; :func:`~visionkit.contrib.fuse_batchnorm` does the same once and for all). Without gradients the
    layer keeps the folded weight and bias (one extra copy of the convolution's parameters) and reuses them until
    one of their inputs changes: an in-place update, a new parameter or buffer, ``eps``, a BatchNorm update of the
    running statistics, or a move to another dtype or device. With gradients the fold is recomputed on each call,
    so it trains the BatchNorm's affine parameters. Fused optimizers write the parameters without bumping version
    counters, so every optimizer step (counted by a global ``torch.optim`` step hook this module registers) also
    invalidates the copy. ``train()`` drops the copy, and pickles and deep copies leave it out. In-place edits
    through ``.data`` are invisible to version counters (as they are to autograd): call ``model.train()`` (then
    ``model.eval()``) after them. On CPU, for float32
    ``channels_last`` inputs without gradients, the layer (fused or not) also keeps its weight reordered once into
    oneDNN's blocked layout and calls oneDNN with it, instead of letting ``F.conv2d`` reorder the plain weight on
    every call. That is a second copy of the weight. Small batch-1 inputs, which ``F.conv2d`` gives to PyTorch's own
    (there faster) kernel, keep that path; the outputs agree with ``F.conv2d`` to float rounding. In training with
    gradients, a BatchNorm followed by SiLU runs as one autograd function that keeps only the
    BatchNorm input for backward and recomputes the rest (same values, gradients and running statistics as the two
    modules, about a third less activation memory for the layer). Without gradients a SiLU overwrites the
    convolution's output instead of allocating its own. Modules replaced by other types (e.g. ``SyncBatchNorm``),
    modules with forward or backward hooks (hooks see every call), tracing, ``torch.export`` and
    ``torch.compile`` use the plain modules (as does autocast for the training function). TorchScript cannot
    script this layer (nor the backbones built from it): trace it, or use ``torch.export``.

    Args:
        in_channels: input channels :math:`C_{in}`.
        out_channels: output channels :math:`C_{out}`.
        kernel_size: square kernel size.
        stride: convolution stride, an int or a pair ``(sy, sx)``.
        dilation: convolution dilation.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        bias: whether the convolution has a bias.
        norm: whether a ``BatchNorm2d`` follows the convolution.
        act_layer: activation module factory, or ``None`` for no activation.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, H', W')`

    Raises:
        TypeError: a size is not an int (``stride``: or a pair of them), or ``bias`` or ``norm`` is not a bool.
        ValueError: a size is not positive, ``stride`` is a sequence of other than two, or ``groups`` does not
            divide both channel counts.

    Example:
        >>> layer = ConvLayer(3, 16, kernel_size=3, stride=2)
        >>> layer(torch.rand(1, 3, 32, 32)).shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act_layer: Optional[Callable[[], nn.Module]] = nn.SiLU,
    ) -> None:
        super().__init__()
        in_channels, out_channels, kernel_size, dilation, groups = (
            check_positive_int(name, value)
            for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                                ("kernel_size", kernel_size), ("dilation", dilation), ("groups", groups))
        )
        stride = check_positive_int_or_pair("stride", stride)
        if in_channels % groups or out_channels % groups:
            raise ValueCheckError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})",
                actual_value=groups,
            )
        for name, flag in (("bias", bias), ("norm", norm)):
            check_type(name, flag, bool)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        if norm:
            layers["norm"] = nn.BatchNorm2d(out_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        self.block = nn.Sequential(layers)
        self._folded_cache: Optional[_ConvWeightCache] = None

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state["_folded_cache"] = None  # pickles and deep copies carry the parameters, not a copy derived from them
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_folded_cache", None)  # modules pickled before the cache existed
        super().__setstate__(state)

    def train(self, mode: bool = True) -> "ConvLayer":
        """Set training mode (see :meth:`torch.nn.Module.train`); training mode drops the cached inference weights.

        ``eval()`` keeps them, so calling it before every prediction costs nothing.
        """
        if mode:
            self._folded_cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        modules = block._modules  # plain dict lookups: nn.Module.__getattr__ costs microseconds per call
        conv, norm, act = modules["conv"], modules.get("norm"), modules.get("act")
        if is_recording() or not _runs_unobserved(block, conv, norm, act) or type(conv) is not nn.Conv2d:
            # Hooks must see every module's own call, and a replaced convolution must run its own forward.
            return block(x)
        if norm is not None and _can_fold_batchnorm(norm):
            y = _conv_with_folded_batchnorm(conv, norm, x, self)
        elif norm is None and x.device.type == "cpu" and not torch.is_grad_enabled():
            y = _inference_conv(self, conv, None, x)
        else:
            y = conv(x)
            if norm is not None:
                if act is not None and _can_fuse_batchnorm_silu(norm, act, y):
                    return _batchnorm_silu(norm, y)
                y = norm(y)
        if act is None:
            return y
        if type(act) is nn.SiLU and not y.requires_grad:
            # y is this call's own fresh buffer: reusing it skips an allocation, which for the large early maps
            # (fresh pages from the OS) cost more than the activation itself.
            return nn.functional.silu(y, inplace=True)
        return act(y)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual ("MV2"): 1x1 expand, depthwise 3x3, 1x1 reduce.

    The residual is added only when ``stride == 1`` and ``in_channels == out_channels``.

    Args:
        in_channels: input channels :math:`C_{in}`.
        out_channels: output channels :math:`C_{out}`.
        stride: stride of the depthwise convolution.
        expand_ratio: hidden width is ``make_divisible(round(in_channels * expand_ratio), 8)``.
        dilation: dilation of the depthwise convolution.
        act_layer: activation used after the expansion and depthwise convolutions.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, H / s, W / s)` (rounded up) for stride :math:`s`.

    Raises:
        TypeError: ``expand_ratio`` is not a real number.
        ValueError: ``expand_ratio`` is not positive and finite.

    Example:
        >>> block = InvertedResidual(16, 24, stride=2, expand_ratio=2)
        >>> block(torch.rand(1, 16, 32, 32)).shape
        torch.Size([1, 24, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        expand_ratio: float,
        dilation: int = 1,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        expand_ratio = check_positive_finite("expand_ratio", expand_ratio)
        expand = not math.isclose(expand_ratio, 1.0)
        hidden = make_divisible(int(round(in_channels * expand_ratio)), 8) if expand else in_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expand:
            layers["exp_1x1"] = ConvLayer(in_channels, hidden, 1, act_layer=act_layer)
        layers["conv_3x3"] = ConvLayer(
            hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act_layer=act_layer
        )
        layers["red_1x1"] = ConvLayer(hidden, out_channels, 1, act_layer=None)
        self.block = nn.Sequential(layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)
