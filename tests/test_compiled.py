"""The oneDNN inference path of the transformer projections, and compile_for_inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from visionkit.contrib import CompiledInference, MobileViT, MobileViTv2, compile_for_inference
from visionkit.contrib.linear import Linear

ONEDNN = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="this PyTorch build has no oneDNN linear",
)
ONEDNN_LINEAR = "mkldnn._linear_pointwise"


class _Operators(TorchDispatchMode):
    """Records the operators a call dispatches (the mode itself must not change the path, see below)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _profiled_operators(call) -> list[str]:  # noqa: ANN001
    """Operator names the profiler saw in ``call()`` (a dispatch mode would itself switch the oneDNN path off)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        call()
    return [event.name for event in profiler.events()]


def _layer() -> Linear:
    return Linear(64, 192)


def test_linear_keeps_nn_linear_parameters_keys_and_repr() -> None:
    layer = _layer()
    plain = nn.Linear(64, 192)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(plain.state_dict())
    assert repr(layer) == repr(plain)


@ONEDNN
@pytest.mark.parametrize("shape", [(1024, 64), (4, 256, 64), (2, 3, 5, 64), (64,), (0, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_inference_runs_onednn_and_matches_f_linear(shape: tuple[int, ...], bias: bool) -> None:
    layer = Linear(64, 192, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        names = _profiled_operators(lambda: layer(x))
        actual = layer(x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert any(ONEDNN_LINEAR.replace(".", "::") in name for name in names), names
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@ONEDNN
def test_linear_on_a_strided_input_matches_f_linear() -> None:
    layer = _layer()
    x = torch.randn(256, 4, 64).transpose(0, 1)  # not contiguous
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@ONEDNN
@pytest.mark.parametrize(
    "case", ["grad", "input_grad", "autocast", "onednn_off", "float64", "dispatch_mode", "jvp", "trace"]
)
def test_linear_keeps_f_linear_where_onednn_must_not_run(case: str) -> None:
    layer = _layer()
    x = torch.randn(4, 16, 64)
    if case == "grad":  # the oneDNN call has no backward
        out = layer(x)
        out.sum().backward()
        assert layer.weight.grad is not None
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
        return
    if case == "input_grad":
        layer.requires_grad_(False)
        x.requires_grad_(True)
        layer(x).sum().backward()
        torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))
        return
    if case == "dispatch_mode":  # flop counters and fake tensors know F.linear, not the oneDNN operator
        with torch.no_grad(), _Operators() as seen:
            layer(x)
        assert ONEDNN_LINEAR not in seen.names and {"aten.addmm", "aten.linear", "aten.mm"} & set(seen.names)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            layer(x)
        assert counter.get_total_flops() == 2 * 4 * 16 * 64 * 192
        return
    if case == "jvp":  # forward-mode AD needs an operator with a forward derivative
        tangent = torch.randn_like(x)
        with torch.no_grad():
            _, derivative = torch.func.jvp(layer, (x,), (tangent,))
        torch.testing.assert_close(derivative, F.linear(tangent, layer.weight))
        return
    if case == "trace":
        with torch.no_grad():
            traced = torch.jit.trace(layer, x)
        assert "mkldnn" not in str(traced.graph) and "aten::linear" in str(traced.graph)
        return
    if case == "float64":
        layer, x = layer.double(), x.double()
    context = {
        "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "onednn_off": lambda: torch.backends.mkldnn.flags(enabled=False),
    }.get(case, torch.no_grad)
    with torch.no_grad(), context():
        names = _profiled_operators(lambda: layer(x))
    assert not any("mkldnn::_linear_pointwise" in name for name in names), names


@ONEDNN
def test_exported_and_plainly_compiled_graphs_hold_the_plain_linear() -> None:
    layer = _layer().eval()
    x = torch.randn(4, 16, 64)
    with torch.no_grad():
        program = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("mkldnn" in target for target in targets) and "aten.linear.default" in targets

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():  # without freezing Inductor could not compile the oneDNN call: it is left out
        torch.compile(layer, fullgraph=True, backend=capture)(x)
    assert graphs and all("mkldnn" not in str(node.target) for gm in graphs for node in gm.graph.nodes)
    from torch._inductor import config

    graphs.clear()
    torch._dynamo.reset()
    with torch.no_grad(), config.patch(freezing=True):
        out = torch.compile(layer, fullgraph=True, backend=capture)(x)
    assert any(ONEDNN_LINEAR in str(node.target) for gm in graphs for node in gm.graph.nodes)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_compile_for_inference_matches_the_model_and_restores_the_freezing_flag() -> None:
    from torch._inductor import config

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MobileViT(mode="xxs").eval().fuse()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    compiled = compile_for_inference(model)
    assert isinstance(compiled, CompiledInference) and compiled.model is model
    assert repr(compiled) == "CompiledInference(MobileViT)"
    assert model.conv_1.block.conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = config.freezing
    names = _profiled_operators(lambda: compiled(x))
    assert config.freezing == before
    out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert not out.requires_grad
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        assert any("mkldnn::_linear_pointwise" in name for name in names), "the projections were not frozen"


    def fail(*args: object) -> None:
        assert config.freezing is True
        raise RuntimeError("compilation failed")

    compiled._compiled = fail
    with pytest.raises(RuntimeError, match="compilation failed"):
        compiled(x)
    assert config.freezing == before  # restored when the call raises


def test_compile_for_inference_refuses_bad_arguments_without_changing_the_model() -> None:
    model = MobileViTv2(0.5)
    weight = model.conv_1.block.conv.weight
    with pytest.raises(ValueError, match="eval mode.*got training mode"):
        compile_for_inference(model)
    with pytest.raises(TypeError, match="model"):
        compile_for_inference(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dynamic"):
        compile_for_inference(model.eval(), dynamic="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fullgraph"):
        compile_for_inference(model.eval(), fullgraph=1)  # type: ignore[arg-type]
    assert model.conv_1.block.conv.weight is weight and weight.is_contiguous()
