"""Doctest namespace: every example may use ``torch``, ``nn`` and the public ``visionkit.contrib`` names."""

import pytest
import torch
from torch import nn

import visionkit.contrib


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["nn"] = nn
    for name in visionkit.contrib.__all__:
        doctest_namespace[name] = getattr(visionkit.contrib, name)
    torch.manual_seed(0)
