"""Task heads that compose with a backbone in ``nn.Sequential``."""

from __future__ import annotations

from collections import OrderedDict

from kornia.core.exceptions import ValueCheckError
from torch import nn

from ._checks import check_positive_int, check_type

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Sequential):
    """Global average pool, flatten, dropout, linear: logits from a feature map.

    Submodules are named ``pool``, ``flatten``, ``dropout`` and ``fc``; ``fc`` has the same keys as the official
    v1 classifier (``classifier.fc``).

    Args:
        in_channels: channels :math:`C` of the feature map (the backbone's ``out_channels``).
        num_classes: number of classes :math:`K`.
        dropout: dropout probability before the linear layer (the official MobileViT v1 recipe uses 0.1).

    Shape:
        - Input: :math:`(B, C, H, W)`, any :math:`H, W`.
        - Output: :math:`(B, K)`

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``in_channels < 1``, ``num_classes < 1`` or ``dropout`` outside ``[0, 1)``.

    Example:
        >>> model = nn.Sequential(MobileViT(mode="xxs"), ClassificationHead(320, 10))
        >>> model(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_type("dropout", dropout, (int, float))
        if not 0.0 <= dropout < 1.0:
            raise ValueCheckError(f"dropout must be in [0, 1), got {dropout!r}", actual_value=dropout)
        super().__init__(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                dropout=nn.Dropout(dropout),
                fc=nn.Linear(in_channels, num_classes),
            )
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
