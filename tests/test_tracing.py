"""The resize path traces: one traced graph serves every input size; torch.export works."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from visionkit.contrib.variants import build_variant

NAMES = ["mobilevit_xxs", "mobilevitv2_050"]


@pytest.mark.parametrize("name", NAMES)
def test_traced_at_divisible_size_runs_exactly_at_odd_sizes(name: str) -> None:
    model = build_variant(name).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, 128, 128), check_trace=False)
        for size in [(125, 115), (64, 64), (33, 47)]:
            x = torch.rand(2, 3, *size)
            # Not bit-exact: on CPU eager runs channels-last with BatchNorm folded into the convolutions at run
            # time, the traced graph keeps the plain operations. A resize taken or skipped differently would move
            # the output by orders of magnitude more than this tolerance.
            torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_with_dynamic_batch_at_an_odd_size(name: str) -> None:
    model = build_variant(name).eval()
    program = export(model, (torch.rand(2, 3, 125, 115),), dynamic_shapes={"x": {0: Dim("batch", min=1, max=8)}})
    x = torch.rand(3, 3, 125, 115)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-4, rtol=1e-4)  # see above
