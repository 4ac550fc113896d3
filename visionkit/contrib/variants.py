"""The released variants of every family, by short name (``mobilevit_xxs``, ``mobilevitv2_050``, ...).

Summary tables, the docs' model zoo, the benchmark and the test suite all iterate over :data:`VARIANTS`, so a
variant added here is measured, documented and tested everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._checks import check_choice, check_type
from .backbone import MobileViT, MobileViTBackbone, MobileViTv2, MobileViTv3
from .configs import V1_CONFIGS, V3_CONFIGS, format_width

__all__ = ["VARIANTS", "Variant", "build_variant", "get_variant"]

_V2_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
_V3_WIDTHS = (0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Variant:
    """A released backbone variant.

    Attributes:
        name: short name, e.g. ``"mobilevit_xxs"`` or ``"mobilevitv2_050"``.
        family: ``"MobileViT"``, ``"MobileViTv2"`` or ``"MobileViTv3"``.
        title: display name, e.g. ``"MobileViT-XXS"``.
        call: the constructor call that builds it, e.g. ``'MobileViT(mode="xxs")'``.
        builder: a callable building the backbone; keyword arguments are passed on.
    """

    name: str
    family: str
    title: str
    call: str
    builder: Callable[..., MobileViTBackbone]

    def build(self, **kwargs: Any) -> MobileViTBackbone:
        """Build the backbone, passing ``kwargs`` (e.g. ``output_stride``) to the constructor.

        Raises:
            TypeError: ``kwargs`` names an argument the variant fixes (``mode`` or ``width_multiplier``).
        """
        fixed = getattr(self.builder, "keywords", {})
        clash = sorted(set(fixed) & set(kwargs))
        if clash:
            raise TypeError(
                f"{self.name} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; got {clash[0]}="
                f"{kwargs[clash[0]]!r} (build another variant, or call {self.family}(...) directly)"
            )
        return self.builder(**kwargs)


def _mode_variants(family: str, cls: Callable[..., MobileViTBackbone], table: dict[str, Any], prefix: str) -> list[Variant]:
    return [
        Variant(f"{prefix}_{m}", family, cfg.name, f'{cls.__name__}(mode="{m}")', functools.partial(cls, mode=m))
        for m, cfg in table.items()
    ]


def _width_variants(
    family: str, cls: Callable[..., MobileViTBackbone], widths: tuple[float, ...], prefix: str, call: str
) -> list[Variant]:
    return [
        Variant(
            f"{prefix}_{round(w * 100):03d}",
            family,
            f"{family}-{format_width(w)}",
            f"{cls.__name__}({call.format(format_width(w))})",
            functools.partial(cls, width_multiplier=w),
        )
        for w in widths
    ]


def _variants() -> tuple[Variant, ...]:
    return (
        *_mode_variants("MobileViT", MobileViT, V1_CONFIGS, "mobilevit"),
        *_width_variants("MobileViTv2", MobileViTv2, _V2_WIDTHS, "mobilevitv2", "{}"),
        *_mode_variants("MobileViTv3", MobileViTv3, V3_CONFIGS, "mobilevitv3"),
        *_width_variants("MobileViTv3", MobileViTv3, _V3_WIDTHS, "mobilevitv3", "width_multiplier={}"),
    )


#: Every released variant, v1 first, then v2, then v3.
VARIANTS: tuple[Variant, ...] = _variants()
_BY_NAME = {v.name: v for v in VARIANTS}


def get_variant(name: str) -> Variant:
    """Look a variant up by short name.

    Args:
        name: short variant name, e.g. ``"mobilevit_xxs"`` (see :data:`VARIANTS`).

    Returns:
        The :class:`Variant` record.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no variant has that name; the message lists them.

    Example:
        >>> get_variant("mobilevitv2_050").call
        'MobileViTv2(0.5)'
    """
    check_type("name", name, str)
    check_choice("variant name", name, list(_BY_NAME))
    return _BY_NAME[name]


def build_variant(name: str, **kwargs: Any) -> MobileViTBackbone:
    """Build a variant by short name, e.g. ``build_variant("mobilevit_xs", output_stride=16)``.

    Args:
        name: short variant name (see :data:`VARIANTS`).
        **kwargs: keyword arguments of the family's constructor, e.g. ``output_stride`` or ``in_channels``.

    Returns:
        The backbone, with fresh (random) weights.

    Raises:
        TypeError: ``name`` is not a string, or a keyword argument is unknown or has the wrong type.
        ValueError: no variant has that name, or a keyword argument has an invalid value.

    Example:
        >>> build_variant("mobilevit_xxs").out_channels
        320
    """
    return get_variant(name).build(**kwargs)
