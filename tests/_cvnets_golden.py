"""Test helper: load an official cvnets detection/segmentation state dict through the head<->checkpoint contract.

``encoder.*`` goes to the backbone with ``strict=True``; every other key must start with one of the head's
``cvnets_prefixes`` and is renamed by ``head.cvnets_key``; the head loads with ``strict=True``. Only the training-only
auxiliary segmentation head (``seg_head.aux_head.*``) may be left unmapped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent / "data"
ALLOWED_UNMAPPED = ("seg_head.aux_head.",)


def load_golden(name: str) -> dict:
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def upcast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}


def load_official(backbone: nn.Module, head: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state_dict`` into ``backbone`` and ``head``; return the official keys the head did not take."""
    state_dict = upcast(state_dict)
    encoder = {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    backbone.load_state_dict(encoder, strict=True)
    head_state, unmapped = {}, []
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            continue
        assert key.startswith(head.cvnets_prefixes), f"{key} belongs to neither the backbone nor the head"
        mapped = head.cvnets_key(key)
        if mapped is None:
            unmapped.append(key)
        else:
            assert mapped not in head_state, f"two official keys map to {mapped}"
            head_state[mapped] = value
    head.load_state_dict(head_state, strict=True)
    leftover = [k for k in unmapped if not k.startswith(ALLOWED_UNMAPPED)]
    assert not leftover, f"official keys left unmapped: {leftover}"
    return unmapped
