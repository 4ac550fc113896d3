"""Bad arguments and inputs raise clear TypeError/ValueError; odd but valid inputs work."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionkit.contrib import ClassificationHead, MobileViT, MobileViTv2, MobileViTv3
from visionkit.contrib.variants import build_variant, get_variant


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'xxs', 'xs', 's'.*got 'xxl'"):
        MobileViT(mode="xxl")


def test_seed_spellings_are_aliases() -> None:
    assert MobileViT(mode="xx_small").config == MobileViT(mode="xxs").config
    assert MobileViT(mode="x_small").config == MobileViT(mode="xs").config
    assert MobileViT(mode="small").config == MobileViT(mode="s").config


@pytest.mark.parametrize("width", [0, -0.5, float("inf"), float("nan")])
def test_width_must_be_positive(width: float) -> None:
    with pytest.raises(ValueError, match="width_multiplier"):
        MobileViTv2(width)


def test_width_type() -> None:
    with pytest.raises(TypeError, match="width_multiplier"):
        MobileViTv2("1.0")  # type: ignore[arg-type]


def test_any_positive_width_builds() -> None:
    assert MobileViTv2(0.3).out_channels == 152


def test_v3_needs_exactly_one_of_mode_and_width() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MobileViTv3()
    with pytest.raises(ValueError, match="exactly one"):
        MobileViTv3(mode="xxs", width_multiplier=0.5)
    with pytest.raises(ValueError, match="xxs_l2"):
        MobileViTv3(mode="xxxs")


def test_misspelled_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        MobileViT(mode="xxs", output_strid=16)  # type: ignore[call-arg]


@pytest.mark.parametrize("kwargs, error", [
    ({"output_stride": 4}, ValueError),
    ({"output_stride": "16"}, TypeError),
    ({"in_channels": 0}, ValueError),
    ({"in_channels": 3.0}, TypeError),
    ({"expand_output": 1}, TypeError),
    ({"dropout": 1.5}, ValueError),
])
def test_bad_constructor_arguments(kwargs: dict, error: type) -> None:
    (name,) = kwargs
    with pytest.raises(error, match=name):  # the library's own check, naming the argument
        MobileViT(mode="xxs", **kwargs)


def test_input_must_be_a_tensor() -> None:
    with pytest.raises(TypeError, match="expected Tensor"):
        MobileViT(mode="xxs")([[0.0]])  # type: ignore[arg-type]


def test_input_must_be_4d_and_the_message_shows_both_shapes() -> None:
    with pytest.raises(ValueError) as info:
        MobileViT(mode="xxs")(torch.rand(3, 64, 64))
    assert "['B', '3', 'H', 'W']" in str(info.value) and "[3, 64, 64]" in str(info.value)


def test_wrong_channel_count_names_both_numbers() -> None:
    with pytest.raises(ValueError, match="expected 3, got 4"):
        MobileViTv2(0.5)(torch.rand(1, 4, 64, 64))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_input_asks_for_floating(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        MobileViT(mode="xxs")(torch.zeros(1, 3, 64, 64, dtype=dtype))


def test_forward_intermediates_validates_input_too() -> None:
    with pytest.raises(ValueError):
        MobileViT(mode="xxs").forward_intermediates(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_empty_batch_returns_an_empty_batch(name: str) -> None:
    from test_backbone_contract import expected_level_sizes

    backbone = build_variant(name).eval()
    out = backbone(torch.rand(0, 3, 64, 96))
    assert out.shape == (0, backbone.out_channels, *expected_level_sizes(get_variant(name), 64, 96)[-1])
    assert [f.shape[0] for f in backbone.forward_intermediates(torch.rand(0, 3, 64, 96))] == [0] * 5


def test_classification_head_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationHead(320, 0)
    with pytest.raises(TypeError, match="in_channels must be an int"):
        ClassificationHead(320.0, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        ClassificationHead(320, 10, dropout=1.0)


def test_unknown_variant_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="mobilevitv2_050"):
        get_variant("mobilevit_xxl")


SMALL = ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs_l2", "mobilevitv3_050"]
MODELS = {name: build_variant(name).eval() for name in SMALL}


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(SMALL),
    batch=st.integers(0, 3),
    height=st.integers(1, 160),
    width=st.integers(1, 160),
)
def test_any_size_and_batch_gives_the_documented_shape(name: str, batch: int, height: int, width: int) -> None:
    from test_backbone_contract import expected_level_sizes

    backbone = MODELS[name]
    with torch.no_grad():
        out = backbone(torch.rand(batch, 3, height, width))
    expected = expected_level_sizes(get_variant(name), height, width)[-1]
    assert out.shape == (batch, backbone.out_channels, *expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 3, 0, 64), (1, 3, 64, 0)])
def test_zero_height_or_width_is_a_value_error_showing_the_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"height and width must be at least 1, got shape \(1, 3, (0, 64|64, 0)\)"):
        MobileViT(mode="xxs")(torch.rand(shape))


def test_classification_head_checks_its_feature_map() -> None:
    from torch import nn

    from visionkit.contrib import FeatureExtractor

    head = ClassificationHead(320, 10)
    unexpanded = nn.Sequential(MobileViT(mode="xxs", expand_output=False), head)
    with pytest.raises(ValueError, match=r"\(B, 320, H, W\), got shape \(1, 80, 2, 2\); .*expand_output=False"):
        unexpanded(torch.rand(1, 3, 64, 64))
    with pytest.raises(TypeError, match="takes one feature map .* got list; after a FeatureExtractor"):
        nn.Sequential(FeatureExtractor(MobileViT(mode="xxs"), indices=(3, 4)), head)(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got shape \(2, 320\)"):
        head(torch.rand(2, 320))
    assert head(torch.rand(2, 320, 3, 5)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"got shape \(1, 640, 2, 2\)$"):  # more channels: not a missing expansion
        head(torch.rand(1, 640, 2, 2))
    with pytest.raises(ValueError, match="height and width must be at least 1"):
        head(torch.rand(1, 320, 0, 4))  # the mean of nothing would be NaN logits
    for dtype in (torch.uint8, torch.float64):
        with pytest.raises(TypeError, match=f"the input has dtype {dtype} but the model has dtype torch.float32"):
            head(torch.ones(1, 320, 2, 2, dtype=dtype))
    scripted = torch.jit.script(head.eval())  # the checks stay out of TorchScript, as before they existed
    x = torch.rand(2, 320, 3, 5)
    torch.testing.assert_close(scripted(x), head(x))


def test_classification_head_runs_the_modules_it_holds_and_slices_to_a_sequential() -> None:
    from torch import nn

    head = ClassificationHead(8, 3).eval()
    x = torch.rand(2, 8, 4, 4)
    logits = head(x)
    head.append(nn.Softmax(dim=1))
    torch.testing.assert_close(head(x), logits.softmax(dim=1))
    pooled = head[:2]
    assert type(pooled) is nn.Sequential and list(pooled._modules) == ["pool", "flatten"]
    torch.testing.assert_close(pooled(x), x.mean(dim=(2, 3)))


def test_attention_and_aspp_building_blocks_check_their_arguments() -> None:
    from visionkit.contrib.attention import LinearAttnFFN, LinearSelfAttention, TransformerEncoder
    from visionkit.contrib.segmentation import ASPP

    cases = [
        (lambda: ASPP(80, 256, 6, 0.1), ValueError, "atrous_rates must be a sequence of three ints"),
        (lambda: ASPP(80, 256, (6, 12), 0.1), ValueError, "atrous_rates must be a sequence of three ints"),
        (lambda: ASPP(80, 256, (6, 12, 18), 1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: ASPP(80, 0, (6, 12, 18), 0.1), ValueError, "out_channels must be a positive integer"),
        (lambda: LinearSelfAttention("64"), TypeError, "dim must be an int, got '64'"),
        (lambda: LinearSelfAttention(64, attn_dropout=-0.1), ValueError, r"attn_dropout must be in \[0, 1\)"),
        (lambda: TransformerEncoder(64, 0, num_heads=4), ValueError, "ffn_dim must be a positive integer, got 0"),
        (lambda: TransformerEncoder(64, 128, num_heads=4, dropout=True), TypeError, "dropout must be a number"),
        (lambda: LinearAttnFFN(64, 128, ffn_dropout=1.5), ValueError, r"ffn_dropout must be in \[0, 1\), got 1.5"),
        (lambda: ClassificationHead(320, 10, dropout=float("nan")), ValueError, r"dropout must be in \[0, 1\)"),
    ]
    for build, error, message in cases:
        with pytest.raises(error, match=message):
            build()
    assert len(ASPP(80, 256, (6, 12, 18), 0.1).convs) == 5


def test_a_variant_refuses_to_have_its_own_size_overridden() -> None:
    with pytest.raises(TypeError, match=r"mobilevit_xxs fixes mode='xxs'; got mode='s'"):
        build_variant("mobilevit_xxs", mode="s")
    with pytest.raises(TypeError, match=r"mobilevitv2_050 fixes width_multiplier=0.5"):
        build_variant("mobilevitv2_050", width_multiplier=2.0)
    assert build_variant("mobilevitv2_050", output_stride=16).output_stride == 16


def test_stage_strides_other_than_the_official_ones_are_refused() -> None:
    import dataclasses

    config = MobileViT(mode="xxs").config
    with pytest.raises(ValueError, match="layer_2.stride must be 2"):
        dataclasses.replace(config, layer_2=dataclasses.replace(config.layer_2, stride=1))
    with pytest.raises(ValueError, match="layer_1.stride must be 1"):
        dataclasses.replace(config, layer_1=dataclasses.replace(config.layer_1, stride=3))


def test_reset_parameters_also_resets_the_batchnorm_statistics() -> None:
    model = MobileViT(mode="xxs").train()
    model(torch.rand(2, 3, 64, 64) * 5)
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    assert all(int(m.num_batches_tracked) == 0 for m in norms)


def test_count_macs_counts_attention_on_cpu() -> None:
    # F.scaled_dot_product_attention runs aten._scaled_dot_product_flash_attention_for_cpu, which PyTorch's
    # FlopCounterMode has no formula for: MobileViT v1's attention used to count nothing. (That kernel takes
    # contiguous inputs; a transposed view runs the math path, whose matrix products were always counted.)
    from torch import nn
    from torch.nn import functional as F

    from visionkit.contrib.summary import count_macs

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 64, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.conv(x).flatten(2).reshape(1, 4, 16, -1).transpose(2, 3).contiguous()  # (1, 4, H * W, 16)
            return F.scaled_dot_product_attention(tokens, tokens, tokens)

    # the 1x1 convolution, then per head q k^T and the weighted sum of v: 64 x 64 x 16 multiply-adds each
    assert count_macs(Attend(), 8, 8) == 3 * 64 * 64 + 4 * 2 * 64 * 64 * 16


def test_count_macs_restores_every_module_mode_and_follows_the_model_dtype() -> None:
    from visionkit.contrib.summary import count_macs

    model = MobileViT(mode="xxs").train()
    model.layer_1.eval()  # a mixed state, as after freezing part of a model
    modes = [m.training for m in model.modules()]
    macs = count_macs(model, 64, 64)
    assert [m.training for m in model.modules()] == modes
    assert count_macs(model.double(), 64, 64) == macs
    with pytest.raises(ValueError):
        count_macs(model, 0, 64)
    assert [m.training for m in model.modules()] == modes  # also after an error


def test_anchor_and_box_helpers_check_their_inputs() -> None:
    from visionkit.contrib import SSDAnchorGenerator, SSDLitePostProcess, decode_ssd_boxes

    generator = SSDAnchorGenerator()
    sizes = [(4, 4)] * generator.num_levels
    with pytest.raises(TypeError, match=r"feature size 0 must be a \(height, width\) pair of ints, got \(20.5, 20\)"):
        generator([(20.5, 20)] + sizes[1:])
    with pytest.raises(ValueError, match="got 20"):
        generator([20] * generator.num_levels)
    with pytest.raises(TypeError, match="floating"):
        generator(sizes, dtype=torch.int64)
    anchors = generator(sizes)
    with pytest.raises(TypeError, match="offsets"):
        decode_ssd_boxes(anchors.numpy()[None], anchors)
    with pytest.raises(TypeError, match="logits"):
        logits = torch.zeros(1, len(anchors), 3).numpy()
        SSDLitePostProcess()(torch.zeros(1, len(anchors), 4), logits, anchors, (64, 64))


def test_segmentation_and_detection_heads_and_attention_check_their_arguments_and_inputs() -> None:
    from visionkit.contrib import DeepLabV3Head, SSDLiteHead
    from visionkit.contrib.attention import MultiHeadAttention

    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="scale_factor must be positive and finite"):
            DeepLabV3Head(80, 21, scale_factor=bad)
    with pytest.raises(TypeError, match="the input has dtype torch.float64 but the model has dtype torch.float32"):
        DeepLabV3Head(80, 21)(torch.rand(1, 80, 8, 8, dtype=torch.float64))
    detection_head = SSDLiteHead((64, 80), num_classes=5).eval()
    maps = [torch.rand(1, 64, 8, 8), torch.rand(1, 80, 4, 4)]
    with pytest.raises(TypeError, match="the input has dtype torch.float64 but the model has dtype torch.float32"):
        detection_head([m.double() for m in maps])
    with pytest.raises(ValueError, match="the input is on meta but the model is on cpu"):
        detection_head([m.to("meta") for m in maps])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert detection_head([m.bfloat16() for m in maps])[1].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        MultiHeadAttention(64, 0)
    with pytest.raises(ValueError, match=r"attn_dropout must be in \[0, 1\), got 1.5"):
        MultiHeadAttention(64, 4, 1.5)


def test_building_blocks_check_their_arguments_and_numpy_numbers_are_taken() -> None:
    import numpy as np

    from visionkit.contrib import DeepLabV3Head, FeatureExtractor
    from visionkit.contrib.detection import SeparableConv
    from visionkit.contrib.layers import ConvLayer
    from visionkit.contrib.segmentation import ASPPPooling

    with pytest.raises(ValueError, match="in_channels must be a positive integer, got 0"):
        ASPPPooling(0, 3)
    with pytest.raises(TypeError, match="out_channels must be an int, got 2.5"):
        ASPPPooling(8, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="in_channels must be an int, got 'a'"):
        ASPPPooling("a", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got \(1, 2, 3\)"):
        SeparableConv(3, 3, stride=(1, 2, 3))  # type: ignore[arg-type]
    assert SeparableConv(3, 3, stride=(1, 2))(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 4)
    with pytest.raises(ValueError, match=r"groups \(4\) must divide in_channels \(6\)"):
        ConvLayer(6, 4, 3, groups=4)
    with pytest.raises(TypeError, match="bias"):
        ConvLayer(3, 16, 3, bias=1)  # type: ignore[arg-type]
    for bad in (True, "64", 64.0):
        with pytest.raises(TypeError, match="output_size must be an int or a pair"):
            DeepLabV3Head(80, 21, output_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"output_size must be an int or a pair \(H, W\) of ints, got \(1, 2, 3\)"):
        DeepLabV3Head(80, 21, output_size=(1, 2, 3))
    assert DeepLabV3Head(80, 21, output_size=np.int64(64)).output_size == (64, 64)
    assert DeepLabV3Head(80, 21, scale_factor=np.float32(16)).scale_factor == 16.0
    shrinking = DeepLabV3Head(80, 21, scale_factor=0.01).eval()
    with pytest.raises(ValueError, match=r"scale_factor=0.01 would shrink the \(8, 8\) map to nothing"):
        shrinking(torch.rand(1, 80, 8, 8))
    assert shrinking(torch.rand(1, 80, 100, 200)).shape == (1, 21, 1, 2)
    assert MobileViTv2(np.float32(0.5)).config == MobileViTv2(0.5).config
    backbone = MobileViT(mode="xxs", output_stride=np.int64(16), in_channels=np.int64(3))
    assert type(backbone.output_stride) is int and type(backbone.in_channels) is int
    assert FeatureExtractor(MobileViT(mode="xxs"), indices=(np.int64(3), np.int64(-1))).indices == (3, 4)
    x = torch.rand(1, 3, 64, 64)
    assert [f.shape[1] for f in MobileViT(mode="xxs").forward_intermediates(x, (np.int64(2),))] == [48]
    with pytest.raises(TypeError, match=r"indices\[\.\.\.\] must be an int, got 2.0"):
        MobileViT(mode="xxs").forward_intermediates(x, (2.0,))  # type: ignore[arg-type]


def test_reset_parameters_resets_sync_batchnorm_too() -> None:
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(MobileViT(mode="xxs"))
    norm = model.conv_1.block.norm
    with torch.no_grad():
        norm.weight.fill_(7.0)
        norm.running_mean.fill_(3.0)
    model.reset_parameters()
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))


def test_float64_input_is_a_clear_type_error_under_autocast_too() -> None:
    model = MobileViT(mode="xxs").eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)  # what torch.from_numpy gives for default numpy arrays
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="the input has dtype torch.float64 but the model has dtype torch.float32"):
            model(x)
        assert model(x.float()).dtype == torch.bfloat16  # float32 input is what autocast casts


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1])
def test_every_positive_finite_argument_refuses_nan_infinity_zero_and_negatives(bad: float, tmp_path) -> None:
    from visionkit.contrib.anchors import SSDAnchorGenerator
    from visionkit.contrib.boxes import decode_ssd_boxes
    from visionkit.contrib.configs import TransformerStageConfig
    from visionkit.demo import run_demo

    calls = {
        "TransformerStageConfig.expand_ratio": lambda: TransformerStageConfig(48, 64, 128, 2, bad),
        "aspect ratio": lambda: SSDAnchorGenerator(((2.0, bad),)),
        "size_variance": lambda: decode_ssd_boxes(torch.zeros(1, 4), torch.ones(1, 4), size_variance=bad),
        "center_variance": lambda: decode_ssd_boxes(torch.zeros(1, 4), torch.ones(1, 4), center_variance=bad),
        "lr": lambda: run_demo(lr=bad, output=tmp_path / "unused"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"^{name} must be positive and finite, got {bad!r}$"):
            call()
    assert not (tmp_path / "unused").exists()


def test_architecture_configs_are_checked_field_by_field() -> None:
    from visionkit.contrib import MobileViTBackbone
    from visionkit.contrib.configs import BlockConfig, ConvStageConfig, TransformerStageConfig, mobilevit_config

    with pytest.raises(ValueError, match="ConvStageConfig.num_blocks must be a positive integer, got 0"):
        ConvStageConfig(24, 0, 2, 2)
    with pytest.raises(ValueError, match="TransformerStageConfig.expand_ratio must be positive and finite"):
        TransformerStageConfig(48, 64, 128, 2, 0.0)
    with pytest.raises(ValueError, match="attention must be one of 'multi_head', 'separable'; got 'multihead'"):
        BlockConfig("multihead", "input", False, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion of the 'separable' block must be one of 'none', 'local'"):
        BlockConfig("separable", "input", True, True)
    with pytest.raises(ValueError, match="BlockConfig.patch_size must be a positive integer, got 0"):
        BlockConfig("multi_head", "input", False, False, patch_size=0)
    config = mobilevit_config("xxs")
    with pytest.raises(ValueError, match="BackboneConfig.expansion_channels must be a positive integer, got 0"):
        dataclasses.replace(config, expansion_channels=0)
    with pytest.raises(ValueError, match=r"attn_dropout must be in \[0, 1\), got 1.0"):
        dataclasses.replace(config, attn_dropout=1.0)
    with pytest.raises(TypeError, match="layer_3"):
        dataclasses.replace(config, layer_3=config.layer_1)
    assert MobileViTBackbone(config).feature_info == MobileViT(mode="xxs").feature_info


def test_blocks_and_patch_helpers_check_their_arguments() -> None:
    from visionkit.contrib.blocks import MobileViTBlock, MobileViTBlockV2, fold_tokens, unfold_tokens

    with pytest.raises(ValueError, match="patch_size must be a positive integer, got 0"):
        MobileViTBlock(8, 8, 16, num_layers=1, patch_size=0)
    with pytest.raises(ValueError, match="num_layers must be a positive integer, got -1"):
        MobileViTBlock(8, 8, 16, num_layers=-1)
    with pytest.raises(TypeError, match="num_layers"):
        MobileViTBlockV2(8, 8, 16, num_layers=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels must be a positive integer, got 0"):
        MobileViTBlockV2(0, 8, 16, num_layers=1)
    with pytest.raises(ValueError, match=r"multiples of patch_size=2, got shape \(1, 1, 5, 4\)"):
        unfold_tokens(torch.rand(1, 1, 5, 4), 2)
    with pytest.raises(ValueError, match=r"got shape \(1, 5, 4\)"):
        unfold_tokens(torch.rand(1, 5, 4), 2)
    with pytest.raises(ValueError, match=r"tokens of a 4x4 map with patch_size=2"):
        fold_tokens(torch.rand(1, 4, 6, 3), 4, 4, 2)


def test_a_batch_of_one_that_batchnorm_cannot_train_on_changes_no_statistics() -> None:
    from visionkit.contrib import DeepLabV3Head, FeatureExtractor, SegmentationModel, SSDLite, SSDLiteHead

    models = {
        "v1 backbone": MobileViT(mode="xxs"),
        "v2 backbone": MobileViTv2(0.5),
        "segmenter": SegmentationModel(MobileViT(mode="xxs", output_stride=16, expand_output=False),
                                       DeepLabV3Head(80, 21)),
        "detector": SSDLite(FeatureExtractor(MobileViTv2(0.5), indices=(3, 4)),
                            SSDLiteHead((192, 256), num_classes=3)),
    }
    for name, model in models.items():
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        # 1x1 maps: the backbones' layer_5 at 32x32, the segmenter's pooling branch at any size, and the detector's
        # first extra level at 64x64 (after its backbone ran and updated its own statistics)
        size = {"segmenter": 64, "detector": 64}.get(name, 32)
        with pytest.raises(ValueError, match="batch of at least 2"):
            model(torch.rand(1, 3, size, size))
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    with pytest.raises(ValueError, match="needs a batch of at least 2: its image-pooling branch.*SegmentationModel "
                       "checks before its backbone runs"):
        DeepLabV3Head(80, 21).train()(torch.rand(1, 80, 8, 8))
    # The detection head alone checks its pyramid before any of its layers runs (the second extra level is 1x1).
    head = SSDLiteHead((192, 256), num_classes=3).train()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match=r"needs a batch of at least 2 for these maps: level 3 .* \(4, 4\) and "
                       r"\(3, 3\).*SSDLite puts them back"):
        head([torch.rand(1, 192, 4, 4), torch.rand(1, 256, 3, 3)])
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    head([torch.rand(1, 192, 20, 20), torch.rand(1, 256, 10, 10)])  # no 1x1 level: a batch of one trains
    models["v1 backbone"](torch.rand(2, 3, 32, 32))  # two values per channel are enough


def test_reset_parameters_and_fuse_handle_unusual_norms_and_frozen_layers() -> None:
    model = MobileViTv2(0.5)
    model.layer_5[1].global_rep[-1] = torch.nn.GroupNorm(1, 128, affine=False)
    model.reset_parameters()  # used to fail halfway on the missing weight
    frozen = MobileViT(mode="xxs").eval().requires_grad_(False).to(memory_format=torch.channels_last)
    frozen.fuse()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in frozen.parameters() if p.dim() == 4)


def test_an_unknown_weights_tag_is_refused_before_the_model_draws_random_weights() -> None:
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="weights must be a registered tag such as 'cvnets-in1k'"):
        MobileViT(mode="xxs", weights="no-such-tag")
    with pytest.raises(TypeError, match="weights"):
        MobileViTv2(0.5, weights=3)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), state)


def test_numpy_scalars_tensor_sizes_and_tuple_strides_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from visionkit.contrib import DeepLabV3Head, SeparableConv, SSDLitePostProcess, batched_nms, decode_ssd_boxes
    from visionkit.contrib.blocks import MobileViTBlockV2

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    labels = torch.tensor([1, 1])
    assert batched_nms(boxes, torch.tensor([0.9, 0.8]), labels, np.float32(0.5)).tolist() == [0]
    assert batched_nms(boxes, torch.tensor([0.9, 0.8]), labels, torch.tensor(0.5)).tolist() == [0]
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert decode_ssd_boxes(torch.zeros(1, 1, 4), anchors, np.float32(0.1), np.float64(0.2)).shape == (1, 1, 4)
    logits = torch.tensor([[[0.0, 5.0, 0.0]]])
    for size in (torch.tensor([320, 320]), np.array([320, 320]), (np.int64(320), 320)):
        (result,) = SSDLitePostProcess(conf_threshold=0.5)(torch.zeros(1, 1, 4), logits, anchors, size)
        assert result["boxes"].tolist() == [[128.0, 96.0, 192.0, 224.0]]
    assert SeparableConv(np.int64(4), np.int64(8), stride=(2, 2))(torch.rand(1, 4, 9, 9)).shape == (1, 8, 5, 5)
    assert MobileViTBlockV2(np.int64(8), 8, 16, num_layers=1)(torch.rand(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    head = DeepLabV3Head(80, 5).train()  # fine-tuning with frozen BatchNorms: batch 1 is fine
    for module in head.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    assert head(torch.rand(1, 80, 8, 8)).shape == (1, 5, 8, 8)
    from visionkit.contrib import list_weights, weights

    loaded = []
    monkeypatch.setattr(weights, "load_weights", lambda model, tag: loaded.append(tag))
    entry = list_weights("mobilevit_xxs")[0]
    MobileViT(mode="xxs", weights="DEFAULT")
    MobileViT(mode="xxs", weights=entry)  # type: ignore[arg-type]
    assert loaded == ["DEFAULT", entry]


def test_heads_and_backbones_check_inputs_against_the_layers_they_hold_now() -> None:
    from torch import nn

    from visionkit.contrib import DeepLabV3Head

    head = ClassificationHead(320, 10).eval()
    features = torch.rand(2, 320, 3, 3)
    head.fc = nn.Identity()  # pooled embeddings instead of logits
    torch.testing.assert_close(head(features), features.mean(dim=(2, 3)))
    quantized = torch.ao.quantization.quantize_dynamic(ClassificationHead(320, 10).eval(), {nn.Linear})
    assert quantized(features).shape == (2, 10)
    trimmed = ClassificationHead(320, 10).eval()
    del trimmed[2]  # the dropout; nn.Sequential renames what follows
    assert trimmed(features).shape == (2, 10)
    with pytest.raises(TypeError, match="the input has dtype torch.int64") as info:
        ClassificationHead(320, 10)(torch.ones(1, 320, 2, 2, dtype=torch.int64))
    assert "model.to(torch.int64)" not in str(info.value)  # a model cannot be converted to an integer dtype
    seg = DeepLabV3Head(80, 21).eval()
    seg.classifier = nn.Conv2d(256, 5, 1)
    assert seg(torch.rand(1, 80, 8, 8)).shape == (1, 5, 8, 8)
    backbone = MobileViT(mode="xxs").eval()
    backbone.conv_1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
    assert backbone(torch.rand(1, 3, 64, 64)).shape == (1, 320, 2, 2)


def test_segmentation_model_refuses_a_head_that_does_not_fit_its_backbone() -> None:
    from visionkit.contrib import DeepLabV3Head, SegmentationModel

    with pytest.raises(ValueError, match="has 320 channels but the head takes 80.*expand_output=False"):
        SegmentationModel(MobileViT(mode="xxs"), DeepLabV3Head(80, 21))
    model = SegmentationModel(MobileViT(mode="xxs", expand_output=False), DeepLabV3Head(80, 21)).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 21, 64, 64)


def test_aspp_refuses_a_training_batch_of_one_before_any_statistic_changes() -> None:
    from visionkit.contrib.segmentation import ASPP

    aspp = ASPP(80, 16, (6, 12, 18), 0.1).train()
    before = {k: v.clone() for k, v in aspp.state_dict().items()}
    with pytest.raises(ValueError, match="ASPP needs a batch of at least 2"):
        aspp(torch.rand(1, 80, 8, 8))
    assert all(torch.equal(v, before[k]) for k, v in aspp.state_dict().items())
    assert aspp(torch.rand(2, 80, 8, 8)).shape == (2, 16, 8, 8)


def test_ssdlite_head_needs_an_object_class_beside_the_background() -> None:
    from visionkit.contrib import SSDLiteHead

    with pytest.raises(ValueError, match="at least 2, got 1"):
        SSDLiteHead((64, 80), num_classes=1)
    assert SSDLiteHead((64, 80), num_classes=2).num_classes == 2


def test_numpy_scalars_are_taken_for_dropouts_scales_and_aspect_ratios() -> None:
    import numpy as np

    from visionkit.contrib import SSDAnchorGenerator

    dropout = MobileViT(mode="xxs", dropout=np.float32(0.1)).config.dropout
    assert type(dropout) is float and dropout == pytest.approx(0.1)
    assert ClassificationHead(320, 10, dropout=np.float32(0.1)).dropout.p == pytest.approx(0.1)
    reference = SSDAnchorGenerator(((2,), (2, 3)), min_scale=0.2, max_scale=0.9)
    numpy = SSDAnchorGenerator(((np.int64(2),), (2, np.float32(3))), min_scale=np.float32(0.2), max_scale=0.9)
    sizes = [(4, 4), (2, 2)]
    torch.testing.assert_close(numpy(sizes), reference(sizes), rtol=0, atol=0)
    with pytest.raises(TypeError, match="device"):
        reference(sizes, (64, 64))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aspect ratio must be a number, got a bool"):
        SSDAnchorGenerator(((True,),))


def test_low_level_blocks_check_expansion_depthwise_flag_and_patch_rank() -> None:
    from visionkit.contrib.blocks import MobileViTBlock, fold_patches
    from visionkit.contrib.layers import InvertedResidual

    for ratio in (0, -2, float("nan")):
        with pytest.raises(ValueError, match="expand_ratio must be positive and finite"):
            InvertedResidual(16, 24, stride=2, expand_ratio=ratio)
    with pytest.raises(TypeError, match="local_depthwise"):
        MobileViTBlock(48, 64, 128, num_layers=1, local_depthwise="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, C, P, N\) patches, got shape \(1, 3, 4\)"):
        fold_patches(torch.rand(1, 3, 4), 4, 4, 2)


def test_fx_symbolic_tracing_of_a_whole_backbone_says_what_records_it_instead() -> None:
    with pytest.raises(TypeError, match=r"torch.fx.symbolic_trace cannot trace a whole backbone.*torch.export"):
        torch.fx.symbolic_trace(MobileViT(mode="xxs").eval())
