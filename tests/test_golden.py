"""Official-format weights load directly into the module tree and reproduce the official outputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from conftest import load_golden, upcast
from visionkit.contrib import ClassificationHead, MobileViT, MobileViTBackbone, MobileViTv2, MobileViTv3

GOLDENS: dict[str, Callable[[], MobileViTBackbone]] = {
    "v1_xxs_cls": lambda: MobileViT(mode="xxs"),
    "v2_050_cls": lambda: MobileViTv2(0.5),
    "v3_xxs_cls": lambda: MobileViTv3(mode="xxs"),
    "v3_050_cls": lambda: MobileViTv3(width_multiplier=0.5),
}


def official_classifier(name: str) -> tuple[nn.Sequential, dict]:
    """Backbone + head with the golden's official-layout weights, loaded strictly (no renaming but the head)."""
    blob = load_golden(name)
    state = upcast(blob["state_dict"])
    backbone = GOLDENS[name]()
    head = ClassificationHead(backbone.out_channels, 1000)
    head_state = {head.cvnets_key(k): state.pop(k) for k in [k for k in state if k.startswith(head.cvnets_prefixes)]}
    backbone.load_state_dict(state, strict=True)
    head.load_state_dict(head_state, strict=True)
    return nn.Sequential(backbone, head).eval(), blob


@pytest.mark.parametrize("name", list(GOLDENS))
@pytest.mark.parametrize("size", ["256", "250x230"])
def test_matches_official_logits(name: str, size: str, device: torch.device) -> None:
    model, blob = official_classifier(name)
    with torch.no_grad():
        logits = model.to(device)(blob["inputs"][f"x_{size}"].float().to(device))
    torch.testing.assert_close(logits.cpu(), blob["outputs"][f"logits_{size}"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(GOLDENS))
def test_matches_official_intermediate_levels(name: str) -> None:
    # Per-channel spatial means of the official end points out_l1 .. out_l5 (first input, 256x256).
    model, blob = official_classifier(name)
    with torch.no_grad():
        levels = model[0].forward_intermediates(blob["inputs"]["x_256"].float())
    for i, level in enumerate(levels, start=1):
        torch.testing.assert_close(level.mean(dim=(2, 3))[0], blob["intermediates"][f"x_256/out_l{i}"], atol=1e-4, rtol=1e-4)


def test_a_wrong_weight_is_caught() -> None:
    # The golden comparison is sensitive: perturbing one BatchNorm statistic breaks it.
    model, blob = official_classifier("v1_xxs_cls")
    model[0].layer_4[1].fusion.block.norm.running_mean[0] += 0.5
    with torch.no_grad():
        logits = model(blob["inputs"]["x_256"].float())
    assert (logits - blob["outputs"]["logits_256"]).abs().max() > 1e-3
