"""The oneDNN inference path of the transformer projections, and compile_for_inference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from visionkit.contrib import CompiledInference, MobileViT, MobileViTv2, compile_for_inference
from visionkit.contrib.attention import TransformerEncoder
from visionkit.contrib.layers import ConvLayer
from visionkit.contrib.linear import project

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


def _layer() -> nn.Linear:
    return nn.Linear(64, 192)


def _ran_onednn(names: list[str]) -> bool:
    return any("mkldnn::_linear_pointwise" in name for name in names)


@ONEDNN
@pytest.mark.parametrize("shape", [(1024, 64), (4, 256, 64), (2, 3, 5, 64), (64,), (0, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_project_runs_onednn_in_inference_and_matches_the_module(shape: tuple[int, ...], bias: bool) -> None:
    layer = nn.Linear(64, 192, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        names = _profiled_operators(lambda: project(layer, x))
        actual = project(layer, x)
        expected = layer(x)
    assert _ran_onednn(names), names
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@ONEDNN
def test_project_on_a_strided_input_runs_onednn_and_matches_the_module() -> None:
    layer = _layer()
    x = torch.randn(256, 4, 64).transpose(0, 1)  # not contiguous
    with torch.no_grad():
        assert _ran_onednn(_profiled_operators(lambda: project(layer, x)))
        torch.testing.assert_close(project(layer, x), layer(x), atol=1e-5, rtol=1e-5)


def _strided_bias() -> nn.Linear:
    layer = nn.Linear(8, 4)
    layer.bias = nn.Parameter(torch.randn(8)[::2])  # oneDNN would read it as dense
    return layer


class _Logged(nn.Linear):
    pass


class _Projection(nn.Module):
    """A module whose forward calls project, as the attention layers do."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.linear, x)


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return func(*args, **(kwargs or {}))


@ONEDNN
@pytest.mark.parametrize(
    "case",
    ["grad", "input_grad", "autocast", "onednn_off", "float64", "dispatch_mode", "function_mode", "jvp", "trace",
     "strided_bias", "subclass", "hook"],
)
def test_project_keeps_the_module_call_where_onednn_must_not_run(case: str) -> None:
    layer = _layer()
    x = torch.randn(4, 16, 64)
    if case == "grad":  # the oneDNN call has no backward
        out = project(layer, x)
        out.sum().backward()
        assert layer.weight.grad is not None
        torch.testing.assert_close(out, layer(x))
        return
    if case == "input_grad":
        layer.requires_grad_(False)
        x.requires_grad_(True)
        project(layer, x).sum().backward()
        torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))
        return
    if case == "dispatch_mode":  # flop counters and fake tensors know F.linear, not the oneDNN operator
        with torch.no_grad(), _Operators() as seen:
            project(layer, x)
        assert ONEDNN_LINEAR not in seen.names and {"aten.addmm", "aten.linear", "aten.mm"} & set(seen.names)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            project(layer, x)
        assert counter.get_total_flops() == 2 * 4 * 16 * 64 * 192
        return
    if case == "jvp":  # forward-mode AD needs an operator with a forward derivative
        tangent = torch.randn_like(x)
        with torch.no_grad():
            _, derivative = torch.func.jvp(lambda t: project(layer, t), (x,), (tangent,))
        torch.testing.assert_close(derivative, F.linear(tangent, layer.weight))
        return
    if case == "trace":
        with torch.no_grad():
            traced = torch.jit.trace(_Projection(layer), x)
        graph = str(traced.inlined_graph)
        assert "mkldnn::_linear_pointwise" not in graph and "aten::linear" in graph
        return
    if case == "float64":
        layer, x = layer.double(), x.double()
    if case == "strided_bias":
        layer, x = _strided_bias(), torch.randn(3, 8)
    if case == "subclass":  # e.g. a quantized or instrumented replacement: it runs its own forward
        layer = _Logged(64, 192)
    calls: list[int] = []
    if case == "hook":
        layer.register_forward_hook(lambda module, args, out: calls.append(1))
    context = {
        "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "onednn_off": lambda: torch.backends.mkldnn.flags(enabled=False),
        "function_mode": _FunctionMode,
    }.get(case, torch.no_grad)
    with torch.no_grad(), context():
        names = _profiled_operators(lambda: project(layer, x))
        out = project(layer, x)
    assert not _ran_onednn(names), names
    if case != "autocast":
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    if case == "hook":
        assert calls == [1, 1]


@ONEDNN
def test_project_raises_what_the_module_raises() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multiplied"):
        project(nn.Linear(8, 4), torch.randn(3, 7))
    with torch.no_grad(), pytest.raises(RuntimeError, match="expected device|same device|meta"):
        project(nn.Linear(8, 4, device="meta"), torch.randn(3, 8))
    with torch.no_grad():
        assert project(nn.Linear(0, 4), torch.randn(3, 0)).shape == (3, 4)


def test_attention_layers_keep_plain_linears_for_scripting_fx_and_quantization() -> None:
    encoder = TransformerEncoder(16, 32, num_heads=2).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = encoder(x)
        torch.testing.assert_close(torch.jit.script(encoder)(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.fx.symbolic_trace(encoder)(x), expected, atol=1e-5, rtol=1e-5)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8)
    projections = [quantized.pre_norm_mha[1].qkv_proj, quantized.pre_norm_mha[1].out_proj,
                   quantized.pre_norm_ffn[1], quantized.pre_norm_ffn[4]]
    assert all(type(module).__module__.startswith("torch.ao.nn.quantized") for module in projections)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), expected, atol=0.1, rtol=0.1)  # int8 weights: a coarse match
    calls: list[int] = []
    encoder.pre_norm_ffn.register_forward_hook(lambda module, args, out: calls.append(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), expected)
    assert calls == [1]


@ONEDNN
def test_exported_and_plainly_compiled_graphs_hold_the_plain_linear() -> None:
    layer = _layer().eval()
    x = torch.randn(4, 16, 64)
    module = _Projection(layer)
    with torch.no_grad():
        program = torch.export.export(module, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("mkldnn" in target for target in targets) and "aten.linear.default" in targets

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():  # without freezing Inductor could not compile the oneDNN call: it is left out
        torch.compile(module, fullgraph=True, backend=capture)(x)
    assert graphs and all("mkldnn" not in str(node.target) for gm in graphs for node in gm.graph.nodes)
    from torch._inductor import config

    graphs.clear()
    torch._dynamo.reset()
    with torch.no_grad(), config.patch(freezing=True):
        out = torch.compile(module, fullgraph=True, backend=capture)(x)
    assert any(ONEDNN_LINEAR in str(node.target) for gm in graphs for node in gm.graph.nodes)
    torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)


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
    codes: list[str] = []
    names = _profiled_operators(lambda: codes.extend(run_and_get_code(compiled, x)[1]))
    assert config.freezing == before
    # a CPU model runs from Inductor's C++ wrapper: one C++ entry point rather than a Python call per operation
    assert len(codes) == 1 and "inductor_entry_impl" in codes[0]
    out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert not out.requires_grad
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        assert any("mkldnn::_linear_pointwise" in name for name in names), "the projections were not frozen"


    # fullgraph tracing reports a raise as "Observed exception"; the call gives the model's own error instead
    with pytest.raises(ValueError, match="shape") as bad_shape:
        compiled(torch.rand(1, 3, 64))
    assert bad_shape.value.__cause__ is None and "Observed exception" not in str(bad_shape.value)
    with pytest.raises(TypeError, match="floating-point"):
        compiled(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)

    def fail(*args: object) -> None:
        assert config.freezing is True
        raise RuntimeError("compilation failed")

    compiled._compiled = fail
    with pytest.raises(RuntimeError, match="compilation failed"):
        compiled(x)
    assert config.freezing == before  # restored when the call raises


def test_each_compiled_model_keeps_its_own_graphs_and_says_when_it_runs_out_of_shapes() -> None:
    from torch._dynamo import config

    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    with config.patch(recompile_limit=2):
        # Compiling the modules themselves would count all three against the same forward: the third failed.
        models = [ConvLayer(3, 4, 3).eval() for _ in range(3)]
        for model in models:
            compiled = compile_for_inference(model, cpp_wrapper=False)
            with torch.no_grad():
                torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
        compiled(torch.rand(1, 3, 9, 9))  # a second shape for the last model: its second graph
        limit = r"holds graphs for torch._dynamo.config.recompile_limit = 2 input shapes .* \[\(2, 3, 8, 8\)\]"
        with pytest.raises(RuntimeError, match=limit):
            compiled(torch.rand(2, 3, 8, 8))
        torch.testing.assert_close(compiled(x), models[-1](x).detach(), atol=1e-5, rtol=1e-5)  # its graphs still run


class _Scaled(nn.Module):
    """A module whose forward reads a plain attribute: what dynamo's guards on modules watch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvLayer(3, 4, 3)
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


def test_compiled_model_is_a_snapshot_unless_model_guards_are_kept() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    for model_guards in (False, True):
        model = _Scaled().eval()
        compiled = compile_for_inference(model, cpp_wrapper=False, model_guards=model_guards)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
            model.scale = 3.0
            followed = model(x)
            snapshot = followed * 2 / 3
        # without guards on the module the graph compiled at scale 2 keeps running; with them, dynamo recompiles
        torch.testing.assert_close(compiled(x), followed if model_guards else snapshot, atol=1e-5, rtol=1e-5)
        x2 = torch.rand(1, 3, 9, 9)  # the input guards stay: a new shape still compiles its own graph
        with torch.no_grad():
            assert compiled(x2).shape == model(x2).shape == (1, 4, 9, 9)


def test_compile_for_inference_refuses_bad_arguments_without_changing_the_model() -> None:
    model = MobileViTv2(0.5)
    weight = model.conv_1.block.conv.weight
    with pytest.raises(ValueError, match=r"eval mode.*\(in training mode: MobileViTv2, conv_1, conv_1.block, \.\.\.\)"):
        compile_for_inference(model)
    model.eval().layer_2.train()  # one submodule left in training mode (dropout, batch statistics)
    with pytest.raises(ValueError, match=r"in training mode: layer_2, layer_2\.0"):
        compile_for_inference(model)
    model.eval()
    modes = r"mode must be None or one of torch.compile's modes \[.*'max-autotune'.*\], got 'fastest'"
    with pytest.raises(ValueError, match=modes):
        compile_for_inference(model, mode="fastest")
    with pytest.raises(TypeError, match="mode"):
        compile_for_inference(model, mode=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        compile_for_inference(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dynamic"):
        compile_for_inference(model.eval(), dynamic="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fullgraph"):
        compile_for_inference(model.eval(), fullgraph=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cpp_wrapper"):
        compile_for_inference(model.eval(), cpp_wrapper="on")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model_guards"):
        compile_for_inference(model.eval(), model_guards=None)  # type: ignore[arg-type]
    assert model.conv_1.block.conv.weight is weight and weight.is_contiguous()


def test_compile_for_inference_passes_its_arguments_to_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    model = MobileViTv2(0.5).eval()
    compiled = compile_for_inference(model, dynamic=True, mode="max-autotune-no-cudagraphs", fullgraph=False)
    assert calls == [
        {
            "fullgraph": False,
            "dynamic": True,
            "options": {
                "max_autotune": True,
                "coordinate_descent_tuning": True,
                "freezing": True,
                "cpp_wrapper": True,  # the model is on the CPU
                "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
            },
        }
    ]
    calls.clear()
    compile_for_inference(model, cpp_wrapper=False, model_guards=True)
    assert calls[0]["options"] == {"freezing": True, "cpp_wrapper": False}
    calls.clear()
    compile_for_inference(MobileViTv2(0.5).to("meta").eval(), model_guards=True)  # not on the CPU: Inductor's own
    assert calls[0]["options"] == {"freezing": True}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))  # torch.compile is stubbed: the entry point calls the model


def _conv_output_channels(graphs: list[torch.fx.GraphModule]) -> list[int]:
    """Output channels of every convolution in dynamo's captured graphs."""
    return [
        node.meta["example_value"].shape[1]
        for gm in graphs
        for node in gm.graph.nodes
        if node.op == "call_function" and node.target in (torch.conv2d, F.conv2d)
    ]


def _compile_capturing(module: nn.Module, backend_graphs: list[torch.fx.GraphModule]) -> object:
    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        backend_graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, backend=capture)


def test_compiled_separable_attention_projects_the_weighted_input_to_keys() -> None:
    from visionkit.contrib.attention import LinearSelfAttention

    torch.manual_seed(0)
    attn = LinearSelfAttention(16).eval()
    x = torch.randn(2, 16, 4, 10)
    graphs: list[torch.fx.GraphModule] = []
    out = _compile_capturing(attn, graphs)(x)
    # values (16) and out_proj (16); the 1 + 2 * 16 = 33-channel qkv convolution is gone, the keys are a product
    assert sorted(_conv_output_channels(graphs)) == [16, 16]
    torch.testing.assert_close(out, attn(x), atol=1e-5, rtol=1e-5)

    # Exported graphs keep the official qkv convolution.
    program = torch.export.export(attn, (x,))
    weights = [node.args[1].meta["val"].shape[0] for node in program.graph.nodes if node.target == torch.ops.aten.conv2d.default]
    assert sorted(weights) == [16, 33]

    # A hooked qkv_proj runs as itself, so the hook sees its call.
    calls = []
    attn.qkv_proj.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    graphs.clear()
    out = _compile_capturing(attn, graphs)(x)
    assert sorted(_conv_output_channels(graphs)) == [16, 33] and calls == [(2, 33, 4, 10)]
    torch.testing.assert_close(out, attn(x), atol=1e-5, rtol=1e-5)


def test_folded_keys_train_like_the_module_with_dropout() -> None:
    from visionkit.contrib.attention import LinearAttnFFN

    torch.manual_seed(0)
    eager = LinearAttnFFN(16, 32, attn_dropout=0.5).train()
    compiled_copy = copy.deepcopy(eager)
    x = torch.randn(2, 16, 4, 10)
    results = []
    for module, run in ((eager, eager), (compiled_copy, torch.compile(compiled_copy, fullgraph=True, backend="eager"))):
        torch._dynamo.reset()
        torch.manual_seed(1)  # the same dropout mask on the scores, whose sum the folded keys keep
        inputs = x.clone().requires_grad_()
        out = run(inputs)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out, inputs.grad, [p.grad for p in module.parameters()]))
    (out, grad, param_grads), (out_c, grad_c, param_grads_c) = results
    torch.testing.assert_close(out_c, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_c, grad, atol=1e-5, rtol=1e-5)
    for reference, compiled in zip(param_grads, param_grads_c):
        torch.testing.assert_close(compiled, reference, atol=1e-5, rtol=1e-5)


def test_max_autotune_compiles_the_folded_keys_correctly() -> None:
    from visionkit.contrib.attention import LinearSelfAttention

    # max-autotune lets Inductor's C++ GEMM template compute the key product; from a frozen slice of qkv_proj's
    # weight (torch 2.13) it read the wrong rows, unless the slice is copied first (LinearSelfAttention does)
    torch._dynamo.reset()
    torch.manual_seed(0)
    attn = LinearSelfAttention(64).eval()
    x = torch.randn(1, 64, 4, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = attn(x)
    out = compile_for_inference(attn, mode="max-autotune")(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
