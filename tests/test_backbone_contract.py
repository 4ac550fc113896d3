"""The contract every backbone variant honours: shapes, feature levels, parameters, gradients, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import DATA
from visionkit.contrib import ClassificationHead
from visionkit.contrib.variants import VARIANTS, Variant, build_variant

# Parameter counts with a 1000-class ClassificationHead, measured on the official models (spec §2.5, §3.7, §4.3).
PARAMS_WITH_HEAD = {
    "mobilevit_xxs": 1_272_024,
    "mobilevit_xs": 2_317_848,
    "mobilevit_s": 5_578_632,
    "mobilevitv2_050": 1_370_593,
    "mobilevitv2_075": 2_866_009,
    "mobilevitv2_100": 4_901_841,
    "mobilevitv2_125": 7_478_089,
    "mobilevitv2_150": 10_594_753,
    "mobilevitv2_175": 14_251_833,
    "mobilevitv2_200": 18_449_329,
    "mobilevitv3_xxs": 1_249_448,
    "mobilevitv3_xs": 2_490_360,
    "mobilevitv3_s": 5_763_912,
    "mobilevitv3_xxs_l2": 1_145_288,
    "mobilevitv3_xs_l2": 2_257_320,
    "mobilevitv3_s_l2": 5_169_864,
    "mobilevitv3_050": 1_429_985,
    "mobilevitv3_075": 2_999_641,
    "mobilevitv3_100": 5_139_409,
}

# Channels of the five levels and of forward()'s output (spec §2.1, §3.1, §4.1).
CHANNELS = {
    "mobilevit_xxs": ((16, 24, 48, 64, 80), 320),
    "mobilevit_xs": ((32, 48, 64, 80, 96), 384),
    "mobilevit_s": ((32, 64, 96, 128, 160), 640),
    "mobilevitv2_050": ((32, 64, 128, 192, 256), 256),
    "mobilevitv2_075": ((48, 96, 192, 288, 384), 384),
    "mobilevitv2_100": ((64, 128, 256, 384, 512), 512),
    "mobilevitv2_125": ((80, 160, 320, 480, 640), 640),
    "mobilevitv2_150": ((96, 192, 384, 576, 768), 768),
    "mobilevitv2_175": ((112, 224, 448, 672, 896), 896),
    "mobilevitv2_200": ((128, 256, 512, 768, 1024), 1024),
    "mobilevitv3_xxs": ((16, 24, 64, 80, 128), 512),
    "mobilevitv3_xs": ((32, 48, 96, 160, 160), 640),
    "mobilevitv3_s": ((32, 64, 128, 256, 320), 960),
    "mobilevitv3_xxs_l2": ((16, 24, 64, 80, 128), 512),
    "mobilevitv3_xs_l2": ((32, 48, 96, 160, 160), 640),
    "mobilevitv3_s_l2": ((32, 64, 128, 256, 320), 960),
    "mobilevitv3_050": ((32, 64, 128, 192, 256), 256),
    "mobilevitv3_075": ((48, 96, 192, 288, 384), 384),
    "mobilevitv3_100": ((64, 128, 256, 384, 512), 512),
}

# Official key listings: file, entry per variant.
OFFICIAL_KEYS = {
    "mobilevit_xxs": ("v1.json", "xxs"),
    "mobilevit_xs": ("v1.json", "xs"),
    "mobilevit_s": ("v1.json", "s"),
    **{f"mobilevitv2_{t}": ("v2.json", f"v2_{w}") for t, w in [
        ("050", "0.5"), ("075", "0.75"), ("100", "1.0"), ("125", "1.25"), ("150", "1.5"), ("175", "1.75"), ("200", "2.0")
    ]},
    **{f"mobilevitv3_{m}": ("v3-v1-based.json", f"v3_{m}") for m in ("xxs", "xs", "s", "xxs_l2", "xs_l2", "s_l2")},
    **{f"mobilevitv3_{t}": ("v3-v2-based.json", f"v3v2_{w}") for t, w in [("050", "0.5"), ("075", "0.75"), ("100", "1.0")]},
}

ROUNDS_UP = {"separable"}  # v2-style blocks round their input up to even sizes and keep it


def expected_level_sizes(variant: Variant, height: int, width: int, output_stride: int = 32) -> list[tuple[int, int]]:
    """The documented size formula: every stride-2 layer gives ceil(n / 2); v2 blocks then round up to even."""
    rounds_up = variant.build().config.block.attention in ROUNDS_UP
    sizes = []
    h, w = math.ceil(height / 2), math.ceil(width / 2)  # stem; layer_1 keeps the size
    sizes.append((h, w))
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # layer_2
    sizes.append((h, w))
    reduction = 4
    for _ in range(3):  # layer_3 .. layer_5
        if reduction * 2 <= output_stride:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            reduction *= 2
        if rounds_up:
            h, w = h + h % 2, w + w % 2
        sizes.append((h, w))
    return sizes


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.name)
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param


def test_every_variant_is_covered_by_the_tables() -> None:
    assert {v.name for v in VARIANTS} == set(PARAMS_WITH_HEAD) == set(CHANNELS) == set(OFFICIAL_KEYS)


def test_parameter_count_with_classification_head(variant: Variant) -> None:
    backbone = variant.build()
    model = nn.Sequential(backbone, ClassificationHead(backbone.out_channels, 1000))
    assert sum(p.numel() for p in model.parameters()) == PARAMS_WITH_HEAD[variant.name]


def test_state_dict_matches_official_keys_and_shapes(variant: Variant) -> None:
    file, entry = OFFICIAL_KEYS[variant.name]
    official = json.loads((DATA / file).read_text())[entry]
    official = {k: tuple(v) for k, v in official.items() if not k.startswith("classifier.")}
    ours = {k: tuple(v.shape) for k, v in variant.build().state_dict().items()}
    assert ours == official


def test_feature_info_declares_channels_and_reductions(variant: Variant) -> None:
    backbone = variant.build()
    levels, out_channels = CHANNELS[variant.name]
    assert [f.channels for f in backbone.feature_info] == list(levels)
    assert [f.reduction for f in backbone.feature_info] == [2, 4, 8, 16, 32]
    assert [f.module for f in backbone.feature_info] == ["layer_1", "layer_2", "layer_3", "layer_4", "layer_5"]
    assert backbone.out_channels == out_channels


@pytest.mark.parametrize("size", [(256, 256), (224, 224), (250, 230), (96, 160)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_and_feature_shapes(variant: Variant, size: tuple[int, int]) -> None:
    backbone = variant.build().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        levels = backbone.forward_intermediates(x)
        out = backbone(x)
    expected = expected_level_sizes(variant, *size)
    assert [tuple(f.shape) for f in levels] == [
        (2, info.channels, h, w) for info, (h, w) in zip(backbone.feature_info, expected)
    ]
    assert tuple(out.shape) == (2, backbone.out_channels, *expected[-1])
    assert torch.isfinite(out).all()


def test_v1_shapes_at_256_are_the_documented_ones() -> None:
    backbone = build_variant("mobilevit_xxs")
    assert backbone(torch.rand(1, 3, 256, 256)).shape == (1, 320, 8, 8)
    assert build_variant("mobilevitv2_050")(torch.rand(1, 3, 256, 256)).shape == (1, 256, 8, 8)


def test_v2_rounds_up_at_224_as_the_official_model() -> None:
    # The v2 block resizes its input up to even sizes and keeps them: 7x7 at stride 32 becomes 8x8.
    assert build_variant("mobilevitv2_050")(torch.rand(1, 3, 224, 224)).shape == (1, 256, 8, 8)
    assert build_variant("mobilevit_xxs")(torch.rand(1, 3, 224, 224)).shape == (1, 320, 7, 7)


def test_every_parameter_receives_a_gradient(variant: Variant) -> None:
    backbone = variant.build()
    backbone(torch.rand(2, 3, 64, 96)).square().mean().backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_eval_is_deterministic_and_batch_independent(variant: Variant) -> None:
    backbone = variant.build().eval()
    x = torch.rand(3, 3, 96, 80)
    with torch.no_grad():
        full = backbone(x)
        again = backbone(x)
        alone = backbone(x[1:2])
    assert torch.equal(full, again)
    # float32 GEMMs round differently per batch size (~1e-5); mixing samples would differ by O(1).
    torch.testing.assert_close(alone, full[1:2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_keeps_resolution(name: str, output_stride: int) -> None:
    variant = next(v for v in VARIANTS if v.name == name)
    backbone = variant.build(output_stride=output_stride).eval()
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        levels = backbone.forward_intermediates(x)
        out = backbone(x)
    expected = expected_level_sizes(variant, 128, 96, output_stride)
    assert [tuple(f.shape[-2:]) for f in levels] == expected
    assert tuple(out.shape[-2:]) == expected[-1]
    assert [f.reduction for f in backbone.feature_info] == [2, 4, 8, min(16, output_stride), output_stride]


def test_output_stride_dilation_follows_the_official_rules() -> None:
    # v2 at OS16 (golden JSON): layer_5 MV2 stride 1 dilation 1; layer_5 block depthwise conv dilation 2.
    v2 = build_variant("mobilevitv2_050", output_stride=16)
    assert v2.layer_5[0].block.conv_3x3.block.conv.stride == (1, 1)
    assert v2.layer_5[0].block.conv_3x3.block.conv.dilation == (1, 1)
    assert v2.layer_5[1].local_rep[0].block.conv.dilation == (2, 2)
    assert v2.layer_4[1].local_rep[0].block.conv.dilation == (1, 1)
    # v2 at OS8: layer_4 block dilation 2; layer_5 MV2 dilation 2 and block dilation 4.
    v2 = build_variant("mobilevitv2_050", output_stride=8)
    assert v2.layer_4[0].block.conv_3x3.block.conv.stride == (1, 1)
    assert v2.layer_4[1].local_rep[0].block.conv.dilation == (2, 2)
    assert v2.layer_5[0].block.conv_3x3.block.conv.dilation == (2, 2)
    assert v2.layer_5[1].local_rep[0].block.conv.dilation == (4, 4)
    # v1 at OS16 dilates nothing; its block ignores dilation.
    v1 = build_variant("mobilevit_xxs", output_stride=16)
    dilated = [n for n, m in v1.named_modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert dilated == []
    assert v1.layer_5[0].block.conv_3x3.block.conv.stride == (1, 1)


def test_expand_output_false_does_not_build_the_expansion() -> None:
    backbone = build_variant("mobilevit_xxs", expand_output=False)
    assert not any(k.startswith("conv_1x1_exp") for k in backbone.state_dict())
    assert backbone.out_channels == 80
    x = torch.rand(1, 3, 64, 64)
    backbone.eval()
    torch.testing.assert_close(backbone(x), backbone.forward_intermediates(x, indices=[4])[0])
    backbone.train()
    # every parameter is used, so DDP needs no find_unused_parameters
    backbone(x).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_forward_intermediates_selects_levels_in_the_order_given() -> None:
    backbone = build_variant("mobilevit_xxs").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        every = backbone.forward_intermediates(x)
        chosen = backbone.forward_intermediates(x, indices=(4, 1, -2))
    assert [c.shape for c in chosen] == [every[4].shape, every[1].shape, every[3].shape]
    for got, want in zip(chosen, (every[4], every[1], every[3])):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bad, error, message", [
    ((5,), ValueError, "feature level index must be in"), ((-6,), ValueError, "feature level index must be in"),
    ((), ValueError, "indices must name at least one level"), (3, TypeError, "indices must be a sequence of ints"),
    ("34", TypeError, "indices must be a sequence of ints"), ((1.0,), TypeError, r"indices\[\.\.\.\] must be an int"),
])
def test_forward_intermediates_rejects_bad_indices(bad: object, error: type, message: str) -> None:
    # eval: in training mode a 32x32 input reaching layer_5 raises its own BatchNorm error, whatever the indices
    backbone = build_variant("mobilevit_xxs").eval()
    with pytest.raises(error, match=message):
        backbone.forward_intermediates(torch.rand(1, 3, 32, 32), indices=bad)  # type: ignore[arg-type]


def test_in_channels_changes_the_stem() -> None:
    backbone = build_variant("mobilevit_xxs", in_channels=1)
    assert backbone.conv_1.block.conv.in_channels == 1
    assert backbone(torch.rand(2, 1, 64, 64)).shape == (2, 320, 2, 2)


def test_dropout_overrides_reach_the_blocks() -> None:
    default = build_variant("mobilevit_xxs")
    assert default.config.dropout == 0.05
    custom = build_variant("mobilevit_xxs", dropout=0.2, attn_dropout=0.1)
    drops = {m.p for m in custom.layer_3[1].global_rep[0].pre_norm_mha if isinstance(m, nn.Dropout)}
    assert drops == {0.2}
    assert custom.layer_3[1].global_rep[0].pre_norm_mha[1].attn_dropout == 0.1


def test_large_input_runs() -> None:
    backbone = build_variant("mobilevit_xxs").eval()
    with torch.inference_mode():
        out = backbone(torch.rand(1, 3, 1080, 1920))
    assert out.shape == (1, 320, 34, 60)
    assert torch.isfinite(out).all()
