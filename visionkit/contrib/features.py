"""Multi-level feature extraction: a backbone that returns a list of chosen levels, for dense heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import check_int, check_type

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """Wrap a backbone so that its forward returns the feature maps of chosen levels.

    A backbone's forward returns one tensor; detection heads need several. This module calls
    ``backbone.forward_intermediates(x, indices)``, so it composes in ``nn.Sequential`` with heads that take a
    list, such as :class:`~visionkit.contrib.SSDLiteHead`. Only the layers up to the deepest level run.

    The backbone's own ``forward`` is not called, so hooks registered on the backbone module itself do not run
    (hooks on its layers do), and wrapping a compiled backbone runs it uncompiled: compile the extractor instead.

    For the official SSDLite models use ``indices=(3, 4)`` (``layer_4`` at stride 16 and ``layer_5`` at stride
    32) and build the backbone with ``expand_output=False``: ``conv_1x1_exp`` is never used by this module.

    Args:
        backbone: a module with ``forward_intermediates(x, indices)`` and ``feature_info`` (e.g.
            :class:`~visionkit.contrib.MobileViT`).
        indices: level indices (0-based, ``feature_info`` order; negative counts from the end).

    Attributes:
        backbone: the wrapped backbone (its state-dict keys appear under ``backbone.``).
        indices: the chosen levels, non-negative.
        channels: channels of the chosen levels.
        reductions: strides of the chosen levels.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: a list of :math:`(B, C_i, H_i, W_i)`, one per index.

    Raises:
        TypeError: ``backbone`` lacks ``forward_intermediates``/``feature_info``, or ``indices`` is not a
            sequence of ints.
        ValueError: ``indices`` is empty or an index is out of range.

    Example:
        >>> import torch
        >>> from visionkit.contrib import FeatureExtractor, MobileViT
        >>> extractor = FeatureExtractor(MobileViT(mode="xxs", expand_output=False), indices=(3, 4))
        >>> extractor.channels, extractor.reductions
        ((64, 80), (16, 32))
        >>> [f.shape for f in extractor(torch.rand(1, 3, 64, 96))]
        [torch.Size([1, 64, 4, 6]), torch.Size([1, 80, 2, 3])]
    """

    def __init__(self, backbone: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        check_type("backbone", backbone, nn.Module)
        if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "feature_info"):
            raise TypeCheckError(
                f"backbone must provide forward_intermediates() and feature_info (e.g. MobileViT), "
                f"got {type(backbone).__name__}",
                actual_type=type(backbone),
            )
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise TypeCheckError(
                f"indices must be a sequence of ints such as (3, 4), got {type(indices).__name__}",
                actual_type=type(indices),
            )
        if len(indices) == 0:
            raise ValueCheckError("indices must name at least one level, got an empty sequence")
        count = len(backbone.feature_info)
        resolved = []
        for index in indices:
            index = check_int("indices[...]", index)  # an int or a numpy integer
            if not -count <= index < count:
                raise ValueCheckError(
                    f"feature level index must be in [{-count}, {count - 1}], got {index}", actual_value=index
                )
            resolved.append(index % count)
        self.backbone = backbone
        self.indices: tuple[int, ...] = tuple(resolved)
        self.channels: tuple[int, ...] = tuple(backbone.feature_info[i].channels for i in resolved)
        self.reductions: tuple[int, ...] = tuple(backbone.feature_info[i].reduction for i in resolved)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(x, self.indices)
