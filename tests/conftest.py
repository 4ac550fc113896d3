from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_golden(name: str) -> dict:
    """Load a golden file copied from the official models (see tests/data/README.md)."""
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def upcast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Golden weights are stored as float16 (exactly); the models run in float32."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}
