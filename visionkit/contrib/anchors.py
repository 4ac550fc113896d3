"""SSD anchor (default-box) generator, bit-exact to the official apple/ml-cvnets ``SSDAnchorGenerator``.

Scales are ``linspace(min_scale, max_scale, L + 1)`` for ``L`` levels; level ``i`` has a small square of side
``s_i``, a large square of side ``sqrt(s_i * s_{i+1})`` and, for each aspect ratio ``r``, the pair
``(s_i sqrt(r), s_i / sqrt(r))`` and ``(s_i / sqrt(r), s_i sqrt(r))``. Centres are ``((x + 0.5) / W, (y + 0.5) / H)``
looping row-major over ``y`` then ``x``. Everything is computed in float64 as the official code does, then cast and
clipped to ``[0, 1]``. This file is an independent implementation written from that description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import check_positive_finite, check_positive_int, check_real, check_type

__all__ = ["SSD_ASPECT_RATIOS", "SSDAnchorGenerator"]

#: Official aspect ratios per level (output strides 16, 32, 64, 128, 256, global).
SSD_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2, 3), (2, 3), (2, 3), (2, 3), (2, 3), (2,))


def _linspace_like_numpy(start: float, stop: float, num: int) -> list[float]:
    # numpy.linspace: i * step + start, and the last value set to ``stop`` exactly.
    step = (stop - start) / (num - 1)
    values = [i * step + start for i in range(num)]
    values[-1] = stop
    return values


class SSDAnchorGenerator(nn.Module):
    """Anchors of every pyramid level, normalised ``(cx, cy, w, h)``, in the order the SSD head predicts.

    Args:
        aspect_ratios: per level, the aspect ratios ``r`` beyond the two squares; a level has
            ``2 + 2 * len(aspect_ratios[i])`` anchors per location.
        min_scale: smallest anchor side (fraction of the image).
        max_scale: the last scale of the linspace.
        clip: clip anchors to ``[0, 1]`` (the official default).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: no level, an aspect ratio is not positive and finite, or ``0 < min_scale < max_scale`` (finite)
            does not hold.

    Example:
        >>> generator = SSDAnchorGenerator()
        >>> generator.num_anchors_per_location
        (6, 6, 6, 6, 6, 4)
        >>> generator([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]).shape
        torch.Size([3232, 4])
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]] = SSD_ASPECT_RATIOS,
        *,
        min_scale: float = 0.1,
        max_scale: float = 1.05,
        clip: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(aspect_ratios, (str, bytes)) or not isinstance(aspect_ratios, Sequence):
            raise TypeCheckError(
                f"aspect_ratios must be a sequence (one entry per level), got {aspect_ratios!r}",
                actual_type=type(aspect_ratios),
            )
        if not aspect_ratios:
            raise ValueCheckError("aspect_ratios must have at least one level, got an empty sequence",
                                  actual_value=aspect_ratios)
        ratios: list[tuple[float, ...]] = []
        for level in aspect_ratios:
            if isinstance(level, (str, bytes)) or not isinstance(level, Sequence):
                raise TypeCheckError(
                    f"each aspect_ratios entry must be a sequence of numbers, got {level!r}", actual_type=type(level)
                )
            ratios.append(tuple(check_positive_finite("aspect ratio", ratio) for ratio in level))
        min_scale = check_real("min_scale", min_scale)
        max_scale = check_real("max_scale", max_scale)
        check_type("clip", clip, bool)
        if not 0 < min_scale < max_scale < math.inf:
            raise ValueCheckError(
                f"need 0 < min_scale < max_scale < inf, got min_scale={min_scale!r}, max_scale={max_scale!r}",
                actual_value=(min_scale, max_scale),
            )
        self.aspect_ratios = tuple(ratios)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.clip = clip
        scales = _linspace_like_numpy(self.min_scale, self.max_scale, len(ratios) + 1)
        #: per level, ``(small side, large side)``
        self.sizes: tuple[tuple[float, float], ...] = tuple(
            (scales[i], (scales[i] * scales[i + 1]) ** 0.5) for i in range(len(ratios))
        )

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.aspect_ratios)

    @property
    def num_anchors_per_location(self) -> tuple[int, ...]:
        """Anchors per feature-map location, per level."""
        return tuple(2 + 2 * len(r) for r in self.aspect_ratios)

    def _level_shapes(self, level: int) -> list[tuple[float, float]]:
        small, large = self.sizes[level]
        shapes = [(small, small), (large, large)]
        for ratio in self.aspect_ratios[level]:
            root = ratio**0.5
            shapes += [(small * root, small / root), (small / root, small * root)]
        return shapes

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Return the anchors for the given feature-map sizes.

        Args:
            feature_sizes: :math:`(H_i, W_i)` of each level, one per level.
            device: device of the result.
            dtype: floating dtype of the result.

        Returns:
            :math:`(N, 4)` anchors ``(cx, cy, w, h)`` in ``[0, 1]``, :math:`N = \\sum_i H_i W_i A_i`, ordered by
            level, then ``y``, then ``x``, then anchor.

        Raises:
            TypeError: ``feature_sizes`` is not a sequence, a size holds something other than ints, ``device`` is
                not a device, or ``dtype`` is not a floating dtype.
            ValueError: the number of sizes differs from the number of levels, or a size is not a pair of positive
                ints.
        """
        if isinstance(feature_sizes, (str, bytes)) or not isinstance(feature_sizes, Sequence):
            raise TypeCheckError(
                f"feature_sizes must be a sequence of (height, width) pairs, one per level, got {feature_sizes!r}",
                actual_type=type(feature_sizes),
            )
        if len(feature_sizes) != self.num_levels:
            raise ValueCheckError(
                f"expected {self.num_levels} feature-map sizes (one per level), got {len(feature_sizes)}",
                actual_value=len(feature_sizes),
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeCheckError(f"dtype must be a floating torch.dtype, got {dtype!r}", actual_type=type(dtype))
        if device is not None:
            check_type("device", device, (torch.device, str, int))
        levels = []
        for level, size in enumerate(feature_sizes):
            if not isinstance(size, Sequence) or len(size) != 2:
                raise ValueCheckError(f"feature size {level} must be a (height, width) pair of ints, got {size!r}")
            try:
                height = check_positive_int("feature height", size[0])
                width = check_positive_int("feature width", size[1])
            except TypeError as error:
                raise TypeCheckError(
                    f"feature size {level} must be a (height, width) pair of ints, got {size!r}",
                    actual_type=type(size),
                ) from error
            cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
            cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
            shapes = torch.tensor(self._level_shapes(level), dtype=torch.float64)  # (A, 2) as (w, h)
            num = shapes.shape[0]
            centres = torch.stack(
                (cx.view(1, width, 1).expand(height, width, num), cy.view(height, 1, 1).expand(height, width, num)),
                dim=-1,
            )
            boxes = torch.cat((centres, shapes.view(1, 1, num, 2).expand(height, width, num, 2)), dim=-1)
            levels.append(boxes.reshape(-1, 4))
        anchors = torch.cat(levels).to(dtype)
        if self.clip:
            anchors = anchors.clamp(0.0, 1.0)
        return anchors.to(device) if device is not None else anchors
