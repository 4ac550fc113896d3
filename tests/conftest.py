from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

#: Devices the device-dependent tests run on: the CPU always, CUDA when this machine has it (CI has none; the
#: CUDA rows run on a GPU machine, see tests/README or the notes on issue 6).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device of :data:`DEVICES`, with TF32 off on CUDA so that float32 means float32."""
    if request.param == "cuda":
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        request.addfinalizer(lambda: (setattr(torch.backends.cuda.matmul, "allow_tf32", matmul),
                                      setattr(torch.backends.cudnn, "allow_tf32", cudnn)))
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_golden(name: str) -> dict:
    """Load a golden file copied from the official models (see tests/data/README.md)."""
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def upcast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Golden weights are stored as float16 (exactly); the models run in float32."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}
