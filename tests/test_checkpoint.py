"""load_checkpoint / convert_state_dict / save_checkpoint: every layout, safety, atomicity, numerical equality."""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from visionkit.contrib import (
    ClassificationHead,
    MobileViT,
    MobileViTBackbone,
    MobileViTv2,
    MobileViTv3,
    convert_state_dict,
    detect_source,
    flip_stem_channels,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from visionkit.contrib.key_maps import official_to_layout

DATA = pathlib.Path(__file__).parent / "data"

GOLDENS: dict[str, Callable[[], MobileViTBackbone]] = {
    "v1_xxs": lambda: MobileViT(mode="xxs"),
    "v2_050": lambda: MobileViTv2(0.5),
    "v3_xxs": lambda: MobileViTv3(mode="xxs"),
    "v3_050": lambda: MobileViTv3(width_multiplier=0.5),
}


def classifier(backbone: MobileViTBackbone, num_classes: int = 1000) -> nn.Sequential:
    return nn.Sequential(backbone, ClassificationHead(backbone.out_channels, num_classes))


def randomize_(model: nn.Module, seed: int = 0, calibrate: bool = True) -> nn.Module:
    """Random weights and non-trivial norm statistics, activations kept O(1) (as the goldens were made).

    ``calibrate=False`` skips the BN calibration pass (random statistics suffice where no forward is compared).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                module.weight.copy_(0.6 + 0.8 * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not calibrate:
            for bn in bns:
                bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
                bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))
            return model.eval()
        # Calibrate BN statistics on one small random batch, then perturb them.
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        images = torch.rand(2, 3, 64, 64, generator=gen)
        model(pixel_values=images) if hasattr(model, "main_input_name") else model(images)
        model.eval()
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=gen) * bn.running_var.sqrt())
            bn.running_var.mul_(0.7 + 0.7 * torch.rand(bn.running_var.shape, generator=gen)).clamp_(min=1e-4)
    return model


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert list(current) == list(reference)
    for key, value in reference.items():
        assert torch.equal(current[key], value), key


def official_state(name: str) -> dict[str, torch.Tensor]:
    blob = torch.load(DATA / f"{name}_cls.pt", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}


# ------------------------------------------------------------------------------------------ official goldens


@pytest.mark.parametrize("name", list(GOLDENS))
def test_official_golden_matches_through_load_checkpoint(name: str) -> None:
    blob = torch.load(DATA / f"{name}_cls.pt", weights_only=True)
    model = classifier(GOLDENS[name]()).eval()
    report = load_checkpoint(model, DATA / f"{name}_cls.pt", source="cvnets")
    assert report.complete and not report.skipped
    assert len(report.loaded) == len(model.state_dict())
    with torch.no_grad():
        for size in ("256", "250x230"):
            out = model(blob["inputs"][f"x_{size}"].float())
            torch.testing.assert_close(out, blob["outputs"][f"logits_{size}"], atol=1e-4, rtol=1e-4)


def test_auto_detects_official_and_skips_classifier_for_bare_backbone() -> None:
    backbone = MobileViT(mode="xxs")
    report = load_checkpoint(backbone, DATA / "v1_xxs_cls.pt")
    assert report.source == "cvnets" and "conv_1.block.conv.weight" in report.detection
    assert {k for k, _ in report.skipped} == {"classifier.fc.weight", "classifier.fc.bias"}
    assert all("no head" in reason for _, reason in report.skipped)
    assert "classifier.fc.weight" in str(report)
    expected = official_state("v1_xxs")
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key


class _FeatureExtractor(nn.Module):
    """Stand-in for a wrapper that keeps the backbone at ``.backbone``."""

    def __init__(self, backbone: MobileViTBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def test_backbone_found_inside_a_wrapper() -> None:
    blob = torch.load(DATA / "v2_050_cls.pt", weights_only=True)
    backbone = MobileViTv2(0.5)
    model = nn.Sequential(_FeatureExtractor(backbone), ClassificationHead(256, 1000)).eval()
    report = load_checkpoint(model, blob)  # in-memory, nested under "state_dict"
    assert report.complete and any("state_dict" in n for n in report.notes)
    with torch.no_grad():
        out = model(blob["inputs"]["x_256"].float())
    torch.testing.assert_close(out, blob["outputs"]["logits_256"], atol=1e-4, rtol=1e-4)


def test_layers_without_official_keys_are_missing_on_load_and_refused_on_save(tmp_path: pathlib.Path) -> None:
    # A plain nn.Linear classifier: no cvnets, timm or Hugging Face file has weights for it. A strict load used to
    # report complete and leave it random, and saving in an official layout dropped it.
    torch.manual_seed(0)
    official = convert_state_dict(nn.Sequential(MobileViT(mode="xxs"), ClassificationHead(320, 1000)))
    model = nn.Sequential(MobileViT(mode="xxs"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(320, 1000))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"2 missing keys: 3\.weight, 3\.bias(.|\n)*neither the backbone nor a head"):
        load_checkpoint(model, official)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_checkpoint(model, official, strict=False)
    assert report.missing == ("3.weight", "3.bias") and not report.complete
    for layout in ("cvnets", "timm", "hf"):
        with pytest.raises(ValueError, match=r"3\.weight, 3\.bias; the .* layout has no keys for them"):
            save_checkpoint(model, tmp_path / f"{layout}.pt", layout)
    assert not list(tmp_path.iterdir())
    assert save_checkpoint(model, tmp_path / "own.pt", "visionkit") == len(model.state_dict())
    copy = nn.Sequential(MobileViT(mode="xxs"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(320, 1000))
    assert load_checkpoint(copy, tmp_path / "own.pt").complete
    assert torch.equal(copy[3].weight, model[3].weight)


def test_two_heads_of_one_kind_are_refused_in_official_layouts() -> None:
    model = nn.ModuleDict(
        {"backbone": MobileViT(mode="xxs"), "fine": ClassificationHead(320, 10), "coarse": ClassificationHead(320, 4)}
    )
    for layout in ("cvnets", "timm", "hf"):
        with pytest.raises(ValueError, match="'fine.fc.weight' and 'coarse.fc.weight' both take the official key"):
            convert_state_dict(model, layout)
    assert len(convert_state_dict(model, "visionkit")) == len(model.state_dict())


def test_nested_containers_and_ddp_prefix_are_unwrapped() -> None:
    state = official_state("v1_xxs")
    wrapped = {"epoch": 3, "model": {"module." + k: v for k, v in state.items()}}
    model = classifier(MobileViT(mode="xxs"))
    report = load_checkpoint(model, wrapped)
    assert report.complete
    assert any("'model'" in n for n in report.notes) and any("module." in n for n in report.notes)
    assert torch.equal(model[1].fc.weight, state["classifier.fc.weight"])


def test_detection_style_encoder_prefix_and_training_only_keys() -> None:
    source = randomize_(MobileViT(mode="xxs", expand_output=False), calibrate=False)
    state = {"encoder." + k: v for k, v in source.state_dict().items()}
    state["seg_head.aux_head.0.block.conv.weight"] = torch.zeros(8, 4, 3, 3)
    state["seg_head.aspp.aspp_layer.project.block.conv.weight"] = torch.zeros(8, 4, 1, 1)
    target = MobileViT(mode="xxs", expand_output=False)
    report = load_checkpoint(target, state, source="cvnets")
    assert_state_equal(target, source.state_dict())
    reasons = dict(report.skipped)
    assert "training-only" in reasons["seg_head.aux_head.0.block.conv.weight"]
    assert "no head" in reasons["seg_head.aspp.aspp_layer.project.block.conv.weight"]
    assert any("encoder." in n for n in report.notes)
    # A backbone built with conv_1x1_exp cannot take a file without it; the error says what to do.
    before = state_copy(expanding := MobileViT(mode="xxs"))
    with pytest.raises(ValueError, match="expand_output=False"):
        load_checkpoint(expanding, state)
    assert_state_equal(expanding, before)


def test_expansion_weights_skipped_for_backbone_without_expansion() -> None:
    report = load_checkpoint(MobileViT(mode="xxs", expand_output=False), DATA / "v1_xxs_cls.pt")
    assert {k for k, r in report.skipped if "conv_1x1_exp is not part of this backbone" in r} == {
        k for k in official_state("v1_xxs") if k.startswith("conv_1x1_exp.")
    }


def test_pruned_stages_are_skipped_and_reported() -> None:
    # A feature extractor that needs levels 0-3 only may drop layer_5 and the expansion.
    source = classifier(randomize_(MobileViT(mode="xxs"), calibrate=False))
    timm_state = convert_state_dict(source, "timm")
    pruned = MobileViT(mode="xxs")
    pruned.layer_5 = nn.Identity()
    pruned.conv_1x1_exp = nn.Identity()
    report = load_checkpoint(pruned, timm_state)
    assert report.complete
    skipped = dict(report.skipped)
    assert "layer_5 is not part of this backbone" in skipped["stages.4.1.transformer.0.attn.qkv.weight"]
    assert "conv_1x1_exp is not part of this backbone" in skipped["final_conv.conv.weight"]
    assert torch.equal(pruned.layer_4[1].fusion.block.conv.weight, source[0].layer_4[1].fusion.block.conv.weight)


# ------------------------------------------------------------------------------------------ Hugging Face


def _hf_v1(mode: str) -> nn.Module:
    from transformers import MobileViTConfig, MobileViTForImageClassification

    sizes = {  # neck_hidden_sizes, hidden_sizes, expand_ratio of the converted apple/mobilevit-* checkpoints
        "xxs": ([16, 16, 24, 48, 64, 80, 320], [64, 80, 96], 2.0),
        "xs": ([16, 32, 48, 64, 80, 96, 384], [96, 120, 144], 4.0),
        "s": ([16, 32, 64, 96, 128, 160, 640], [144, 192, 240], 4.0),
    }[mode]
    config = MobileViTConfig(neck_hidden_sizes=sizes[0], hidden_sizes=sizes[1], expand_ratio=sizes[2], num_labels=1000)
    return MobileViTForImageClassification(config)


def _hf_v2(width: float) -> nn.Module:
    from transformers import MobileViTV2Config, MobileViTV2ForImageClassification

    return MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=width, num_labels=1000))


@pytest.mark.parametrize("mode", ["xxs", "xs", "s"])
def test_hf_v1_classifier_equal(mode: str) -> None:
    hf = randomize_(_hf_v1(mode), seed=1)
    model = classifier(MobileViT(mode=mode)).eval()
    report = load_checkpoint(model, hf.state_dict())
    assert report.source == "hf" and report.complete and len(report.loaded) == len(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for shape in ((1, 3, 256, 256), (1, 3, 250, 230)):
            x = torch.rand(shape, generator=gen)
            torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [0.5, 2.0])
def test_hf_v2_classifier_equal_at_multiples_of_32(width: float) -> None:
    # transformers' MobileViTV2 skips the official resize of odd-sized maps (spec §3.6), so only sizes whose maps
    # divide evenly are comparable; at 250x230 the two differ by design.
    hf = randomize_(_hf_v2(width), seed=3)
    model = classifier(MobileViTv2(width)).eval()
    report = load_checkpoint(model, hf.state_dict(), source="hf")
    assert report.complete
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=1e-5)


def test_hf_base_model_into_bare_backbone_and_back() -> None:
    from transformers import MobileViTConfig, MobileViTModel

    hf = randomize_(MobileViTModel(MobileViTConfig(neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                                                   hidden_sizes=[64, 80, 96], expand_ratio=2.0)), seed=5)
    backbone = MobileViT(mode="xxs").eval()
    report = load_checkpoint(backbone, hf.state_dict())
    assert report.source == "hf" and report.complete
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours, theirs = backbone(x), hf(pixel_values=x).last_hidden_state
    # Features after conv_1x1_exp reach ~30-70 here; float32 rounding (BatchNorm folded into the convolutions at run
    # time on our side) is relative to that scale: measured 2.4e-6.
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5 * ours.abs().max()
    # The reverse: our HF-layout export loads into transformers with strict=True.
    fresh = MobileViTModel(hf.config)
    fresh.load_state_dict(convert_state_dict(backbone, "hf"), strict=True)
    for key, value in hf.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_hf_v1_qkv_is_split_by_rows() -> None:
    model = randomize_(classifier(MobileViT(mode="xxs")), calibrate=False)
    hf = convert_state_dict(model, "hf")
    fused = model[0].layer_4[1].global_rep[2].pre_norm_mha[1].qkv_proj.weight
    d = fused.shape[1]
    prefix = "mobilevit.encoder.layer.3.transformer.layer.2.attention.attention."
    for i, part in enumerate(("query", "key", "value")):
        assert torch.equal(hf[prefix + part + ".weight"], fused[i * d : (i + 1) * d])
    assert "classifier.weight" in hf


# ------------------------------------------------------------------------------------------ timm


# Keys written from the published timm layout (spec §8.1, §8.2), independent of the key tables' code.
TIMM_V1 = {
    "conv_1.block.conv.weight": "stem.conv.weight",
    "conv_1.block.norm.running_var": "stem.bn.running_var",
    "layer_1.0.block.exp_1x1.block.conv.weight": "stages.0.0.conv1_1x1.conv.weight",
    "layer_2.2.block.conv_3x3.block.norm.bias": "stages.1.2.conv2_kxk.bn.bias",
    "layer_3.0.block.red_1x1.block.norm.num_batches_tracked": "stages.2.0.conv3_1x1.bn.num_batches_tracked",
    "layer_3.1.local_rep.conv_3x3.block.conv.weight": "stages.2.1.conv_kxk.conv.weight",
    "layer_3.1.local_rep.conv_1x1.block.conv.weight": "stages.2.1.conv_1x1.weight",
    "layer_4.1.global_rep.3.pre_norm_mha.0.weight": "stages.3.1.transformer.3.norm1.weight",
    "layer_4.1.global_rep.3.pre_norm_mha.1.qkv_proj.weight": "stages.3.1.transformer.3.attn.qkv.weight",
    "layer_4.1.global_rep.3.pre_norm_mha.1.out_proj.bias": "stages.3.1.transformer.3.attn.proj.bias",
    "layer_5.1.global_rep.2.pre_norm_ffn.0.bias": "stages.4.1.transformer.2.norm2.bias",
    "layer_5.1.global_rep.2.pre_norm_ffn.1.weight": "stages.4.1.transformer.2.mlp.fc1.weight",
    "layer_5.1.global_rep.2.pre_norm_ffn.4.weight": "stages.4.1.transformer.2.mlp.fc2.weight",
    "layer_4.1.global_rep.4.weight": "stages.3.1.norm.weight",
    "layer_5.1.conv_proj.block.norm.weight": "stages.4.1.conv_proj.bn.weight",
    "layer_5.1.fusion.block.conv.weight": "stages.4.1.conv_fusion.conv.weight",
    "conv_1x1_exp.block.norm.running_mean": "final_conv.bn.running_mean",
    "classifier.fc.weight": "head.fc.weight",
}
TIMM_V2 = {
    "layer_3.1.local_rep.0.block.conv.weight": "stages.2.1.conv_kxk.conv.weight",
    "layer_3.1.local_rep.1.block.conv.weight": "stages.2.1.conv_1x1.weight",
    "layer_4.1.global_rep.1.pre_norm_attn.0.bias": "stages.3.1.transformer.1.norm1.bias",
    "layer_4.1.global_rep.1.pre_norm_attn.1.qkv_proj.block.conv.weight":
        "stages.3.1.transformer.1.attn.qkv_proj.weight",
    "layer_4.1.global_rep.1.pre_norm_attn.1.out_proj.block.conv.bias": "stages.3.1.transformer.1.attn.out_proj.bias",
    "layer_5.1.global_rep.0.pre_norm_ffn.0.weight": "stages.4.1.transformer.0.norm2.weight",
    "layer_5.1.global_rep.0.pre_norm_ffn.1.block.conv.weight": "stages.4.1.transformer.0.mlp.fc1.weight",
    "layer_5.1.global_rep.0.pre_norm_ffn.3.block.conv.bias": "stages.4.1.transformer.0.mlp.fc2.bias",
    "layer_5.1.global_rep.3.bias": "stages.4.1.norm.bias",
    "layer_5.1.conv_proj.block.conv.weight": "stages.4.1.conv_proj.conv.weight",
    "classifier.1.bias": "head.fc.bias",
}


@pytest.mark.parametrize(
    ("build", "expected", "count"),
    [(lambda: MobileViT(mode="xxs"), TIMM_V1, 311), (lambda: MobileViTv2(0.5), TIMM_V2, 269)],
    ids=["v1", "v2"],
)
def test_timm_layout(build: Callable[[], MobileViTBackbone], expected: dict[str, str], count: int) -> None:
    model = randomize_(classifier(build()), calibrate=False)
    official = convert_state_dict(model, "cvnets")
    timm = convert_state_dict(model, "timm")
    assert len(timm) == len(official) == count  # a pure rename: same tensors, same count
    for official_key, timm_key in expected.items():
        assert torch.equal(timm[timm_key], official[official_key]), (official_key, timm_key)
    # A state dict written with the spec's names loads back exactly.
    fresh = classifier(build())
    report = load_checkpoint(fresh, timm)
    assert report.source == "timm" and report.complete
    assert_state_equal(fresh, model.state_dict())


def test_key_tables_are_one_to_one_for_every_variant() -> None:
    from visionkit.contrib.variants import VARIANTS

    for variant in VARIANTS:
        with torch.device("meta"):
            backbone = variant.build()
        family = "v1" if backbone.config.block.attention == "multi_head" else "v2"
        for layout in ("timm", "hf"):
            foreign = [f.key for k in backbone.state_dict() for f in official_to_layout(k, layout, family)]
            assert len(foreign) == len(set(foreign)), (variant.name, layout)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("layout", ["cvnets", "timm", "hf", "visionkit"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_then_load_round_trips_exactly(tmp_path: pathlib.Path, layout: str, suffix: str) -> None:
    builders = [lambda: classifier(MobileViT(mode="xxs"), 10), lambda: classifier(MobileViTv2(0.5), 10)]
    if layout in ("cvnets", "visionkit"):  # timm and transformers have no v3 (refused, see above)
        builders += [
            lambda: classifier(MobileViTv3(mode="xxs_l2"), 10),
            lambda: classifier(MobileViTv3(width_multiplier=0.5), 10),
        ]
    for build in builders:
        model = randomize_(build(), seed=7, calibrate=False)
        path = tmp_path / f"weights{suffix}"
        save_checkpoint(model, path, layout=layout)
        fresh = build()
        report = load_checkpoint(fresh, path)
        assert report.source == layout and report.complete
        assert_state_equal(fresh, model.state_dict())


def test_official_layout_of_detection_models_uses_encoder_prefix() -> None:
    class FakeSegHead(nn.Module):
        cvnets_prefixes = ("seg_head.",)

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(80, 4, 1)

        def cvnets_key(self, key: str) -> str | None:
            return key.removeprefix("seg_head.") if key.startswith("seg_head.proj.") else None

    model = nn.Sequential(MobileViT(mode="xxs", expand_output=False), FakeSegHead())
    official = convert_state_dict(model, "cvnets")
    assert "encoder.conv_1.block.conv.weight" in official and "seg_head.proj.weight" in official
    fresh = nn.Sequential(MobileViT(mode="xxs", expand_output=False), FakeSegHead())
    assert load_checkpoint(fresh, official).complete
    assert_state_equal(fresh, model.state_dict())
    with pytest.raises(ValueError, match="timm layout has no key"):
        convert_state_dict(model, "timm")


# ------------------------------------------------------------------------------------------ safety


class _Payload:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (pathlib.Path.touch, (self.path,))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": official_state("v1_xxs"), "extra": _Payload(marker)}, path)
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(model, path)
    assert not marker.exists()
    assert_state_equal(model, before)


def test_safetensors_recognised_by_content(tmp_path: pathlib.Path) -> None:
    source = randomize_(MobileViT(mode="xxs"), calibrate=False)
    path = tmp_path / "model.bin"
    save_checkpoint(source, tmp_path / "model.safetensors", layout="timm")
    (tmp_path / "model.safetensors").rename(path)
    model = MobileViT(mode="xxs")
    assert load_checkpoint(model, path).source == "timm"
    assert_state_equal(model, source.state_dict())


def test_truncated_and_corrupt_files(tmp_path: pathlib.Path) -> None:
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    good = tmp_path / "good.pt"
    save_checkpoint(model, good)
    for suffix, source in ((".pt", good), (".safetensors", None)):
        if source is None:
            source = tmp_path / "good.safetensors"
            save_checkpoint(model, source)
        data = source.read_bytes()
        truncated = tmp_path / f"truncated{suffix}"
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="corrupt"):
            load_checkpoint(model, truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(model, garbage)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "absent.pt")
    assert_state_equal(model, before)


def test_wrong_variant_names_keys_shapes_and_the_variant_it_looks_like() -> None:
    xs = convert_state_dict(randomize_(MobileViT(mode="xs"), calibrate=False), "cvnets")
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(ValueError) as info:
        load_checkpoint(model, xs)
    message = str(info.value)
    assert "looks like mobilevit_xs " in message
    assert "layer_1.0.block.exp_1x1.block.conv.weight: [32, 16, 1, 1] vs [64, 16, 1, 1]" in message
    assert_state_equal(model, before)
    # Same through another layout: an XS checkpoint in timm layout.
    timm_xs = convert_state_dict(randomize_(MobileViT(mode="xs"), calibrate=False), "timm")
    with pytest.raises(ValueError, match="looks like mobilevit_xs ") as info:
        load_checkpoint(MobileViT(mode="xxs"), timm_xs)
    assert "(checkpoint stages.0.0.conv1_1x1.conv.weight): [32, 16, 1, 1] vs [64, 16, 1, 1]" in str(info.value)
    # Neither timm nor transformers has MobileViTv3: such files would load nowhere, so they are not written.
    for layout in ("timm", "hf"):
        with pytest.raises(ValueError, match="has no MobileViTv3"):
            convert_state_dict(MobileViTv3(mode="xxs_l2"), layout)
    # Mismatches name the checkpoint's own key beside the model's.
    hf_xs = convert_state_dict(classifier(MobileViT(mode="xs")), "hf")
    with pytest.raises(ValueError) as info:
        load_checkpoint(classifier(MobileViT(mode="xxs")), hf_xs)
    assert ("0.layer_1.0.block.exp_1x1.block.conv.weight (checkpoint "
            "mobilevit.encoder.layer.0.layer.0.expand_1x1.convolution.weight): [32, 16, 1, 1] vs [64, 16, 1, 1]"
            in str(info.value))
    assert "1.fc.weight (checkpoint classifier.weight): [1000, 320] vs [1000, 384]" in str(info.value)


def test_missing_unexpected_and_mismatched_keys(tmp_path: pathlib.Path) -> None:
    source = randomize_(MobileViT(mode="xxs"), calibrate=False)
    state = convert_state_dict(source, "cvnets")
    dropped = "layer_3.1.fusion.block.norm.weight"
    del state[dropped]
    state["layer_9.extra.weight"] = torch.zeros(3)
    state["layer_2.0.block.red_1x1.block.norm.bias"] = torch.zeros(25)
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(ValueError) as info:
        load_checkpoint(model, state)
    message = str(info.value)
    assert dropped in message and "layer_9.extra.weight" in message
    assert "layer_2.0.block.red_1x1.block.norm.bias: [24] vs [25]" in message
    assert_state_equal(model, before)
    # strict=False is the caller's explicit choice; the report lists what was left out.
    report = load_checkpoint(model, state, strict=False)
    assert report.missing == (dropped,) and report.unexpected == ("layer_9.extra.weight",)
    assert report.mismatched == (("layer_2.0.block.red_1x1.block.norm.bias", (24,), (25,)),)
    assert not report.complete and "left out" in str(report)
    assert torch.equal(model.state_dict()[dropped], before[dropped])
    assert torch.equal(model.conv_1.block.conv.weight, source.conv_1.block.conv.weight)


def test_failure_while_copying_restores_every_tensor() -> None:
    source = randomize_(MobileViT(mode="xxs"), calibrate=False)
    state = convert_state_dict(source, "cvnets")
    last = list(state)[-2]
    state[last] = torch.empty(state[last].shape, device="meta")  # right shape, cannot be copied from
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(RuntimeError, match="restored"):
        load_checkpoint(model, state)
    assert_state_equal(model, before)


def test_bad_arguments() -> None:
    model = MobileViT(mode="xxs")
    with pytest.raises(ValueError, match="source"):
        load_checkpoint(model, {}, source="onnx")
    with pytest.raises(TypeError, match="MobileViTBackbone"):
        load_checkpoint(nn.Linear(2, 2), {"w": torch.zeros(1)})
    with pytest.raises(TypeError, match="checkpoint"):
        load_checkpoint(model, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load_checkpoint(model, {}, strict="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sentinel"):
        load_checkpoint(model, {"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no state dict"):
        read_checkpoint({"config": {"lr": 0.1}})
    with pytest.raises(ValueError, match="layout"):
        convert_state_dict(model, "onnx")


def test_detect_source_sentinels() -> None:
    model = classifier(MobileViT(mode="xxs"))
    for layout in ("cvnets", "timm", "hf"):
        source, reason = detect_source(convert_state_dict(model, layout), model)
        assert source == layout and "sentinel" in reason
    source, reason = detect_source(model.state_dict(), model)
    assert source == "visionkit" and "0.conv_1" in reason


# ------------------------------------------------------------------------------------------ URLs


def test_file_url_downloads_once_into_hub_cache_with_hash_check(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    src = mirror / "mobilevit_xxs.pt"
    src.write_bytes((DATA / "v1_xxs_cls.pt").read_bytes())
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    url = src.as_uri()
    model = MobileViT(mode="xxs")
    report = load_checkpoint(model, url, sha256=digest, progress=False)
    cached = list((tmp_path / "hub" / "checkpoints").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("mobilevit_xxs.pt")
    assert any(url in n for n in report.notes)
    src.unlink()  # the second load is served from the cache
    load_checkpoint(MobileViT(mode="xxs"), url, sha256=digest, progress=False)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_checkpoint(MobileViT(mode="xxs"), url, sha256="0" * 64, progress=False)
    assert not cached[0].exists()  # a file failing its hash is not kept


# ------------------------------------------------------------------------------------------ channel order


@pytest.mark.parametrize("name", ["v1_xxs", "v2_050"])
def test_flipped_stem_on_rgb_equals_original_on_bgr(name: str) -> None:
    blob = torch.load(DATA / f"{name}_cls.pt", weights_only=True)
    model = classifier(GOLDENS[name]()).eval()
    load_checkpoint(model, blob)
    # float64, so that the only difference left is the summation order of the stem convolution
    model.double()
    bgr = blob["inputs"]["x_256"][..., :48, :48].double()
    stem = model[0].conv_1.block.conv.weight.clone()
    with torch.no_grad():
        reference = model(bgr)
        flip_stem_channels(model)
        flipped = model(bgr.flip(1))
    torch.testing.assert_close(flipped, reference, atol=1e-6, rtol=0)
    assert torch.equal(model[0].conv_1.block.conv.weight, stem.flip(1)) and not torch.equal(stem, stem.flip(1))


def test_flip_rejects_non_rgb_stem() -> None:
    with pytest.raises(ValueError, match="3-channel"):
        flip_stem_channels(MobileViT(mode="xxs", in_channels=1))


# ------------------------------------------------------------------------------------------ segmentation layouts


class _KeyedHead(nn.Module):
    """A head whose state dict is exactly a list of official ``seg_head.*`` keys (tensors of the given shapes).

    It follows the head <-> checkpoint contract generically, as DeepLabV3Head will, without knowing its layers.
    """

    cvnets_prefixes = ("seg_head.",)

    def __init__(self, shapes: dict[str, list[int]]) -> None:
        super().__init__()
        for key, shape in shapes.items():
            *path, leaf = key.removeprefix("seg_head.").split(".")
            module: nn.Module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            if leaf == "num_batches_tracked":
                module.register_buffer(leaf, torch.zeros(shape, dtype=torch.long))
            elif leaf.startswith("running_"):
                module.register_buffer(leaf, torch.rand(shape) + 0.5)
            else:
                module.register_parameter(leaf, nn.Parameter(torch.randn(shape)))

    def cvnets_key(self, key: str) -> str | None:
        own = key.removeprefix("seg_head.")
        return own if own in self.state_dict() else None


def _seg_head_shapes(name: str) -> dict[str, list[int]]:
    import json

    return json.loads((DATA / "official_seg_head_keys.json").read_text())["keys"][name]


@pytest.mark.parametrize("name", ["v1_xxs", "v2_050"])
def test_hf_segmentation_layout_both_ways(name: str) -> None:
    from transformers import (
        MobileViTConfig,
        MobileViTForSemanticSegmentation,
        MobileViTV2Config,
        MobileViTV2ForSemanticSegmentation,
    )

    if name == "v1_xxs":
        hf = MobileViTForSemanticSegmentation(MobileViTConfig(
            neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], hidden_sizes=[64, 80, 96], expand_ratio=2.0,
            num_labels=21))
        build = lambda: MobileViT(mode="xxs", expand_output=False, output_stride=16)  # noqa: E731
    else:
        hf = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5, num_labels=21))
        build = lambda: MobileViTv2(0.5, output_stride=16)  # noqa: E731
    randomize_(hf, seed=8, calibrate=False)
    model = nn.Sequential(build(), _KeyedHead(_seg_head_shapes(name)))
    report = load_checkpoint(model, hf.state_dict())
    assert report.source == "hf" and report.complete and len(report.loaded) == len(model.state_dict())
    # Back to HF: transformers accepts our export with strict=True and gets the same tensors.
    fresh = type(hf)(hf.config)
    fresh.load_state_dict(convert_state_dict(model, "hf"), strict=True)
    for key, value in hf.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # The official layout of the same model carries encoder. and round-trips.
    official = convert_state_dict(model, "cvnets")
    assert set(official) >= {"encoder.conv_1.block.conv.weight", *_seg_head_shapes(name)}
    again = nn.Sequential(build(), _KeyedHead(_seg_head_shapes(name)))
    assert load_checkpoint(again, official).complete
    assert_state_equal(again, model.state_dict())
    # A bare backbone takes the HF segmentation file and says the head was skipped.
    report = load_checkpoint(build(), hf.state_dict())
    assert report.skipped and all(k.startswith("segmentation_head.") for k, _ in report.skipped)


# ------------------------------------------------------------------------------------------ official key listings


def _listing_builder(file: str, name: str) -> Callable[[], MobileViTBackbone]:
    if file == "v1.json" or name == "v1s_v02":
        mode = "s" if name == "v1s_v02" else name
        return lambda: MobileViT(mode=mode)
    if file == "v2.json":
        return lambda: MobileViTv2(float(name.removeprefix("v2_")))
    if file == "v3-v1-based.json":
        return lambda: MobileViTv3(mode=name.removeprefix("v3_"))
    return lambda: MobileViTv3(width_multiplier=float(name.removeprefix("v3v2_")))


def _listings() -> list[tuple[str, str]]:
    import json

    return [
        (path.name, name)
        for path in sorted((DATA / "official-keys").glob("*.json"))
        for name in json.loads(path.read_text())
    ]


@pytest.mark.parametrize(("file", "name"), _listings())
def test_every_official_key_listing_loads(file: str, name: str) -> None:
    """Official state dicts of every variant (v3 included) load strictly: keys and shapes as the official code."""
    import json

    shapes = json.loads((DATA / "official-keys" / file).read_text())[name]
    build = _listing_builder(file, name)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = classifier(build())
        official = {k: torch.empty(s, dtype=torch.long if not s and "num_batches" in k else torch.float32)
                    for k, s in shapes.items()}
        report = load_checkpoint(model, official, source="cvnets")
    assert report.complete and len(report.loaded) == len(shapes)


# ------------------------------------------------------------------------------------------ review findings


def test_a_head_whose_name_starts_with_the_backbone_name_is_still_a_head() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = MobileViT(mode="xxs")
            self.backbone_head = ClassificationHead(320, 1000)

    official = official_state("v1_xxs")
    model = Net()
    report = load_checkpoint(model, official)
    assert report.complete and not report.skipped
    assert torch.equal(model.backbone_head.fc.weight, official["classifier.fc.weight"].float())
    assert "classifier.fc.weight" in convert_state_dict(model, "cvnets")


def _detector_sequential(**head_options) -> nn.Sequential:
    from visionkit.contrib import FeatureExtractor, SSDLiteHead

    features = FeatureExtractor(MobileViT(mode="xxs", expand_output=False), indices=(3, 4))
    return nn.Sequential(features, SSDLiteHead(features.channels, num_classes=81, **head_options))


def test_detection_models_save_in_the_official_layout_and_load_back() -> None:
    model = randomize_(_detector_sequential(), calibrate=False)
    official = convert_state_dict(model, "cvnets")
    assert "encoder.conv_1.block.conv.weight" in official
    assert any(k.startswith("extra_layers.") for k in official) and any(k.startswith("ssd_heads.") for k in official)
    fresh = _detector_sequential()
    assert load_checkpoint(fresh, official).complete
    assert_state_equal(fresh, model.state_dict())


def test_file_keys_a_head_claims_but_lacks_are_unexpected_not_a_crash() -> None:
    official = convert_state_dict(randomize_(_detector_sequential(), calibrate=False), "cvnets")
    # built without the first projection layer (the stride-16 map already has the projected width)
    model = _detector_sequential(proj_channels=(64, 80, 256, 128, 128, 64))
    before = state_copy(model)
    with pytest.raises(ValueError, match="unexpected keys: ssd_heads.0.proj_layer"):
        load_checkpoint(model, official)
    assert_state_equal(model, before)
    stray = {**official_state("v1_xxs"), "classifier.fc.extra": torch.zeros(3)}
    with pytest.raises(ValueError, match="1 unexpected keys: classifier.fc.extra"):
        load_checkpoint(classifier(MobileViT(mode="xxs")), stray)
    report = load_checkpoint(classifier(MobileViT(mode="xxs")), stray, strict=False)
    assert report.unexpected == ("classifier.fc.extra",)


def test_visionkit_layout_moves_heads_between_wrappers_and_skips_them_for_a_bare_backbone(tmp_path) -> None:
    from visionkit.contrib import SSDLite

    sequential = randomize_(_detector_sequential(), calibrate=False)
    state = convert_state_dict(sequential, "visionkit")
    fresh = _detector_sequential()
    detector = SSDLite(fresh[0], fresh[1])
    report = load_checkpoint(detector, state)
    assert report.complete
    for key, value in sequential[1].state_dict().items():
        assert torch.equal(detector.head.state_dict()[key], value), key
    bare = MobileViT(mode="xxs")
    saved = classifier(randomize_(MobileViT(mode="xxs"), calibrate=False))
    report = load_checkpoint(bare, convert_state_dict(saved, "visionkit"))
    assert sorted(k for k, _ in report.skipped) == ["1.fc.bias", "1.fc.weight"]
    assert_state_equal(bare, saved[0].state_dict())
    with pytest.raises(ValueError, match="unexpected keys: 2.scale"):  # a model with heads: leftovers are errors
        load_checkpoint(classifier(MobileViT(mode="xxs")), {**convert_state_dict(saved, "visionkit"),
                                                            "2.scale": torch.zeros(1)})


def test_channels_last_models_save_as_safetensors_in_every_layout(tmp_path: pathlib.Path) -> None:
    model = classifier(MobileViT(mode="xxs")).to(memory_format=torch.channels_last)
    expected = {k: v.contiguous() for k, v in model.state_dict().items()}
    for layout in ("visionkit", "cvnets"):
        path = tmp_path / f"{layout}.safetensors"
        save_checkpoint(model, path, layout)
        loaded = classifier(MobileViT(mode="xxs"))
        assert load_checkpoint(loaded, path).complete
        state = loaded.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected), layout  # the values, not only the keys


def test_saving_into_a_missing_folder_is_a_file_not_found_error(tmp_path: pathlib.Path) -> None:
    for suffix in (".pt", ".safetensors"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            save_checkpoint(MobileViT(mode="xxs"), tmp_path / "missing" / f"w{suffix}")


def test_sha256_is_checked_for_local_files_and_hf_folders_are_read(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "w.pt"
    save_checkpoint(MobileViT(mode="xxs"), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_checkpoint(path, sha256=digest)
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_checkpoint(path, sha256="0" * 64)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_checkpoint(MobileViT(mode="xxs"), folder / "model.safetensors", "hf")
    assert load_checkpoint(MobileViT(mode="xxs"), folder).source == "hf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        read_checkpoint(tmp_path / "empty")
    with pytest.raises(TypeError, match="sha256"):
        read_checkpoint(path, sha256=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits, got 'abc'"):
        load_checkpoint(MobileViT(mode="xxs"), path, sha256="abc")
    with pytest.raises(ValueError, match="an in-memory state dict has none"):
        load_checkpoint(MobileViT(mode="xxs"), MobileViT(mode="xxs").state_dict(), sha256=digest)
    assert read_checkpoint(path, sha256=digest.upper())


def test_read_checkpoint_notes_only_what_a_successful_read_did(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {"module.fc.weight": torch.zeros(2)}}, path)
    notes = ["earlier"]
    assert list(read_checkpoint(path, notes=notes)) == ["fc.weight"]
    assert notes[0] == "earlier" and any("unwrapped" in n for n in notes) and any("module." in n for n in notes)
    torch.save({"model": {"module.config": {"lr": 0.1}}}, path)  # unwrapped and read, then refused
    before = list(notes)
    with pytest.raises(ValueError, match="no state dict"):
        read_checkpoint(path, notes=notes)
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_checkpoint(path, sha256="0" * 64, notes=notes)
    assert notes == before


@pytest.mark.parametrize("channels", [1, 4, 6])
def test_three_channel_weights_load_into_other_channel_counts(channels: int) -> None:
    official = official_state("v1_xxs")
    rgb = MobileViT(mode="xxs").double().eval()
    load_checkpoint(rgb, official)
    model = MobileViT(mode="xxs", in_channels=channels).double().eval()
    report = load_checkpoint(model, official)
    assert report.complete and f"in_channels={channels}" in report.notes[-1]
    x = torch.rand(1, 3, 64, 64, dtype=torch.double)
    with torch.no_grad():
        if channels == 1:  # a grey image: the same as the 3-channel model on it repeated
            torch.testing.assert_close(model(x[:, :1]), rgb(x[:, :1].repeat(1, 3, 1, 1)), rtol=1e-10, atol=1e-10)
        elif channels == 6:  # repeated exactly twice and halved: the image given twice
            torch.testing.assert_close(model(torch.cat((x, x), 1)), rgb(x), rtol=1e-10, atol=1e-10)
    stem = official["conv_1.block.conv.weight"].double()
    expected = stem.sum(1, keepdim=True) if channels == 1 else stem[:, [c % 3 for c in range(channels)]] * 3 / channels
    torch.testing.assert_close(model.conv_1.block.conv.weight, expected, rtol=1e-12, atol=1e-12)


def test_failure_messages_point_at_the_stem_channels_and_skip_unrelated_hints() -> None:
    one_channel = convert_state_dict(MobileViT(mode="xxs", in_channels=1))
    with pytest.raises(ValueError, match=r"stem takes 3 input channels, the checkpoint's 1: build with in_channels=1"):
        load_checkpoint(MobileViT(mode="xxs"), one_channel)
    v2 = official_state("v2_050")
    with pytest.raises(ValueError) as info:
        load_checkpoint(MobileViT(mode="xxs"), v2)
    assert "conv_1x1_exp" not in str(info.value).split("missing keys")[-1].split("\n", 1)[-1]


def test_key_tables_refuse_unknown_layouts_and_families() -> None:
    from visionkit.contrib.key_maps import family_of, head_key_to_official, official_to_layout

    with pytest.raises(ValueError, match="layout must be one of 'cvnets', 'timm', 'hf'; got 'onnx'"):
        official_to_layout("layer_3.1.global_rep.0.pre_norm_mha.0.weight", "onnx", "v1")
    with pytest.raises(ValueError, match="family must be one of 'v1', 'v2'; got 'v3'"):
        official_to_layout("conv_1.block.conv.weight", "timm", "v3")
    with pytest.raises(ValueError, match="layout must be one of"):
        head_key_to_official("classifier.weight", "onnx")
    with pytest.raises(ValueError, match="attention must be one of 'multi_head', 'separable'; got 'multihead'"):
        family_of("multihead")


class _InterruptingCopy(torch.Tensor):
    """A checkpoint tensor whose copy into the model is interrupted, as by Ctrl-C."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_:
            raise KeyboardInterrupt
        return super().__torch_function__(func, types, args, kwargs or {})


def test_an_interrupted_copy_restores_every_tensor_and_still_interrupts() -> None:
    source = randomize_(MobileViT(mode="xxs"), calibrate=False)
    state = convert_state_dict(source, "cvnets")
    last = list(state)[-2]
    state[last] = state[last].as_subclass(_InterruptingCopy)
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(KeyboardInterrupt):
        load_checkpoint(model, state)
    assert_state_equal(model, before)


def test_a_corrupt_download_is_not_kept_in_the_cache(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    src = tmp_path / "mobilevit_xxs.pt"
    good = (DATA / "v1_xxs_cls.pt").read_bytes()
    src.write_bytes(good[: len(good) // 3])  # a truncated transfer
    with pytest.raises(ValueError, match="truncated or corrupt.*downloaded from .* the cached file was removed"):
        load_checkpoint(MobileViT(mode="xxs"), src.as_uri(), progress=False)
    assert not any((tmp_path / "hub" / "checkpoints").iterdir())
    src.write_bytes(good)  # the server is fixed: the next call downloads again instead of reusing the broken copy
    assert load_checkpoint(MobileViT(mode="xxs"), src.as_uri(), progress=False).complete
    with pytest.raises(ValueError, match="the cached copy of"):
        load_checkpoint(MobileViT(mode="xxs"), src.as_uri(), sha256="0" * 64, progress=False)


def test_a_failed_save_leaves_the_earlier_file_whole_and_nothing_else(tmp_path: pathlib.Path, monkeypatch) -> None:
    model = MobileViT(mode="xxs")
    for name in ("w.pt", "w.safetensors"):
        path = tmp_path / name
        save_checkpoint(model, path)
        saved = path.read_bytes()

        def fail_midway(state, target, *args, **kwargs):
            pathlib.Path(target).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(torch, "save", fail_midway)
            patch.setattr("safetensors.torch.save_file", fail_midway)
            with pytest.raises(OSError, match="No space left"):
                save_checkpoint(MobileViT(mode="xxs"), path)
        assert path.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt", "w.safetensors"]
    assert oct(os.stat(tmp_path / "w.pt").st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0o600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_fused_model_saves_in_its_own_layout_only_and_loads_back(tmp_path: pathlib.Path) -> None:
    fused = randomize_(MobileViT(mode="xxs")).eval().fuse()
    for layout in ("cvnets", "timm", "hf"):
        with pytest.raises(ValueError, match=f"this model was fused .* the official {layout} layout cannot hold"):
            save_checkpoint(fused, tmp_path / "fused.pt", layout)
    assert not (tmp_path / "fused.pt").exists()
    save_checkpoint(fused, tmp_path / "fused.pt", "visionkit")
    again = MobileViT(mode="xxs").eval().fuse()
    assert load_checkpoint(again, tmp_path / "fused.pt").complete
    assert_state_equal(again, state_copy(fused))
    with pytest.raises(ValueError, match=r"comes from a fused model .* call fuse\(\) on the model"):
        load_checkpoint(MobileViT(mode="xxs"), tmp_path / "fused.pt")
    save_checkpoint(MobileViT(mode="xxs"), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"the model was fused .* load the checkpoint before calling fuse\(\)"):
        load_checkpoint(MobileViT(mode="xxs").eval().fuse(), tmp_path / "plain.pt")


def test_failure_messages_name_the_convert_options_that_fix_a_head_mismatch(tmp_path: pathlib.Path) -> None:
    save_checkpoint(classifier(MobileViT(mode="xxs"), 10), tmp_path / "ten.pt")
    with pytest.raises(ValueError, match=r"classifier has 10 classes.*--num-classes 10"):
        load_checkpoint(classifier(MobileViT(mode="xxs")), tmp_path / "ten.pt")
    save_checkpoint(MobileViT(mode="xxs"), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"no weights for the model's head.*--num-classes 0"):
        load_checkpoint(classifier(MobileViT(mode="xxs")), tmp_path / "bare.pt")


def test_a_url_that_cannot_be_read_is_named_in_the_error(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = (tmp_path / "absent.pt").as_uri()
    with pytest.raises(OSError, match=f"could not download {url}"):
        load_checkpoint(MobileViT(mode="xxs"), url, progress=False)


def test_saving_follows_symlinks_keeps_permissions_and_writes_devices_directly(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run3.pt"
    save_checkpoint(MobileViT(mode="xxs"), run)
    os.chmod(run, 0o600)  # a private file stays private
    latest = tmp_path / "latest.pt"
    latest.symlink_to(run.name)
    model = randomize_(MobileViT(mode="xxs"), calibrate=False)
    save_checkpoint(model, latest)
    assert latest.is_symlink() and os.stat(run).st_mode & 0o777 == 0o600
    reloaded = MobileViT(mode="xxs")
    load_checkpoint(reloaded, run)
    assert_state_equal(reloaded, state_copy(model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "run3.pt"]
    save_checkpoint(MobileViT(mode="xxs"), os.devnull)  # written through, not replaced by a regular file
    assert not os.path.isfile(os.devnull)


def test_a_whole_download_refused_for_safety_stays_cached(tmp_path: pathlib.Path, monkeypatch) -> None:
    import argparse

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    src = tmp_path / "with_args.pt"
    torch.save({"state_dict": MobileViT(mode="xxs").state_dict(), "args": argparse.Namespace(lr=0.1)}, src)
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint(MobileViT(mode="xxs"), src.as_uri(), progress=False)
    assert len(list((tmp_path / "hub" / "checkpoints").iterdir())) == 1  # complete: no reason to fetch it again


def test_a_model_with_a_buffer_of_its_own_is_not_taken_for_a_fused_one() -> None:
    model = MobileViT(mode="xxs")
    model.conv_1.register_buffer("calibration", torch.zeros(3))
    state = convert_state_dict(model, "cvnets")
    assert "conv_1.calibration" in state and len(state) == len(model.state_dict())


@pytest.mark.parametrize("text", ["access denied", "error code: 1020", "hello"])
def test_a_short_text_file_is_not_a_checkpoint_and_a_downloaded_one_is_not_kept(
    text: str, tmp_path: pathlib.Path, monkeypatch
) -> None:
    # The weights-only unpickler raises IndexError or KeyError on these; they are no checkpoint, like an HTML page.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    page = tmp_path / "mobilevit_xxs.pt"
    page.write_text(text)
    model = MobileViT(mode="xxs")
    before = state_copy(model)
    with pytest.raises(ValueError, match="is not a PyTorch or safetensors checkpoint"):
        load_checkpoint(model, page)
    with pytest.raises(ValueError, match="not a PyTorch or safetensors checkpoint.*the cached file was removed"):
        load_checkpoint(model, page.as_uri(), progress=False)
    assert not any((tmp_path / "hub" / "checkpoints").iterdir())
    assert_state_equal(model, before)


class _EncoderDecoder(nn.Module):
    """A common wrapper: the backbone under ``encoder``, whose stem key is also a sentinel of cvnets files."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = MobileViT(mode="xxs", expand_output=False)
        self.decoder = nn.Conv2d(80, 2, 1)


def test_a_model_with_its_backbone_under_encoder_loads_its_own_saved_file(tmp_path: pathlib.Path) -> None:
    source = randomize_(_EncoderDecoder(), calibrate=False)
    for name in ("own.safetensors", "own.pt"):
        save_checkpoint(source, tmp_path / name, layout="visionkit")
        model = _EncoderDecoder()
        report = load_checkpoint(model, tmp_path / name)
        assert report.source == "visionkit" and report.complete
        assert_state_equal(model, state_copy(source))
    # An official detection/segmentation file (its backbone under "encoder.", heads the model lacks) is still cvnets.
    official = {"encoder." + k: v for k, v in convert_state_dict(source.encoder, "cvnets").items()}
    official["seg_head.classifier.block.conv.weight"] = torch.zeros(21, 256, 1, 1)
    assert detect_source(official, _EncoderDecoder())[0] == "cvnets"


@pytest.mark.parametrize("layout", ["cvnets", "timm", "hf"])
def test_missing_keys_are_reported_as_the_model_s_own_keys(layout: str) -> None:
    model = classifier(MobileViT(mode="xxs"), 10)
    state = convert_state_dict(model, layout)
    own = model.state_dict()
    dropped = ["0.conv_1.block.norm.weight", "0.layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"]
    for key in dropped:
        for piece in official_to_layout(key[2:], layout, "v1"):  # every file key holding part of the tensor
            del state[piece.key]
    report = load_checkpoint(model, state, strict=False)
    assert report.missing == tuple(dropped)
    assert all(key in own for key in report.missing)


def test_checkpoint_helpers_check_their_arguments() -> None:
    from visionkit.contrib import get_weights

    with pytest.raises(TypeError, match="variant"):
        get_weights(None)  # type: ignore[arg-type]
    for state in (None, torch.zeros(3), [1, 2], ["conv_1.block.conv.weight"]):
        with pytest.raises(TypeError, match="state"):
            detect_source(state)  # type: ignore[arg-type]
    state = MobileViT(mode="xxs").state_dict()
    with pytest.raises(TypeError, match="notes"):
        read_checkpoint(state, notes=())  # type: ignore[arg-type]
    for progress in (None, "no"):
        with pytest.raises(TypeError, match="progress"):
            load_checkpoint(MobileViT(mode="xxs"), state, progress=progress)  # type: ignore[arg-type]


def test_saving_through_a_link_into_a_missing_folder_names_that_folder(tmp_path: pathlib.Path) -> None:
    link = tmp_path / "w.pt"
    link.symlink_to(tmp_path / "missing" / "w.pt")
    with pytest.raises(FileNotFoundError, match="missing'$"):
        save_checkpoint(MobileViT(mode="xxs"), link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
