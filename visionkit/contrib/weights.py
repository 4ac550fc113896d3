"""Registry of the released MobileViT v1, v2 and v3 checkpoints, one frozen :class:`WeightsEntry` each.

Facts come from the official model zoos (apple/ml-cvnets ``README-mobilevit.md`` at v0.1 and
``README-model-zoo.md`` at v0.2; the micronDLA/MobileViTv3 README and release) and ``mobilevit-spec.md`` §5, §9.
Parameter counts are those of the backbone plus a 1000-class :class:`~visionkit.contrib.ClassificationHead`
(tested against the built models).

Preprocessing shared by every entry: pixels scaled to ``[0, 1]`` with **no** mean/std normalisation (mean 0,
std 1). Channel order differs: the v1 and MobileViTv3-XXS/XS/S weights were trained on **BGR** images (cvnets v0.1
read images with OpenCV), v2 and MobileViTv3-0.5/0.75/1.0 on **RGB** (cvnets v0.2, PIL). Load with
``channel_order="RGB"`` (or call :func:`~visionkit.contrib.flip_stem_channels`) to feed RGB to any of them.

No SHA-256 is published for any of these files, so ``sha256`` is ``None`` everywhere and downloads are checked only
for being a readable, weights-only checkpoint of the right shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from kornia.core.exceptions import ValueCheckError
from torch import nn

from ._checks import check_choice, check_type
from .checkpoint import LoadReport, _flippable_stem, _locate, flip_stem_channels, load_checkpoint

__all__ = ["WeightsEntry", "get_weights", "list_weights", "load_weights"]

_APPLE_LICENSE = "Apple ml-cvnets license (https://github.com/apple/ml-cvnets/blob/main/LICENSE)"
_MICRON_LICENSE = (
    "Micron Technology software license agreement: personal, non-commercial use only "
    "(LICENSE of https://github.com/micronDLA/MobileViTv3)"
)
_V1_ZOO = "https://docs-assets.developer.apple.com/ml-research/models/cvnets/classification"
_V2_ZOO = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2/classification/mobilevitv2"
_V3_RELEASE = "https://github.com/micronDLA/MobileViTv3/releases/tag/v1.0.0"
_EVAL_CROP_256 = round(256 / 288, 4)  # resize the short side to 288, centre-crop 256


@dataclass(frozen=True)
class WeightsEntry:
    """One released checkpoint.

    Attributes:
        variant: short variant name (see :data:`visionkit.contrib.variants.VARIANTS`), e.g. ``"mobilevit_xxs"``.
        tag: checkpoint tag, unique per variant, e.g. ``"cvnets-in1k"``.
        url: where the official file is published. A direct file URL when ``direct_download``, else the page to
            download it from by hand.
        sha256: SHA-256 of the file, ``None`` when none is published.
        hf_hub_id: Hugging Face hub repository with the same weights (transformers layout), or ``None``.
        timm_name: timm model name with pretrained tag, or ``None``.
        license: license the weights are published under.
        resolution: training / evaluation input side in pixels.
        crop_pct: evaluation centre-crop fraction (crop side / resized short side).
        interpolation: resize interpolation of the evaluation pipeline.
        mean: per-channel mean subtracted after scaling to ``[0, 1]``.
        std: per-channel divisor after subtracting ``mean``.
        channel_order: ``"BGR"`` or ``"RGB"``, the order the weights expect.
        num_params: parameters of backbone + 1000-class classification head.
        top1: ImageNet-1k top-1 accuracy (%) from the official model zoo.
        dataset: training data, e.g. ``"ImageNet-1k"``.
        source: who trained and published the weights.
        direct_download: whether ``url`` is the file itself.
        notes: anything a user must know (e.g. how to fetch files that are not directly downloadable).
    """

    variant: str
    tag: str
    url: str
    sha256: Optional[str]
    hf_hub_id: Optional[str]
    timm_name: Optional[str]
    license: str
    resolution: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str
    num_params: int
    top1: float
    dataset: str = "ImageNet-1k"
    source: str = "apple/ml-cvnets"
    direct_download: bool = True
    notes: str = ""

    @property
    def name(self) -> str:
        """``"<variant>.<tag>"``, e.g. ``"mobilevit_xxs.cvnets-in1k"``."""
        return f"{self.variant}.{self.tag}"


def _entry(variant: str, tag: str, url: str, *, family_order: str, **kwargs: object) -> WeightsEntry:
    defaults: dict[str, object] = dict(
        sha256=None,
        hf_hub_id=None,
        timm_name=None,
        license=_APPLE_LICENSE,
        resolution=256,
        crop_pct=_EVAL_CROP_256,
        interpolation="bilinear" if family_order == "BGR" else "bicubic",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order=family_order,
    )
    defaults.update(kwargs)
    return WeightsEntry(variant=variant, tag=tag, url=url, **defaults)  # type: ignore[arg-type]


def _v1_entries() -> list[WeightsEntry]:
    rows = (
        ("xxs", "mobilevit_xxs.pt", "apple/mobilevit-xx-small", 1_272_024, 69.0),
        ("xs", "mobilevit_xs.pt", "apple/mobilevit-x-small", 2_317_848, 74.7),
        ("s", "mobilevit_s.pt", "apple/mobilevit-small", 5_578_632, 78.3),
    )
    return [
        _entry(
            f"mobilevit_{mode}", "cvnets-in1k", f"{_V1_ZOO}/{file}", family_order="BGR",
            hf_hub_id=hub, timm_name=f"mobilevit_{mode}.cvnets_in1k", num_params=params, top1=top1,
            notes=(
                "OpenCV bilinear resize in the official evaluation (cvnets v0.1); trained multi-scale 160-320. "
                "The HF hub preprocessor flips RGB to BGR for these weights. timm evaluates its port in RGB; whether "
                "timm's copy has its stem channels reversed is unverified, so check the stem before relying on the "
                "channel order of a timm file."
            ),
        )
        for mode, file, hub, params, top1 in rows
    ]


_V2_PARAMS = {0.5: 1_370_593, 0.75: 2_866_009, 1.0: 4_901_841, 1.25: 7_478_089, 1.5: 10_594_753,
              1.75: 14_251_833, 2.0: 18_449_329}
_V2_TOP1 = {
    # width: (IN-1k 256, IN-1k 384 fine-tune, IN-21k -> IN-1k 256, IN-21k -> IN-1k 384)
    0.5: (70.18, 72.14, None, None),
    0.75: (75.56, 76.98, None, None),
    1.0: (78.09, 79.68, None, None),
    1.25: (79.65, 80.94, None, None),
    1.5: (80.38, 81.50, 81.46, 82.60),
    1.75: (80.84, 82.04, 81.94, 82.93),
    2.0: (81.17, 82.17, 82.36, 83.41),
}


def _v2_entries() -> list[WeightsEntry]:
    out = []
    for width, (in1k, in1k_384, in21k, in21k_384) in _V2_TOP1.items():
        short = f"{round(width * 100):03d}"
        variant, file, params = f"mobilevitv2_{short}", f"mobilevitv2-{width:g}.pt", _V2_PARAMS[width]
        out.append(_entry(
            variant, "cvnets-in1k", f"{_V2_ZOO}/imagenet1k/256x256/{file}", family_order="RGB",
            hf_hub_id="apple/mobilevitv2-1.0-imagenet1k-256" if width == 1.0 else None,
            timm_name=f"mobilevitv2_{short}.cvnets_in1k", num_params=params, top1=in1k,
        ))
        out.append(_entry(
            variant, "cvnets-in1k-384", f"{_V2_ZOO}/imagenet1k/384x384/{file}", family_order="RGB",
            resolution=384, crop_pct=1.0, num_params=params, top1=in1k_384,
            notes="trained at 256 on ImageNet-1k, fine-tuned at 384; evaluation resizes the short side to 384.",
        ))
        if in21k is not None:
            out.append(_entry(
                variant, "cvnets-in21k-ft-in1k", f"{_V2_ZOO}/imagenet21k_to_1k/256x256/{file}", family_order="RGB",
                timm_name=f"mobilevitv2_{short}.cvnets_in22k_ft_in1k", num_params=params, top1=in21k,
                dataset="ImageNet-21k -> ImageNet-1k",
            ))
            out.append(_entry(
                variant, "cvnets-in21k-ft-in1k-384", f"{_V2_ZOO}/imagenet21k_to_1k/384x384/{file}",
                family_order="RGB", timm_name=f"mobilevitv2_{short}.cvnets_in22k_ft_in1k_384", resolution=384,
                crop_pct=1.0, num_params=params, top1=in21k_384, dataset="ImageNet-21k -> ImageNet-1k",
            ))
    return out


_V3_NOTES = (
    "published as a folder per model (checkpoint_ema_best.pt, folder {folder}) on the MobileViTv3 GitHub release; "
    "no direct file URL or hash is known. Download it by hand and call load_checkpoint(model, path, "
    "source='cvnets')."
)


def _v3_entries() -> list[WeightsEntry]:
    rows = (
        ("mobilevitv3_xxs", "BGR", 1_249_448, 70.98, "mobilevitv3_XXS_e300_7098"),
        ("mobilevitv3_xs", "BGR", 2_490_360, 76.7, "mobilevitv3_XS_e300_7671"),
        ("mobilevitv3_s", "BGR", 5_763_912, 79.3, "mobilevitv3_S_e300_7930"),
        ("mobilevitv3_xxs_l2", "BGR", 1_145_288, 70.23, "not listed in the README"),
        ("mobilevitv3_xs_l2", "BGR", 2_257_320, 76.10, "not listed in the README"),
        ("mobilevitv3_s_l2", "BGR", 5_169_864, 79.06, "not listed in the README"),
        ("mobilevitv3_050", "RGB", 1_429_985, 72.33, "mobilevitv3_0_5_0"),
        ("mobilevitv3_075", "RGB", 2_999_641, 76.55, "mobilevitv3_0_7_5"),
        ("mobilevitv3_100", "RGB", 5_139_409, 78.64, "mobilevitv3_1_0_0"),
    )
    return [
        _entry(
            variant, "mobilevitv3-in1k", _V3_RELEASE, family_order=order, license=_MICRON_LICENSE,
            num_params=params, top1=top1, source="micronDLA/MobileViTv3", direct_download=False,
            notes=_V3_NOTES.format(folder=folder),
        )
        for variant, order, params, top1, folder in rows
    ]


#: Every registered checkpoint: v1, then v2, then v3; the first entry of a variant is its default.
WEIGHTS: tuple[WeightsEntry, ...] = (*_v1_entries(), *_v2_entries(), *_v3_entries())


def list_weights(variant: Optional[str] = None) -> list[WeightsEntry]:
    """List registered checkpoints, all of them or those of one variant.

    Args:
        variant: short variant name such as ``"mobilevitv2_100"``; ``None`` lists every entry.

    Raises:
        TypeError: ``variant`` is not a string.
        ValueError: no checkpoint is registered for ``variant``; the message lists the variants that have some.

    Example:
        >>> [w.tag for w in list_weights("mobilevitv2_200")]
        ['cvnets-in1k', 'cvnets-in1k-384', 'cvnets-in21k-ft-in1k', 'cvnets-in21k-ft-in1k-384']
        >>> get_weights("mobilevit_xxs").channel_order
        'BGR'
    """
    if variant is None:
        return list(WEIGHTS)
    check_type("variant", variant, str)
    check_choice("variant", variant, list(dict.fromkeys(w.variant for w in WEIGHTS)))
    return [w for w in WEIGHTS if w.variant == variant]


def get_weights(variant: str, tag: Optional[str] = None) -> WeightsEntry:
    """Return one checkpoint entry; ``tag=None`` (or ``"DEFAULT"``) gives the variant's default (first) one.

    Raises:
        TypeError: an argument is not a string.
        ValueError: unknown variant or tag; the message lists the valid ones.

    Example:
        >>> get_weights("mobilevitv2_150", "cvnets-in21k-ft-in1k-384").top1
        82.6
    """
    check_type("variant", variant, str)  # list_weights(None) would list every variant's entries
    entries = list_weights(variant)
    if tag is None or tag == "DEFAULT":
        return entries[0]
    check_type("tag", tag, str)
    check_choice(f"tag for {variant}", tag, [w.tag for w in entries])
    return next(w for w in entries if w.tag == tag)


def _variant_of(model: nn.Module) -> str:
    from .variants import VARIANTS

    backbone = _locate(model).backbone
    for variant in VARIANTS:
        if variant.title == backbone.config.name:
            return variant.name
    raise ValueCheckError(f"{backbone.config.name} is not a released variant, so no registered weights fit it")


def load_weights(
    model: nn.Module,
    weights: Union[str, WeightsEntry],
    *,
    channel_order: str = "native",
    strict: bool = True,
    progress: bool = True,
    path: Optional[Union[str, os.PathLike[str]]] = None,
) -> LoadReport:
    """Load a registered checkpoint into ``model`` (downloaded once into the torch hub cache).

    Args:
        model: a backbone, or a module containing one plus heads (see :func:`~visionkit.contrib.load_checkpoint`).
        weights: a tag of the model's variant (e.g. ``"cvnets-in1k"``, ``"DEFAULT"``), a ``"variant.tag"`` name, or
            a :class:`WeightsEntry`.
        channel_order: ``"native"`` keeps the weights as published (see :attr:`WeightsEntry.channel_order`);
            ``"RGB"`` or ``"BGR"`` flips the stem when needed so that the model takes that order.
        strict: as in :func:`~visionkit.contrib.load_checkpoint`.
        progress: show a download progress bar.
        path: a local copy of the file to read instead of ``entry.url`` (needed for entries that are not directly
            downloadable, and for mirrors).

    Returns:
        The :class:`~visionkit.contrib.LoadReport`, with a note on the channel order.

    Raises:
        TypeError: wrong argument types.
        ValueError: unknown tag, a variant mismatch, an entry without a direct download and no ``path``, or any
            error of :func:`~visionkit.contrib.load_checkpoint` (the model is left unchanged).
    """
    check_type("channel_order", channel_order, str)
    check_choice("channel_order", channel_order, ("native", "RGB", "BGR"))
    if isinstance(weights, WeightsEntry):
        entry = weights
    else:
        check_type("weights", weights, str)
        if "." in weights and weights.split(".", 1)[0].startswith("mobilevit"):
            entry = get_weights(*weights.split(".", 1))
        else:
            entry = get_weights(_variant_of(model), weights)
    model_variant = _variant_of(model)
    if entry.variant != model_variant:
        raise ValueCheckError(f"{entry.name} holds {entry.variant} weights, but the model is {model_variant}")
    flip = channel_order not in ("native", entry.channel_order)
    if flip:
        _flippable_stem(model)  # refuse before anything is loaded
    if path is None and not entry.direct_download:
        raise ValueCheckError(f"{entry.name} cannot be downloaded automatically: {entry.notes}")
    report = load_checkpoint(
        model, entry.url if path is None else path, source="cvnets", strict=strict, sha256=entry.sha256,
        progress=progress,
    )
    order = entry.channel_order
    if flip:
        flip_stem_channels(model)
        order = channel_order
    channels = _locate(model).backbone.in_channels
    if channels == 3:
        note = f"{entry.name}: the model now expects {order} input in [0, 1] (no mean/std)"
    else:  # a stem adapted to other channel counts has no channel order to speak of
        note = f"{entry.name}: the model now expects {channels}-channel input in [0, 1] (no mean/std)"
    return LoadReport(**{**report.__dict__, "notes": (*report.notes, note)})
