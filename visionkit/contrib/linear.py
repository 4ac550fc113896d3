"""The token projections of the transformer layers: ``nn.Linear`` with a faster CPU inference path.

On CPU, float32 matrix products go to the BLAS library PyTorch was built with (MKL in the official wheels, which
picks its code by processor vendor). oneDNN, which PyTorch also ships for its convolutions, was faster here: on the
AMD EPYC the benchmarks ran on, oneDNN's product took 0.49-0.79x of ``F.linear``'s time for nine of the ten
projection shapes of MobileViT-XXS and -S at batch 1, and 1.11x for the tenth (``python
benchmarks/linear_backends.py``); the results agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import is_recording

__all__ = ["Linear"]

_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inductor_freezes() -> bool:
    """Whether Inductor compiles the graph being traced with frozen (constant) parameters."""
    from torch._inductor import config  # imported already whenever torch.compile traces

    return bool(config.freezing) and not torch.is_grad_enabled()


class Linear(nn.Linear):
    """``torch.nn.Linear`` (a subclass) that runs oneDNN's matrix product for CPU inference.

    Parameters, state-dict keys and results are those of ``torch.nn.Linear``. The oneDNN call
    (``torch.ops.mkldnn._linear_pointwise``) replaces ``F.linear`` when the input and weight are float32 on CPU,
    oneDNN is enabled, autocast is off and no gradient is needed. Recorded graphs keep ``F.linear``: TorchScript,
    tracing, :func:`torch.export.export` (hence ONNX and AOTInductor) and function transforms, and so do Python
    dispatch modes such as :class:`~torch.utils.flop_counter.FlopCounterMode`. Under
    :func:`torch.compile` the oneDNN call is recorded only when Inductor freezes the parameters
    (``torch._inductor.config.freezing`` with gradients off, as :func:`~visionkit.contrib.compile_for_inference`
    arranges), the one case in which Inductor compiles it.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to add a learnable bias.

    Shape:
        - Input: :math:`(*, H_{in})`
        - Output: :math:`(*, H_{out})`

    Example:
        >>> layer = Linear(64, 192)
        >>> x = torch.rand(4, 256, 64)
        >>> with torch.no_grad():
        ...     torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        True
    """

    def _onednn_applies(self, x: torch.Tensor) -> bool:
        if not (
            _ONEDNN_LINEAR
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and (self.bias is None or self.bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu")
        ):
            return False
        if torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        ):
            return False  # the oneDNN call has no backward
        if torch.compiler.is_compiling():
            return not torch.compiler.is_exporting() and torch.backends.mkldnn.enabled and _inductor_freezes()
        # torch._C._get_mkldnn_enabled is what torch.backends.mkldnn.enabled reads, without its descriptor; Python
        # dispatch modes (FlopCounterMode, FakeTensorMode, debug modes) see the operator they know
        return torch._C._get_mkldnn_enabled() and not is_recording() and torch._C._len_torch_dispatch_stack() == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn_applies(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
