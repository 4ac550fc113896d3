"""Task heads that compose with a backbone in ``nn.Sequential``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import check_positive_int, check_probability, check_same_place

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Sequential):
    """Global average pool, flatten, dropout, linear: logits from a feature map.

    Submodules are named ``pool``, ``flatten``, ``dropout`` and ``fc``; ``fc`` has the same keys as the official
    v1 classifier (``classifier.fc``). As an ``nn.Sequential`` it runs whatever modules it holds, in order (a
    module appended after ``fc``, e.g. ``nn.Softmax(1)``, runs too), and a slice is a plain ``nn.Sequential``.

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
        check_probability("dropout", dropout)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits :math:`(B, K)` of a feature map :math:`(B, C, H, W)`.

        Raises:
            TypeError: ``x`` is not a tensor (e.g. the list of a :class:`~visionkit.contrib.FeatureExtractor`), or
                its dtype is not the head's (float64 into a float32 head; autocast casts are fine).
            ValueError: ``x`` is not 4-D with ``in_channels`` channels and at least one row and column, or is on
                another device.
        """
        if not torch.jit.is_scripting():  # TorchScript types the input itself; the checks stay out of it
            self._check_input(x)
        for module in self:
            x = module(x)
        return x

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):  # nn.Sequential would call this class's constructor with an OrderedDict
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)

    @torch.jit.unused
    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeCheckError(
                f"ClassificationHead takes one feature map (B, {self.in_channels}, H, W), got {type(x).__name__}; "
                "after a FeatureExtractor, pick one of its maps",
                actual_type=type(x),
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            expansion = x.dim() == 4 and x.shape[1] < self.in_channels  # e.g. 80 channels where 320 were expected
            raise ValueCheckError(
                f"ClassificationHead takes a feature map (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
                + ("; a backbone built with expand_output=False ends before its 1x1 expansion" if expansion else "")
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueCheckError(f"the feature map's height and width must be at least 1, got shape {tuple(x.shape)}")
        check_same_place(x, next(self.parameters(), None))

    #: Top-level prefixes of official cvnets checkpoint keys that this head owns (see :meth:`cvnets_key`).
    cvnets_prefixes: tuple[str, ...] = ("classifier.",)

    def cvnets_key(self, key: str) -> Optional[str]:
        """Map an official cvnets checkpoint key to this head's state-dict key.

        The v1 classifier is ``classifier.fc.*`` and the v2/v3-on-v2 one ``classifier.1.*``; both become ``fc.*``.

        Args:
            key: a full official key starting with one of :attr:`cvnets_prefixes`.

        Returns:
            The key relative to this head, or ``None`` when the head does not take it.

        Example:
            >>> ClassificationHead(256, 1000).cvnets_key("classifier.1.weight")
            'fc.weight'
        """
        for official in ("classifier.fc.", "classifier.1."):
            if key.startswith(official):
                return "fc." + key[len(official) :]
        return None

    def cvnets_export_key(self, key: str, family: str) -> str:
        """Official key of this head's state-dict key ``key`` (used when saving in the official layout).

        Backbones with the v1 block (v1, v3-XXS/XS/S) name the classifier ``classifier.fc.*``; those with the v2
        block (v2, v3-0.5/0.75/1.0) ``classifier.1.*``.

        Args:
            key: a key of this head's state dict, e.g. ``"fc.weight"``.
            family: ``"v1"`` or ``"v2"``, the backbone's block family.

        Example:
            >>> ClassificationHead(256, 1000).cvnets_export_key("fc.bias", "v2")
            'classifier.1.bias'
        """
        return ("classifier.fc." if family == "v1" else "classifier.1.") + key.removeprefix("fc.")
