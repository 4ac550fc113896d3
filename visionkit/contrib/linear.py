"""oneDNN's matrix product for the token projections of the transformer layers, in CPU inference.

On CPU, float32 matrix products go to the BLAS library PyTorch was built with (MKL in the official wheels, which
picks its code by processor vendor). oneDNN, which PyTorch also ships for its convolutions, was faster here: on the
AMD EPYC the benchmarks ran on, oneDNN's product took 0.49-0.79x of ``F.linear``'s time for nine of the ten
projection shapes of MobileViT-XXS and -S at batch 1, and 1.11x for the tenth (``python
benchmarks/linear_backends.py``); the results agree to float rounding.

The projections stay plain ``nn.Linear`` modules (what quantization, ``torch.fx``, TorchScript and parameter-
efficient fine-tuning tools look for); the transformer layers call them through :func:`project`, which picks the
product.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import _runs_unobserved, is_recording

__all__ = ["project"]

_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inductor_freezes() -> bool:
    """Whether Inductor compiles the graph being traced with frozen (constant) parameters."""
    from torch._inductor import config  # imported already whenever torch.compile traces

    return bool(config.freezing) and not torch.is_grad_enabled()


def _plain_cpu_float32(tensor: torch.Tensor, device: torch.device) -> bool:
    return (
        tensor.device == device
        and tensor.dtype == torch.float32
        and tensor.layout == torch.strided
        and tensor.is_contiguous()  # oneDNN reads the bias (and the weight) as dense
    )


def _onednn_applies(linear: nn.Linear, x: torch.Tensor) -> bool:
    weight, bias = linear.weight, linear.bias
    if not (
        _ONEDNN_LINEAR
        and type(x) is torch.Tensor  # not a tensor subclass, an FX proxy or a nested tensor's wrapper
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.layout == torch.strided
        and not x.is_nested
        and x.dim() >= 1
        and x.shape[-1] == linear.in_features
        and linear.in_features > 0
        and _plain_cpu_float32(weight, x.device)
        and (bias is None or _plain_cpu_float32(bias, x.device))
        and not torch.is_autocast_enabled("cpu")
    ):
        return False
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return False  # the oneDNN call has no backward
    if torch.compiler.is_compiling():
        # Inductor compiles the oneDNN call only with constant weights; exported graphs keep the portable operator
        return not torch.compiler.is_exporting() and torch.backends.mkldnn.enabled and _inductor_freezes()
    # torch._C._get_mkldnn_enabled is what torch.backends.mkldnn.enabled reads, without its descriptor; Python
    # dispatch and function modes (FlopCounterMode, FakeTensorMode, debug modes) see the operator they know
    return (
        torch._C._get_mkldnn_enabled()
        and not is_recording()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )


def project(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)``, computed by oneDNN's matrix product where that is safe.

    The oneDNN call (``torch.ops.mkldnn._linear_pointwise``) replaces the module call only for an exact
    ``nn.Linear`` without hooks (a quantized, replaced or hooked module runs as itself), a plain float32 CPU input
    whose last dimension is ``in_features``, dense float32 parameters on the same device, autocast off and no
    gradient needed. Recorded graphs keep ``F.linear``: TorchScript, tracing, ``torch.fx``, :func:`torch.export.export`
    (hence ONNX and AOTInductor) and function transforms, and so do Python dispatch and function modes such as
    :class:`~torch.utils.flop_counter.FlopCounterMode`. Under :func:`torch.compile` the oneDNN call is recorded only
    when Inductor freezes the parameters (``torch._inductor.config.freezing`` with gradients off, as
    :func:`~visionkit.contrib.compile_for_inference` arranges), the one case in which Inductor compiles it.

    Args:
        linear: the module to apply, usually an ``nn.Linear``.
        x: its input, :math:`(*, H_{in})`.

    Returns:
        ``linear(x)``, :math:`(*, H_{out})`.

    Example:
        >>> layer = nn.Linear(64, 192)
        >>> x = torch.rand(4, 256, 64)
        >>> with torch.no_grad():
        ...     torch.allclose(project(layer, x), layer(x), atol=1e-5)
        True
    """
    if type(linear) is nn.Linear and _runs_unobserved(linear) and _onednn_applies(linear, x):
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "none", [], "")
    return linear(x)
