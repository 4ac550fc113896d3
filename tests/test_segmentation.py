"""DeepLabV3Head: official goldens, parameter counts, every family, gradients, checkpoint keys, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _cvnets_golden import load_golden, load_official
from torch import nn

from visionkit.contrib import (
    DeepLabV3Head,
    MobileViT,
    MobileViTv2,
    MobileViTv3,
    SegmentationModel,
)

# (golden, backbone factory, head kwargs) -- official v0.1 v1 and v0.2 v2 DeepLabv3 at OS16
GOLDENS = {
    "v1_xxs_deeplabv3": (
        lambda: MobileViT("xxs", output_stride=16, expand_output=False),
        dict(aspp_channels=256, align_corners=False),
    ),
    "v2_050_deeplabv3": (
        lambda: MobileViTv2(0.5, output_stride=16),
        dict(aspp_channels=512, align_corners=True),
    ),
}

FAMILIES = {
    "v1_xxs": lambda: MobileViT("xxs", output_stride=16, expand_output=False),
    "v2_050": lambda: MobileViTv2(0.5, output_stride=16),
    "v3_xxs": lambda: MobileViTv3(mode="xxs", output_stride=16, expand_output=False),
    "v3_050": lambda: MobileViTv3(width_multiplier=0.5, output_stride=16),
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_saving_in_the_official_layout_writes_the_official_keys(name: str) -> None:
    from visionkit.contrib import convert_state_dict

    make_backbone, head_kwargs = GOLDENS[name]
    official = load_golden(name)["state_dict"]
    backbone = make_backbone()
    model = nn.Sequential(backbone, DeepLabV3Head(backbone.out_channels, 21, aspp_channels=head_kwargs["aspp_channels"]))
    written = convert_state_dict(model, "cvnets")
    expected = {k for k in official if not k.startswith("seg_head.aux_head.")}  # training-only, not built
    assert set(written) == expected, (sorted(set(written) - expected), sorted(expected - set(written)))


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_official_golden(name: str) -> None:
    make_backbone, head_kwargs = GOLDENS[name]
    blob = load_golden(name)
    backbone = make_backbone()
    align_corners = head_kwargs["align_corners"]
    low_head = DeepLabV3Head(backbone.out_channels, 21, aspp_channels=head_kwargs["aspp_channels"])
    unmapped = load_official(backbone, low_head, blob["state_dict"])
    assert unmapped == []
    full_head = DeepLabV3Head(
        backbone.out_channels,
        21,
        aspp_channels=head_kwargs["aspp_channels"],
        scale_factor=16,
        align_corners=align_corners,
    )
    full_head.load_state_dict(low_head.state_dict(), strict=True)
    backbone.eval(), low_head.eval(), full_head.eval()
    outputs = blob["outputs"]
    with torch.no_grad():
        features = backbone(blob["inputs"]["x_512"].float())
        low = low_head(features)
        full = full_head(features)
        wrong_corners = F.interpolate(low, scale_factor=16, mode="bilinear", align_corners=not align_corners)
    idx = outputs["full_res_sample_index"]
    assert low.shape == (1, 21, 32, 32)
    assert full.shape == (1, 21, 512, 512)
    torch.testing.assert_close(low, outputs["logits_os16"], atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(full[:, :, idx][:, :, :, idx], outputs["logits_full_sampled"], atol=3e-4, rtol=1e-4)
    # the sampled map does pin the upsample's align_corners
    assert (wrong_corners[:, :, idx][:, :, :, idx] - outputs["logits_full_sampled"]).abs().max() > 1e-2


def test_aspp_dilations_match_official_model() -> None:
    head = DeepLabV3Head(80, 21)
    dilations = [branch.block.conv.dilation for branch in head.aspp.aspp_layer.convs[:4]]
    paddings = [branch.block.conv.padding for branch in head.aspp.aspp_layer.convs[:4]]
    assert dilations == [(1, 1), (6, 6), (12, 12), (18, 18)]  # golden JSON: aspp_branch_dilations
    assert paddings == [(0, 0), (6, 6), (12, 12), (18, 18)]
    activations = [type(m) for m in head.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    assert activations and set(activations) == {nn.ReLU}


@pytest.mark.parametrize(
    ("make_backbone", "aspp_channels", "expected"),
    [
        (lambda: MobileViT("xxs", output_stride=16, expand_output=False), 256, 1_854_853),
        (lambda: MobileViT("xs", output_stride=16, expand_output=False), 256, 2_944_069),
        (lambda: MobileViT("s", output_stride=16, expand_output=False), 256, 6_357_941),
        (lambda: MobileViTv2(0.5, output_stride=16), 512, 6_242_318),
    ],
    ids=["v1_xxs", "v1_xs", "v1_s", "v2_050"],
)
def test_parameter_counts_match_spec(make_backbone, aspp_channels: int, expected: int) -> None:
    backbone = make_backbone()
    model = nn.Sequential(backbone, DeepLabV3Head(backbone.out_channels, 21, aspp_channels=aspp_channels))
    assert _count(model) == expected


def test_ade20k_os8_configuration() -> None:
    backbone = MobileViTv2(0.5, output_stride=8)
    head = DeepLabV3Head(backbone.out_channels, 151, aspp_channels=512, atrous_rates=(12, 24, 36))
    model = nn.Sequential(backbone, head).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 151, 8, 12)
    assert [b.block.conv.dilation[0] for b in head.aspp.aspp_layer.convs[1:4]] == [12, 24, 36]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch", [0, 1])
def test_every_family_non_square_and_small_batches(family: str, batch: int) -> None:
    backbone = FAMILIES[family]()
    head = DeepLabV3Head(backbone.out_channels, 5, aspp_channels=32)
    model = nn.Sequential(backbone, head).eval()
    images = torch.rand(batch, 3, 96, 64)
    with torch.no_grad():
        features = backbone(images)
        low = model(images)
        full = SegmentationModel(backbone, head).eval()(images)
    assert low.shape == (batch, 5, *features.shape[-2:])
    assert full.shape == (batch, 5, 96, 64)
    assert torch.isfinite(low).all() and torch.isfinite(full).all()


def test_output_size_scale_factor_and_segmentation_model_agree() -> None:
    torch.manual_seed(0)
    features = torch.rand(2, 16, 6, 4)
    base = DeepLabV3Head(16, 3, aspp_channels=8).eval()
    sized = DeepLabV3Head(16, 3, aspp_channels=8, output_size=(96, 64), align_corners=True).eval()
    scaled = DeepLabV3Head(16, 3, aspp_channels=8, scale_factor=16, align_corners=True).eval()
    sized.load_state_dict(base.state_dict())
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        low = base(features)
        expected = F.interpolate(low, size=(96, 64), mode="bilinear", align_corners=True)
        torch.testing.assert_close(sized(features), expected)
        torch.testing.assert_close(scaled(features), expected)
        # the wrapper resizes whatever the head gives to the input's own size
        inputs = torch.rand(2, 16, 96, 64)
        wrapped = SegmentationModel(nn.AvgPool2d(16), base, align_corners=True).eval()
        low_wrapped = base(F.avg_pool2d(inputs, 16))
        expected_wrapped = F.interpolate(low_wrapped, size=(96, 64), mode="bilinear", align_corners=True)
        torch.testing.assert_close(wrapped(inputs), expected_wrapped)
    assert not torch.allclose(
        expected, F.interpolate(low, size=(96, 64), mode="bilinear", align_corners=False), atol=1e-3
    )


def test_image_pooling_branch_is_constant_per_channel() -> None:
    head = DeepLabV3Head(8, 2, aspp_channels=4).eval()
    out = head.aspp.aspp_layer.convs[4](torch.rand(2, 8, 5, 3))
    assert out.shape == (2, 4, 5, 3)
    torch.testing.assert_close(out, out[:, :, :1, :1].expand_as(out))


@pytest.mark.parametrize("family", ["v1_xxs", "v2_050"])
def test_every_parameter_gets_a_gradient(family: str) -> None:
    torch.manual_seed(0)
    backbone = FAMILIES[family]()
    model = SegmentationModel(backbone, DeepLabV3Head(backbone.out_channels, 4, aspp_channels=16)).train()
    images = torch.rand(2, 3, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    F.cross_entropy(model(images), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    head_grads = [p.grad.abs().sum() for p in model.head.parameters()]
    assert all(g > 0 for g in head_grads)


def test_cvnets_keys() -> None:
    head = DeepLabV3Head(80, 21)
    own = set(head.state_dict())
    assert head.cvnets_prefixes == ("seg_head.",)
    for official in (
        "seg_head.classifier.classifier.block.conv.weight",  # v0.1
        "seg_head.classifier.block.conv.weight",  # v0.2+
    ):
        assert head.cvnets_key(official) == "classifier.block.conv.weight"
    mapped = head.cvnets_key("seg_head.aspp.aspp_layer.project.block.norm.running_var")
    assert mapped == "aspp.aspp_layer.project.block.norm.running_var" and mapped in own
    assert head.cvnets_key("seg_head.aux_head.0.block.conv.weight") is None
    assert head.cvnets_key("encoder.conv_1.block.conv.weight") is None


def test_load_drops_only_the_auxiliary_head() -> None:
    backbone = MobileViTv2(0.5, output_stride=16)
    head = DeepLabV3Head(backbone.out_channels, 21, aspp_channels=512)
    blob = load_golden("v2_050_deeplabv3")
    state = dict(blob["state_dict"])
    state["seg_head.aux_head.0.block.conv.weight"] = torch.zeros(128, 192, 3, 3, dtype=torch.float16)
    state["seg_head.aux_head.2.block.conv.bias"] = torch.zeros(21, dtype=torch.float16)
    assert sorted(load_official(backbone, head, state)) == [
        "seg_head.aux_head.0.block.conv.weight",
        "seg_head.aux_head.2.block.conv.bias",
    ]
    state["seg_head.unknown.weight"] = torch.zeros(1)
    with pytest.raises(AssertionError, match="left unmapped"):
        load_official(backbone, head, state)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(in_channels=80, num_classes=0), ValueError, "num_classes"),
        (dict(in_channels=80, num_classes="21"), TypeError, "num_classes"),
        (dict(in_channels=0, num_classes=21), ValueError, "in_channels"),
        (dict(in_channels=80, atrous_rates=(6, 12)), ValueError, "atrous_rates"),
        (dict(in_channels=80, atrous_rates=(6, 0, 18)), ValueError, "atrous_rates"),
        (dict(in_channels=80, dropout=1.5), ValueError, "dropout"),
        (dict(in_channels=80, output_size=(64, 64), scale_factor=16), ValueError, "not both"),
        (dict(in_channels=80, output_size=(64, 64, 3)), ValueError, "output_size"),
        (dict(in_channels=80, scale_factor=-2), ValueError, "scale_factor"),
        (dict(in_channels=80, align_corners=1), TypeError, "align_corners"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DeepLabV3Head(**kwargs)


def test_channel_mismatch_is_a_clear_error() -> None:
    backbone = MobileViT("xxs", output_stride=16)  # expand_output=True: 320 channels, not 80
    model = nn.Sequential(backbone, DeepLabV3Head(80, 21)).eval()
    with pytest.raises(ValueError, match="80"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(TypeError):
        DeepLabV3Head(80, 21)(torch.zeros(1, 80, 4, 4, dtype=torch.long))
