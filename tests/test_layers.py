"""ConvLayer's training path: BatchNorm + SiLU as one autograd function that keeps less for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from visionkit.contrib import layers
from visionkit.contrib.layers import ConvLayer
from visionkit.contrib.variants import build_variant


def _plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "_can_fuse_batchnorm_silu", lambda *args: False)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one forward."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum()
    return sum(seen.values())


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_batchnorm_silu_equals_the_two_modules(momentum, device, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer = ConvLayer(6, 8, 3, stride=2).double().train().to(device)
    layer.block.norm.momentum = momentum
    with torch.no_grad():
        layer.block.norm.weight.uniform_(0.5, 1.5)
        layer.block.norm.bias.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(layer)
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    for _ in range(2):  # twice: the running statistics must advance the same way
        out = layer(x)
        assert type(out.grad_fn).__name__ == "_BatchNormSiLUBackward"
        out.pow(2).sum().backward()
    _plain(monkeypatch)
    for _ in range(2):
        expected = reference(x_ref)
        assert type(expected.grad_fn).__name__ == "SiluBackward0"
        expected.pow(2).sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, param), ref in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, ref.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, buffer), ref in zip(layer.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, ref, rtol=0, atol=1e-14, msg=name)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs"])
def test_backbone_gradients_unchanged_and_less_kept_for_backward(name, device, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_variant(name, dropout=0.0).train().to(device)
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, 96, 80, device=device)
    model(x).square().mean().backward()
    fused_bytes = _saved_bytes(model, x)
    _plain(monkeypatch)
    reference(x).square().mean().backward()
    plain_bytes = _saved_bytes(reference, x)
    # CUDA: the plain path runs cuDNN's BatchNorm, the fused one ATen's, and cuDNN's convolution backward adds in
    # no fixed order: float32 rounding, scaled by each gradient's size.
    rtol, atol = (1e-5, 1e-6) if device.type == "cpu" else (1e-4, 1e-5)
    for (key, param), ref in zip(model.named_parameters(), reference.parameters()):
        scale = max(ref.grad.abs().max().item(), 1.0) if device.type == "cuda" else 1.0
        torch.testing.assert_close(
            param.grad, ref.grad, rtol=rtol, atol=atol * scale, msg=lambda message, key=key: f"{key}: {message}"
        )
    # Each BatchNorm + SiLU pair keeps one tensor instead of two.
    assert fused_bytes < 0.9 * plain_bytes, (fused_bytes, plain_bytes)  # measured 0.81-0.83


def test_plain_modules_where_the_fused_function_does_not_apply() -> None:
    layer = ConvLayer(4, 4, 1).train()
    x = torch.rand(2, 4, 5, 5)
    with torch.no_grad():
        assert layer(x).grad_fn is None
    assert type(layer.eval()(x).grad_fn).__name__ == "SiluBackward0"  # eval: no batch statistics
    layer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(layer(x).grad_fn).__name__ != "_BatchNormSiLUBackward"
    layer.block.norm = nn.SyncBatchNorm(4)  # replaced norms keep their own forward
    assert type(layer(x).grad_fn).__name__ == "SiluBackward0"
    no_act = ConvLayer(4, 4, 1, act_layer=nn.ReLU).train()
    assert type(no_act(x).grad_fn).__name__ == "ReluBackward0"
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ConvLayer(4, 4, 1).train()(torch.rand(1, 4, 1, 1, requires_grad=True))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_eval_folds_batchnorm_at_run_time_on_cpu_with_the_same_output(name, device, monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_variant(name).eval().to(device)
    for module in model.modules():  # non-trivial statistics, so that the folding has something to do
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 96, 80, device=device)
    calls = []
    folded = layers._conv_with_folded_batchnorm
    monkeypatch.setattr(layers, "_conv_with_folded_batchnorm", lambda *args: calls.append(1) or folded(*args))
    with torch.no_grad():
        fast = model(x)
        # on CUDA the BatchNorm kernels stay: fewer kernel launches than the fold's
        folds = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) if device.type == "cpu" else 0
        assert len(calls) == folds
        monkeypatch.setattr(layers, "_can_fold_batchnorm", lambda norm: False)
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a traced graph keeps the BatchNorm modules
        monkeypatch.undo()
        graph = torch.jit.trace(model, x, check_trace=False).inlined_graph
    assert "aten::batch_norm" in str(graph)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_run_time_fold_matches_the_modules_with_and_without_affine_and_bias(affine, conv_bias, dtype) -> None:
    torch.manual_seed(0)
    layer = ConvLayer(4, 6, 3, stride=2, bias=conv_bias)
    layer.block.norm = nn.BatchNorm2d(6, affine=affine)
    layer = layer.to(dtype).eval()
    with torch.no_grad():
        for name, tensor in layer.named_parameters():
            tensor.uniform_(-1.0, 1.0) if "weight" in name and "norm" not in name else tensor.uniform_(0.5, 1.5)
        layer.block.norm.running_mean.uniform_(-0.5, 0.5)
        layer.block.norm.running_var.uniform_(0.5, 2.0)
        x = torch.rand(2, 4, 9, 8, dtype=dtype)
        calls = []
        folded = layers._conv_with_folded_batchnorm
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(layers, "_conv_with_folded_batchnorm", lambda *args: calls.append(1) or folded(*args))
            out = layer(x)
        assert calls == [1]
        expected = layer.block(x)  # conv, BatchNorm and SiLU modules one after another
    assert out.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def _random_eval_layer(dtype: torch.dtype = torch.float32) -> ConvLayer:
    torch.manual_seed(0)
    layer = ConvLayer(4, 6, 3, bias=True).to(dtype).eval()
    with torch.no_grad():
        for tensor in (*layer.parameters(), layer.block.norm.running_mean):
            tensor.uniform_(-1.0, 1.0)
        layer.block.norm.running_var.uniform_(0.5, 2.0)
    return layer


def _expected(layer: ConvLayer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer.block(x)  # the plain modules, one after another


def test_inference_reuses_the_folded_weights_until_an_input_of_the_fold_changes(monkeypatch) -> None:
    layer = _random_eval_layer()
    x = torch.rand(2, 4, 7, 6)
    folds = []
    fold = layers._folded_weight_and_bias
    monkeypatch.setattr(layers, "_folded_weight_and_bias", lambda *args: folds.append(1) or fold(*args))

    def check(expected_folds: int) -> None:
        with torch.no_grad():
            out = layer(x)
        torch.testing.assert_close(out, _expected(layer, x), rtol=1e-5, atol=1e-5)
        assert len(folds) == expected_folds

    with torch.inference_mode():  # folded in inference mode, reused without it
        first = layer(x)
    assert len(folds) == 1
    check(1)
    with torch.no_grad():
        assert torch.equal(layer(x), first)  # the cached weights give bit-identical outputs
    norm, conv = layer.block.norm, layer.block.conv
    with torch.no_grad():
        norm.running_var.mul_(2.0)  # in place: a new version
    check(2)
    layer.load_state_dict({key: value + 0.1 for key, value in layer.state_dict().items()})
    check(3)
    conv.weight = nn.Parameter(torch.rand_like(conv.weight))  # a new object
    check(4)
    conv.bias.data = torch.rand_like(conv.bias)  # same object, new storage
    check(5)
    norm.eps = 0.5
    check(6)
    check(6)
    layer.double()
    x = x.double()
    check(7)
    layer.train()
    assert layer._folded_cache is None  # training drops the copy
    layer.eval()
    check(8)


def test_with_gradients_the_fold_is_recomputed_and_trains_the_batchnorm() -> None:
    layer = _random_eval_layer()
    x = torch.rand(2, 4, 7, 6)
    with torch.no_grad():
        layer(x)
    cached = layer._folded_cache
    out = layer(x)
    out.sum().backward()
    assert layer._folded_cache is cached  # neither used nor replaced
    assert layer.block.norm.weight.grad is not None and layer.block.norm.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), _expected(layer, x), rtol=1e-5, atol=1e-5)


def _inference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _fresh_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output computed without any cached weight (a deep copy leaves the caches out)."""
    return _inference(copy.deepcopy(model), x)


def test_cache_follows_batchnorm_statistics_re_estimated_with_only_the_norms_in_training_mode() -> None:
    # AdaBN-style: the BatchNorm kernel updates the running statistics without bumping their version counters.
    model = build_variant("mobilevit_xxs").eval()
    x = torch.rand(2, 3, 64, 64)
    before = _inference(model, x)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train()
    with torch.no_grad():
        model(x * 3.0 + 1.0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    after = _inference(model, x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _fresh_output(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw_fused", "adamw_foreach", "sgd"])
def test_cache_follows_a_training_step_taken_in_eval_mode(optimizer) -> None:
    # Fine-tuning with frozen BatchNorm statistics (eval mode) and validation between steps. Fused optimizers write
    # the parameters without bumping their version counters; every optimizer step invalidates the caches.
    model = build_variant("mobilevit_xxs").eval()
    x = torch.rand(2, 3, 64, 64)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, **{optimizer.split("_")[1]: True})
    before = _inference(model, x)
    model(x).square().mean().backward()
    opt.step()
    after = _inference(model, x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _fresh_output(model, x), rtol=1e-5, atol=1e-5)


def test_train_drops_the_cache_so_edits_through_data_show_after_it_and_eval_keeps_it() -> None:
    # In-place edits through .data are invisible to version counters (as they are to autograd): the documented way
    # back is model.train() then model.eval(). eval() alone keeps the cache (called before every prediction).
    model = build_variant("mobilevit_xxs").eval()
    x = torch.rand(2, 3, 64, 64)
    _inference(model, x)
    caches = [m._folded_cache for m in model.modules() if isinstance(m, ConvLayer)]
    model.eval()
    assert [m._folded_cache for m in model.modules() if isinstance(m, ConvLayer)] == caches
    for parameter in model.parameters():
        parameter.data.mul_(0.9)
    model.train().eval()
    torch.testing.assert_close(_inference(model, x), _fresh_output(model, x), rtol=1e-5, atol=1e-5)


def test_cache_follows_a_fused_optimizer_step_after_an_inference_call_between_backward_and_step() -> None:
    # A no-grad call (logging) between backward and the step builds the cache from the weights before the step.
    model = build_variant("mobilevit_xxs").eval()
    x = torch.rand(2, 3, 64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    model(x).square().mean().backward()
    before = _inference(model, x)
    optimizer.step()
    after = _inference(model, x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _fresh_output(model, x), rtol=1e-5, atol=1e-5)


def test_double_backward_through_the_fused_batchnorm_silu_matches_the_plain_modules(monkeypatch) -> None:
    torch.manual_seed(0)
    layer = ConvLayer(3, 4, 3).double().train()
    x = torch.randn(2, 3, 5, 5, dtype=torch.double, requires_grad=True)
    calls = []
    apply = layers._BatchNormSiLU.apply
    monkeypatch.setattr(layers._BatchNormSiLU, "apply", lambda *args: calls.append(1) or apply(*args))
    assert torch.autograd.gradgradcheck(lambda t: layer(t), (x,))
    assert calls  # the fused function ran

    def second_order(module: nn.Module) -> list[torch.Tensor]:
        params = list(module.parameters())
        grads = torch.autograd.grad(module(x).square().sum(), [x, *params], create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return list(torch.autograd.grad(penalty, [x, *params]))

    fused = second_order(layer)
    monkeypatch.setattr(layers, "_can_fuse_batchnorm_silu", lambda *args: False)
    for got, want in zip(fused, second_order(layer)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_forward_mode_ad_and_vmap_see_the_plain_operations(name) -> None:
    # A packed oneDNN call would drop the tangent silently, and vmap has no rule for it or for layout queries; the
    # CPU flash-attention kernel has no forward-mode derivative (the model runs attention's math kernel then).
    from torch.autograd import forward_ad

    torch.manual_seed(0)
    model = build_variant(name).eval().double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.double)
    direction = torch.randn_like(x)
    with torch.no_grad():
        mapped = torch.vmap(lambda image: model(image.unsqueeze(0)).squeeze(0))(x)
        torch.testing.assert_close(mapped, model(x), rtol=1e-9, atol=1e-9)
        with forward_ad.dual_level():
            tangent = forward_ad.unpack_dual(model(forward_ad.make_dual(x, direction))).tangent
        step = 1e-6
        finite = (model(x + step * direction) - model(x - step * direction)) / (2 * step)
    assert tangent is not None and tangent.abs().max() > 0
    torch.testing.assert_close(tangent, finite, rtol=1e-5, atol=1e-5)
    _, jvp_tangent = torch.func.jvp(model, (x,), (direction,))  # the torch.func form of the same product
    torch.testing.assert_close(jvp_tangent, tangent, rtol=1e-9, atol=1e-9)


def test_inference_tensors_are_folded_on_every_call_without_a_cache() -> None:
    with torch.inference_mode():
        layer = _random_eval_layer()  # parameters and buffers are inference tensors: no version counters
        x = torch.rand(2, 4, 7, 6)
        out = layer(x)
        assert layer._folded_cache is None
        layer.block.norm.running_mean.add_(0.5)
        torch.testing.assert_close(layer(x), layer.block(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, layer(x))


class _StandardizedConv2d(nn.Conv2d):
    """A replaced convolution whose own forward must run (weight standardisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, weight, self.bias)


@pytest.mark.parametrize("mode", ["eval", "eval_no_grad", "train"])
def test_hooks_and_replaced_convolutions_see_every_call(mode) -> None:
    torch.manual_seed(0)
    layer = ConvLayer(4, 6, 3).train(mode == "train")
    x = torch.rand(2, 4, 7, 7, requires_grad=mode == "train")
    expected = layer.block(x)  # nn.Sequential: the plain modules, one call each
    seen: dict[str, torch.Tensor] = {}
    handles = [
        getattr(layer.block, name).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o.clone()))
        for name in ("conv", "norm", "act")
    ]
    with torch.set_grad_enabled(mode != "eval_no_grad"):
        out = layer(x)
    torch.testing.assert_close(out, expected)
    assert sorted(seen) == ["act", "conv", "norm"]
    torch.testing.assert_close(seen["act"], expected)
    for handle in handles:
        handle.remove()
    layer.block.conv = _StandardizedConv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.block(x))


def test_silu_without_gradients_reuses_the_layer_output_and_leaves_the_input_alone() -> None:
    layer = ConvLayer(4, 4, 1, norm=False).eval()
    x = torch.randn(2, 4, 5, 5)
    x_before = x.clone()
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, nn.functional.silu(layer.block.conv(x)))
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    assert type(layer(x).grad_fn).__name__ == "SiluBackward0"  # with gradients: the module, never in place


def test_pickles_and_copies_leave_the_folded_weights_out_and_still_fold() -> None:
    import io

    layer = _random_eval_layer()
    x = torch.rand(2, 4, 7, 6)
    with torch.no_grad():
        expected = layer(x)
    assert layer._folded_cache is not None
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        assert clone._folded_cache is None
        with torch.no_grad():
            torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
        assert clone._folded_cache is not None
        assert clone._folded_cache.inputs[0] is clone.block.conv.weight


@pytest.mark.parametrize(
    ("norm", "kernel_size", "stride", "dilation", "depthwise"),
    [(True, 3, 1, 1, False), (True, 3, 2, 1, True), (False, 1, 1, 1, False), (True, 3, 1, 2, True)],
)
def test_inference_on_channels_last_float32_uses_a_packed_weight_for_every_size(
    norm, kernel_size, stride, dilation, depthwise
) -> None:
    torch.manual_seed(0)
    layer = ConvLayer(8, 8, kernel_size, stride=stride, dilation=dilation, groups=8 if depthwise else 1, norm=norm)
    layer = _randomize(layer).eval()
    with torch.no_grad():
        for shape in [(1, 8, 64, 48), (3, 8, 16, 16), (2, 8, 25, 23), (1, 8, 1, 1)]:
            x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
            out = layer(x)
            # the first call packs the weight for its size; later sizes reuse it
            assert layer._folded_cache is not None and layer._folded_cache.packed is not None
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, layer.block(x), rtol=1e-5, atol=1e-5)


def _randomize(layer: ConvLayer) -> ConvLayer:
    with torch.no_grad():
        for tensor in layer.parameters():
            tensor.uniform_(-1.0, 1.0)
        if "norm" in layer.block._modules:
            layer.block.norm.running_mean.uniform_(-0.5, 0.5)
            layer.block.norm.running_var.uniform_(0.5, 2.0)
    return layer


def test_packed_weight_follows_changes_and_steps_aside_where_it_does_not_apply() -> None:
    torch.manual_seed(0)
    layer = _randomize(ConvLayer(8, 8, 3, norm=False)).eval()  # a fused layer: no BatchNorm
    x = torch.rand(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        layer(x)
        first = layer._folded_cache.packed
        layer.block.conv.weight.mul_(-1.0)
        torch.testing.assert_close(layer(x), layer.block(x), rtol=1e-5, atol=1e-5)
        assert layer._folded_cache.packed is not first  # repacked after the in-place change
        # contiguous (NCHW) input: the plain convolution, and an NCHW output as F.conv2d gives
        layer._folded_cache = None
        nchw = x.contiguous()
        out = layer(nchw)
        assert out.is_contiguous() and layer._folded_cache.packed is None
        torch.testing.assert_close(out, layer.block(nchw), rtol=1e-5, atol=1e-5)
        with torch.backends.mkldnn.flags(enabled=False):  # the user switched oneDNN off
            layer(x)
            assert layer._folded_cache.packed is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
            assert layer._folded_cache.packed is None
        double = copy.deepcopy(layer).double()
        torch.testing.assert_close(double(x.double()), double.block(x.double()), rtol=1e-12, atol=1e-12)
        assert double._folded_cache.packed is None
    out = layer(x)  # with gradients: the convolution module runs and its output keeps its graph
    assert out.requires_grad


@pytest.mark.parametrize("depthwise", [False, True])
def test_an_input_with_the_wrong_channel_count_gets_the_convolution_message_and_packs_nothing(depthwise) -> None:
    layer = ConvLayer(8, 8, 3, groups=8 if depthwise else 1).eval()
    wrong = torch.rand(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # the first call used to reorder the weight for the wrong input and fail inside oneDNN
        with pytest.raises(RuntimeError, match="expected input.* to have 8 channels, but got 4"):
            layer(wrong)
        assert layer._folded_cache is None or layer._folded_cache.packed is None
        x = torch.rand(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(layer(x), layer.block(x), rtol=1e-5, atol=1e-5)
        assert layer._folded_cache.packed is not None


def test_small_batch_one_convolutions_keep_the_native_kernel_that_f_conv2d_picks() -> None:
    torch.manual_seed(0)
    layer = _randomize(ConvLayer(128, 256, 1, norm=False)).eval()
    small = torch.rand(1, 128, 4, 16).contiguous(memory_format=torch.channels_last)  # 8192 values, batch 1
    with torch.no_grad():
        assert torch.equal(layer(small), layer.block(small))
        assert layer._folded_cache.packed is None
        layer(torch.rand(2, 128, 4, 16).contiguous(memory_format=torch.channels_last))  # batch 2: oneDNN
        assert layer._folded_cache.packed is not None
