"""Consecutive 1x1 convolutions composed into one under frozen compilation (visionkit.contrib.composition)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionkit.contrib import MobileViT, MobileViTv2, MobileViTv3, compile_for_inference
from visionkit.contrib.composition import composes_pointwise, run_composed
from visionkit.contrib.layers import ConvLayer


def _frozen_trace(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> tuple[int, object]:
    """Trace ``fn`` as compile_for_inference does (freezing on, gradients off) and run the captured graph as is.

    Returns the number of convolution calls in the graph and the graph's output.
    """
    from torch._inductor import config

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad(), config.patch(freezing=True):
        out = torch.compile(fn, fullgraph=True, backend=capture)(x)
    nodes = [node for gm in graphs for node in gm.graph.nodes]
    convolutions = sum(node.op == "call_function" and node.target in (torch.conv2d, F.conv2d) for node in nodes)
    return convolutions, out


def _conv_modules(model: nn.Module) -> int:
    """The convolutions the model runs without composition: each ``nn.Conv2d`` once."""
    return sum(type(module) is nn.Conv2d for module in model.modules())


def _randomized(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong fold shows.

    The convolutions are drawn to keep the maps near unit scale: with the default initialisation the maps of the
    first levels are so small that BatchNorm shifts swamp them and the output no longer depends on the input.
    """
    torch.manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("output_stride", [32, 8])
def test_mobilevitv2_composes_its_three_projection_expansion_pairs(fused: bool, output_stride: int) -> None:
    # layer_1's red_1x1 (64 -> 32 channels at width 0.5) into layer_2's exp_1x1 (32 -> 64): 32*64 < 32*(64+64);
    # conv_proj of layer_3 and layer_4 (d -> C) into the next level's exp_1x1 (C -> 2C): d*2C < C*(d+2C)
    model = _randomized(MobileViTv2(width_multiplier=0.5, output_stride=output_stride))
    if fused:
        model.fuse()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the output follows the input, so a wrong weight shows
    convolutions, out = _frozen_trace(model, x)
    assert convolutions == _conv_modules(model) - 3
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_nothing_is_composed_across_a_level_the_caller_keeps() -> None:
    model = _randomized(MobileViTv2(width_multiplier=0.5))
    x = torch.rand(1, 3, 64, 64)
    for indices, composed in (((2,), 1), ((0, 4), 2), ((0, 2, 3), 0), ((4,), 3), ((1, 3), 2)):
        with torch.no_grad():
            expected = model.forward_intermediates(x, indices)
        convolutions, maps = _frozen_trace(lambda x, indices=indices: model.forward_intermediates(x, indices), x)
        # only the levels up to the deepest one asked for run
        deepest = f"layer_{max(indices) + 1}"
        run = sum(
            type(module) is nn.Conv2d
            for name, module in model.named_modules()
            if name.startswith("conv_1") or name.split(".")[0] <= deepest
        )
        assert convolutions == run - composed, indices
        assert len(maps) == len(indices)
        for got, want in zip(maps, expected):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "build, composed",
    [
        (lambda: MobileViT(mode="xs"), 0),  # layer_1 64 -> 32 then 32 -> 128: composing costs more
        (lambda: MobileViT(mode="xxs"), 0),  # layer_1 has a shortcut
        (lambda: MobileViTv3(mode="xxs"), 0),
        (lambda: MobileViTv3(width_multiplier=0.5), 1),  # the v3 block adds its input: only layer_1 into layer_2
    ],
)
def test_other_families_compose_only_where_it_saves_work(build: Callable[[], nn.Module], composed: int) -> None:
    model = _randomized(build())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    convolutions, out = _frozen_trace(model, x)
    assert convolutions == _conv_modules(model) - composed
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_a_hooked_module_runs_as_itself() -> None:
    model = _randomized(MobileViTv2(width_multiplier=0.5)).fuse()
    seen: list[torch.Size] = []
    model.layer_2[0].block.exp_1x1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.rand(1, 3, 64, 64)
    convolutions, _ = _frozen_trace(model, x)
    assert convolutions == _conv_modules(model) - 2  # layer_1 into layer_2 is left alone
    assert seen == [torch.Size([1, 64, 32, 32])]


@pytest.mark.parametrize("path", ["layer_2.0.block.exp_1x1", "layer_1.0.block.red_1x1", "layer_1", "layer_3.1"])
def test_a_module_whose_forward_is_replaced_runs_it(path: str) -> None:
    # as hook libraries (e.g. accelerate's add_hook_to_module) and debugging patches replace forward on the instance
    model = _randomized(MobileViTv2(width_multiplier=0.5)).fuse()
    module = model.get_submodule(path)
    original = module.forward
    module.forward = lambda x: original(x).flip(-1)  # not undone by the norms after it, as a scale would be
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        module.forward = original
        unpatched = model(x)
        module.forward = lambda x: original(x).flip(-1)
    assert (expected - unpatched).abs().max() > 1e-2  # the replacement changes the output
    _, out = _frozen_trace(model, x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_recorded_and_unfrozen_graphs_keep_every_convolution() -> None:
    from torch._inductor import config

    model = MobileViTv2(width_multiplier=0.5).eval().fuse()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), config.patch(freezing=True):
        program = torch.export.export(model, (x,))
    convolutions = sum(node.target == torch.ops.aten.conv2d.default for node in program.graph.nodes)
    assert convolutions == _conv_modules(model)

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():  # compiled without freezing: the weights are inputs, the product would run every call
        torch.compile(model, fullgraph=True, backend=capture)(x)
    assert sum(node.target in (torch.conv2d, F.conv2d) for gm in graphs for node in gm.graph.nodes) == _conv_modules(
        model
    )
    assert not composes_pointwise()  # eager mode


def _chain(*layers: nn.Module) -> list[nn.Module]:
    return [nn.Sequential(*layers).eval()]


@pytest.mark.parametrize(
    "layers, composed",
    [
        ((ConvLayer(16, 16, 1, act_layer=None), ConvLayer(16, 32, 1)), 1),
        ((ConvLayer(16, 8, 1, act_layer=None), ConvLayer(8, 32, 1)), 0),  # 16*32 multiply-adds against 8*(16+32)
        ((ConvLayer(16, 16, 1), ConvLayer(16, 32, 1)), 0),  # an activation between them
        ((ConvLayer(16, 16, 3, act_layer=None), ConvLayer(16, 32, 1)), 0),  # not 1x1
        ((ConvLayer(16, 16, 1, act_layer=None), ConvLayer(16, 32, 1, stride=2)), 0),
        ((ConvLayer(16, 16, 1, act_layer=None), ConvLayer(16, 16, 1, act_layer=None), ConvLayer(16, 32, 1)), 1),
    ],
)
def test_run_composed_composes_adjacent_affine_pointwise_pairs_only(layers: tuple, composed: int) -> None:
    stages = _randomized(nn.ModuleList(_chain(*layers)))
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        expected = stages[0](x)
        eager, maps = run_composed(list(stages), x, kept=(0,))
    torch.testing.assert_close(eager, expected, atol=1e-5, rtol=1e-5)
    assert maps.keys() == {0} and maps[0] is eager
    convolutions, out = _frozen_trace(lambda x: run_composed(list(stages), x)[0], x)
    assert convolutions == len(layers) - composed
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_compile_for_inference_composes_and_matches_the_model() -> None:
    torch._dynamo.reset()
    model = _randomized(MobileViTv2(width_multiplier=0.5)).fuse()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(compile_for_inference(model)(x), expected, atol=1e-4, rtol=1e-4)
