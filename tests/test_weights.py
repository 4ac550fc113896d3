"""The weights registry: metadata checked against the real models, lookups, and loading from a local mirror."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import pytest
import torch
from torch import nn

from visionkit.contrib import (
    ClassificationHead,
    MobileViT,
    MobileViTv3,
    WeightsEntry,
    get_weights,
    list_weights,
    load_weights,
)
from visionkit.contrib import weights as weights_module
from visionkit.contrib.variants import VARIANTS, get_variant

DATA = pathlib.Path(__file__).parent / "data"
ENTRIES = list_weights()


@functools.lru_cache(maxsize=None)
def _meta_backbone(variant: str) -> nn.Module:
    with torch.device("meta"):
        return get_variant(variant).build()


def test_every_released_variant_has_weights_and_names_are_unique() -> None:
    assert {w.variant for w in ENTRIES} == {v.name for v in VARIANTS}
    names = [w.name for w in ENTRIES]
    assert len(names) == len(set(names))
    assert all(isinstance(w, WeightsEntry) for w in ENTRIES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENTRIES[0].top1 = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda w: w.name)
def test_metadata_matches_the_model(entry: WeightsEntry) -> None:
    backbone = _meta_backbone(entry.variant)
    with torch.device("meta"):
        head = ClassificationHead(backbone.out_channels, 1000)
        features = backbone(torch.empty(1, 3, entry.resolution, entry.resolution))
    params = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())
    assert params == entry.num_params
    # The training resolution gives an exact stride-32 map: no resize inside the blocks.
    assert tuple(features.shape[-2:]) == (entry.resolution // 32, entry.resolution // 32)
    # Channel order follows the code base the weights were trained with (spec §9).
    expected_order = "BGR" if backbone.config.block.attention == "multi_head" else "RGB"
    assert entry.channel_order == expected_order
    assert entry.mean == (0.0, 0.0, 0.0) and entry.std == (1.0, 1.0, 1.0)
    assert 0.5 < entry.crop_pct <= 1.0 and entry.interpolation in ("bilinear", "bicubic")
    assert 60.0 < entry.top1 < 90.0
    assert entry.url.startswith("https://")
    if entry.direct_download:
        assert entry.url.startswith("https://docs-assets.developer.apple.com/ml-research/models/")
        assert entry.url.endswith(".pt")
    else:
        assert "load_checkpoint" in entry.notes and "github.com/micronDLA" in entry.url
    if entry.timm_name is not None:
        assert entry.timm_name.split(".")[0] == entry.variant
    if entry.hf_hub_id is not None:
        assert entry.hf_hub_id.startswith("apple/")
    assert entry.sha256 is None or len(entry.sha256) == 64


def test_lookups() -> None:
    assert [w.tag for w in list_weights("mobilevit_xxs")] == ["cvnets-in1k"]
    assert get_weights("mobilevitv2_100") is get_weights("mobilevitv2_100", "DEFAULT")
    assert get_weights("mobilevitv2_100").hf_hub_id == "apple/mobilevitv2-1.0-imagenet1k-256"
    assert get_weights("mobilevitv2_200", "cvnets-in1k-384").resolution == 384
    with pytest.raises(ValueError, match="mobilevit_xxs"):
        list_weights("mobilevit_tiny")
    with pytest.raises(ValueError, match="cvnets-in1k"):
        get_weights("mobilevit_xxs", "in22k")
    with pytest.raises(TypeError):
        list_weights(3)  # type: ignore[arg-type]


def _mirror(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, variant: str, golden: str) -> WeightsEntry:
    """Serve ``golden`` as the registry file of ``variant`` from a file:// mirror, with the hub cache in tmp."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    mirror = tmp_path / "mirror" / golden
    mirror.parent.mkdir()
    mirror.write_bytes((DATA / golden).read_bytes())
    entry = dataclasses.replace(get_weights(variant), url=mirror.as_uri())
    monkeypatch.setattr(
        weights_module, "WEIGHTS", tuple(entry if w.name == entry.name else w for w in weights_module.WEIGHTS)
    )
    return entry


def test_constructor_weights_from_local_mirror(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mirror(tmp_path, monkeypatch, "mobilevit_xxs", "v1_xxs_cls.pt")
    blob = torch.load(DATA / "v1_xxs_cls.pt", weights_only=True)
    model = MobileViT(mode="xxs", weights="cvnets-in1k")
    for key, value in model.state_dict().items():
        assert torch.equal(value, blob["state_dict"][key].to(value.dtype)), key
    assert len(list((tmp_path / "hub" / "checkpoints").iterdir())) == 1


def test_load_weights_channel_order(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mirror(tmp_path, monkeypatch, "mobilevit_xxs", "v1_xxs_cls.pt")
    native, rgb = MobileViT(mode="xxs"), MobileViT(mode="xxs")
    report = load_weights(native, "cvnets-in1k", progress=False)
    assert "expects BGR" in report.notes[-1]
    report = load_weights(rgb, "mobilevit_xxs.cvnets-in1k", channel_order="RGB", progress=False)
    assert "expects RGB" in report.notes[-1]
    assert torch.equal(rgb.conv_1.block.conv.weight, native.conv_1.block.conv.weight.flip(1))
    with pytest.raises(ValueError, match="channel_order"):
        load_weights(native, "cvnets-in1k", channel_order="rgb")
    gray = MobileViT(mode="xxs", in_channels=1)
    report = load_weights(gray, "cvnets-in1k", progress=False)
    assert "adapted the checkpoint's 3-channel stem to in_channels=1" in report.notes[-2]
    assert report.notes[-1] == "mobilevit_xxs.cvnets-in1k: the model now expects 1-channel input in [0, 1] (no mean/std)"


def test_v3_entries_need_a_local_file_and_then_match_the_golden() -> None:
    model = nn.Sequential(MobileViTv3(mode="xxs"), ClassificationHead(512, 1000)).eval()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot be downloaded automatically"):
        load_weights(model, "mobilevitv3-in1k")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    report = load_weights(model, "mobilevitv3-in1k", path=DATA / "v3_xxs_cls.pt")
    assert report.complete
    blob = torch.load(DATA / "v3_xxs_cls.pt", weights_only=True)
    with torch.no_grad():
        out = model(blob["inputs"]["x_250x230"].float())
    torch.testing.assert_close(out, blob["outputs"]["logits_250x230"], atol=1e-4, rtol=1e-4)


def test_weights_for_a_non_released_width_are_refused() -> None:
    from visionkit.contrib import MobileViTv2

    with pytest.raises(ValueError, match="not a released variant"):
        load_weights(MobileViTv2(0.6), "cvnets-in1k")


def test_weights_of_another_variant_are_refused_before_anything_is_read(tmp_path: pathlib.Path) -> None:
    model = MobileViT(mode="xxs")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="holds mobilevit_xs weights, but the model is mobilevit_xxs"):
        load_weights(model, "mobilevit_xs.cvnets-in1k", path=tmp_path / "never-read.pt", strict=False)
    with pytest.raises(ValueError, match="holds mobilevit_xs weights"):
        load_weights(model, get_weights("mobilevit_xs"), path=tmp_path / "never-read.pt")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_stem_that_cannot_be_flipped_is_refused_before_loading() -> None:
    model = MobileViT(mode="xxs", in_channels=1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="only 3-channel stems can be flipped"):
        load_weights(model, "cvnets-in1k", path=DATA / "v1_xxs_cls.pt", strict=False, channel_order="RGB")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
