"""Property tests of the public API under random sizes, batches, dtypes, channels and devices."""

import copy
import functools
import io
import math
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import DEVICES
from visionkit.contrib import ClassificationHead, MobileViT, MobileViTv2, MobileViTv3
from visionkit.contrib.variants import build_variant

FAMILIES = ("mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050")
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Mostly small sides; now and then a large one (up to 600 px), never both large.
small_side = st.integers(1, 72)
sides = st.one_of(
    st.tuples(small_side, small_side),
    st.tuples(small_side, small_side),
    st.tuples(small_side, st.integers(73, 600)),
    st.tuples(st.integers(73, 600), small_side),
)


@functools.lru_cache(maxsize=None)
def model(name: str, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return build_variant(name).to(device).eval()


def expected_levels(backbone, height: int, width: int) -> list[tuple[int, int, int]]:
    """Documented level shapes: stride-2 steps round up; v2-style blocks round their input up to the patch."""
    rounds_up = backbone.config.block.attention == "separable"
    patch = backbone.config.block.patch_size
    shapes = []
    h, w = math.ceil(height / 2), math.ceil(width / 2)  # stem (layer_1 keeps the size)
    shapes.append((h, w))
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # layer_2
    shapes.append((h, w))
    for _ in range(3):  # layer_3 .. layer_5
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if rounds_up:
            h, w = math.ceil(h / patch) * patch, math.ceil(w / patch) * patch
        shapes.append((h, w))
    return [(info.channels, *hw) for info, hw in zip(backbone.feature_info, shapes)]


@FAST
@given(
    name=st.sampled_from(FAMILIES),
    batch=st.integers(0, 4),
    size=sides,
    device=st.sampled_from(DEVICES),
    scale=st.sampled_from([0.0, 1.0, 255.0, 1e4]),
    offset=st.sampled_from([0.0, -0.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_forward_shape_and_finite_for_any_size(name, batch, size, device, scale, offset, seed):
    backbone = model(name, device)
    height, width = size
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * scale + offset
    with torch.no_grad():
        out = backbone(x.to(device))
        levels = backbone.forward_intermediates(x.to(device))
    expected = expected_levels(backbone, height, width)
    assert [tuple(f.shape) for f in levels] == [(batch, *e) for e in expected]
    assert tuple(out.shape) == (batch, backbone.out_channels, *expected[-1][1:])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(torch.isfinite(f).all() for f in levels)


@FAST
@given(
    name=st.sampled_from(FAMILIES),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8,
                           torch.bool, torch.complex64]),
    channels=st.integers(1, 5),
    ndim=st.sampled_from([2, 3, 4, 5]),
    batch=st.integers(0, 3),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
)
def test_bad_inputs_raise_documented_errors(name, dtype, channels, ndim, batch, size):
    backbone = model(name)
    shape = {2: size, 3: (channels, *size), 4: (batch, channels, *size), 5: (batch, 1, channels, *size)}[ndim]
    x = torch.zeros(shape, dtype=dtype)
    valid = ndim == 4 and channels == 3 and dtype == torch.float32
    for call in (backbone, backbone.forward_intermediates):
        if valid:
            with torch.no_grad():
                call(x)
            continue
        wrong_type = not dtype.is_floating_point or dtype != torch.float32
        wrong_shape = ndim != 4 or channels != 3
        with pytest.raises((TypeError, ValueError)) as info:
            call(x)
        # Shape problems are ValueErrors; with a correct shape, the dtype problem is a TypeError.
        if not wrong_shape and wrong_type:
            assert isinstance(info.value, TypeError), info.value
        assert "expected" in str(info.value).lower() or "dtype" in str(info.value) or "must" in str(info.value)


def test_non_tensor_input_and_bad_indices():
    backbone = model("mobilevit_xxs")
    with pytest.raises(TypeError):
        backbone([[1.0]])
    x = torch.rand(1, 3, 32, 32)
    for indices, error, message in (
        ((5,), ValueError, "level index"), ((-6,), ValueError, "level index"),
        ((), ValueError, "at least one level"), ("34", TypeError, "sequence of ints"),
        ((1.0,), TypeError, "must be an int"), (3, TypeError, "sequence of ints"),
    ):
        with pytest.raises(error, match=message):
            backbone.forward_intermediates(x, indices)


@FAST
@given(
    family=st.sampled_from(["v1", "v2", "v3"]),
    mode=st.text(max_size=8),
    width=st.one_of(
        st.floats(-2.0, 1.5),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, True, None, "1.0"]),
        st.integers(-3, 1),
    ),
    output_stride=st.one_of(st.integers(-64, 64), st.sampled_from([8, 16, 32])),
    in_channels=st.integers(-2, 5),
)
def test_constructors_raise_type_or_value_errors(family, mode, width, output_stride, in_channels):
    builders = {
        "v1": lambda: MobileViT(mode, output_stride=output_stride, in_channels=in_channels),
        "v2": lambda: MobileViTv2(width, output_stride=output_stride, in_channels=in_channels),
        "v3": lambda: MobileViTv3(width_multiplier=width, output_stride=output_stride, in_channels=in_channels),
    }
    try:
        backbone = builders[family]()
    except (TypeError, ValueError):
        return
    # Whatever built must be a valid configuration that runs.
    assert output_stride in (8, 16, 32) and in_channels >= 1
    with torch.no_grad():
        out = backbone.eval()(torch.rand(1, in_channels, 16, 16))
    assert out.shape[:2] == (1, backbone.out_channels) and torch.isfinite(out).all()


@FAST
@given(
    in_channels=st.integers(1, 64),
    num_classes=st.integers(1, 20),
    batch=st.integers(0, 4),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_classification_head_shapes(in_channels, num_classes, batch, size):
    head = ClassificationHead(in_channels, num_classes).eval()
    out = head(torch.rand(batch, in_channels, *size))
    assert out.shape == (batch, num_classes) and torch.isfinite(out).all()


def test_classification_head_bad_arguments():
    for args, error, message in (
        ((0, 10), ValueError, "in_channels must be a positive integer"),
        ((8, 0), ValueError, "num_classes must be a positive integer"),
        ((8.0, 10), TypeError, "in_channels must be an int"),
        ((8, 10, 1.5), ValueError, r"dropout must be in \[0, 1\)"),
        ((8, 10, "0.1"), TypeError, "dropout must be a real number"),
        ((True, 10), TypeError, "in_channels must be an int"),
    ):
        with pytest.raises(error, match=message):
            ClassificationHead(*args)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_mode_batches_and_single_value_batchnorm(name):
    torch.manual_seed(0)
    backbone = build_variant(name).train()
    assert backbone(torch.rand(2, 3, 1, 1)).shape[0] == 2  # BatchNorm sees two values per channel
    assert backbone(torch.rand(0, 3, 33, 17)).shape[0] == 0
    if backbone.config.block.attention != "separable":  # v2-style blocks round 1x1 up to 2x2
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            backbone(torch.rand(1, 3, 20, 20))


@pytest.mark.parametrize("name", FAMILIES)
def test_train_eval_switching_no_grad_inference_mode(name):
    torch.manual_seed(0)
    backbone = build_variant(name, dropout=0.3).eval()
    x = torch.rand(2, 3, 40, 48)
    eval_out = backbone(x)
    assert eval_out.requires_grad
    with torch.no_grad():
        no_grad_out = backbone(x)
    with torch.inference_mode():
        inference_out = backbone(x)
    assert not no_grad_out.requires_grad and inference_out.is_inference()
    torch.testing.assert_close(no_grad_out, eval_out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(inference_out, eval_out.detach(), rtol=1e-6, atol=1e-6)
    state = copy.deepcopy(backbone.state_dict())
    backbone.train()
    first, second = backbone(x), backbone(x)
    assert not torch.allclose(first, second)  # dropout is active in training mode
    assert backbone.layer_1[0].block.exp_1x1.block.norm.num_batches_tracked.item() == 2
    backbone.eval()
    backbone.load_state_dict(state)
    torch.testing.assert_close(backbone(x), eval_out, rtol=0, atol=0)  # eval again: deterministic, same result


@pytest.mark.parametrize("name", FAMILIES)
def test_deepcopy_pickle_and_state_dict_round_trips(name):
    torch.manual_seed(0)
    backbone = build_variant(name, grad_checkpointing=True).eval()
    x = torch.rand(1, 3, 36, 28)
    with torch.no_grad():
        reference = backbone(x)
        clone = copy.deepcopy(backbone)
        unpickled = pickle.loads(pickle.dumps(backbone))
        buffer = io.BytesIO()
        torch.save(backbone.state_dict(), buffer)
        buffer.seek(0)
        torch.manual_seed(1)
        fresh = build_variant(name).eval()
        assert not torch.allclose(fresh(x), reference)
        fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        for other in (clone, unpickled, fresh):
            torch.testing.assert_close(other(x), reference, rtol=0, atol=0)
        assert clone.grad_checkpointing and unpickled.grad_checkpointing
        next(clone.parameters()).add_(1.0)  # the copy owns its parameters
        torch.testing.assert_close(backbone(x), reference, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_model_moved_to_a_dtype_runs_in_it(name, dtype):
    backbone = copy.deepcopy(model(name)).to(dtype)
    x = torch.rand(2, 3, 40, 24)
    with torch.no_grad():
        out = backbone(x.to(dtype))
        reference = model(name)(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Same function up to the dtype's rounding: relative error of the whole map.
    tolerance = {torch.float64: 1e-5, torch.bfloat16: 0.15, torch.float16: 0.15}[dtype]
    assert torch.linalg.vector_norm(out.float() - reference) < tolerance * torch.linalg.vector_norm(reference)
    with pytest.raises(TypeError, match="dtype"):
        backbone(x)  # float32 input into a model of another dtype


def test_autocast_accepts_float32_input():
    backbone = model("mobilevit_xxs")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = backbone(torch.rand(1, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 320, 1, 1)


def test_backward_gives_finite_gradients_for_any_family():
    for name in FAMILIES:
        torch.manual_seed(0)
        backbone = build_variant(name).train()
        x = torch.rand(3, 3, 37, 21, requires_grad=True)
        backbone(x).square().mean().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
