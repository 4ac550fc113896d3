"""Load and save MobileViT weights in every public layout: official cvnets, timm, Hugging Face and visionkit.

:func:`load_checkpoint` reads a file, URL or in-memory state dict (never executing code: ``torch.load`` always runs
with ``weights_only=True``), detects or takes its layout, renames keys with the tables of
:mod:`visionkit.contrib.key_maps`, validates *everything* (keys, shapes) and only then writes the model, so a
failed load leaves the model untouched. :func:`convert_state_dict` / :func:`save_checkpoint` go the other way.

Supported models:

* a bare :class:`~visionkit.contrib.MobileViTBackbone`;
* an ``nn.Sequential(backbone, *heads)``;
* any module holding exactly one backbone somewhere inside (e.g. a feature extractor with a ``.backbone``
  attribute) plus heads.

Heads take part through the head <-> checkpoint contract: a head has a class attribute ``cvnets_prefixes`` (the
top-level official key prefixes it owns, e.g. ``("classifier.",)``) and a method ``cvnets_key(key)`` mapping a
full official key to its own state-dict key (``None``: not taken). To be *saved* in the official layout a head may
also define ``cvnets_export_key(key, family)`` returning the official key of its state-dict key ``key`` for a
backbone of block family ``"v1"`` or ``"v2"``; without it the first ``prefix + key`` that ``cvnets_key`` maps back
to ``key`` is used.

Equality with Hugging Face transformers: weights loaded from ``MobileViT*`` give the same outputs as the HF model
(tested within 1e-5 at 256x256 and 250x230). For ``MobileViTV2*`` the outputs agree at sizes whose feature maps
divide evenly (e.g. multiples of 64); at other sizes transformers skips the official resize of the block input
(spec §3.6) and its outputs differ from the official model, which visionkit follows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from torch import nn

from ._checks import check_choice, check_output_folder, check_type
from ._files import replaced_on_success
from .backbone import MobileViTBackbone
from .key_maps import HF_BACKBONE_PREFIX, ForeignKey, family_of, head_key_to_official, official_to_layout

__all__ = [
    "LoadReport",
    "SOURCES",
    "convert_state_dict",
    "detect_source",
    "flip_stem_channels",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

#: Values accepted by ``source``.
SOURCES: tuple[str, ...] = ("auto", "cvnets", "timm", "hf", "visionkit")

#: Top-level key prefixes of official head weights (classification, segmentation, detection checkpoints).
OFFICIAL_HEAD_PREFIXES: tuple[str, ...] = ("classifier.", "seg_head.", "extra_layers.", "ssd_heads.")
#: Official keys that only the training graph uses.
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("seg_head.aux_head.",)
#: Container keys under which training scripts nest the state dict, tried in this order.
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema")

_STEM = "conv_1.block.conv.weight"
_SENTINELS = {
    "cvnets": (_STEM, "encoder." + _STEM),
    "timm": ("stem.conv.weight",),
    "hf": ("conv_stem.convolution.weight", "mobilevit.conv_stem.convolution.weight",
           "mobilevitv2.conv_stem.convolution.weight"),
}

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did.

    Attributes:
        source: layout the checkpoint was read as (``"cvnets"``, ``"timm"``, ``"hf"`` or ``"visionkit"``).
        detection: how the layout was chosen (the sentinel key found, or "given by the caller").
        loaded: the model's state-dict keys that received a tensor.
        skipped: ``(checkpoint key, reason)`` for checkpoint tensors deliberately not used.
        missing: model keys left as they were (only with ``strict=False``).
        unexpected: checkpoint keys nothing in the model takes (only with ``strict=False``).
        mismatched: ``(model key, model shape, checkpoint shape)`` left as they were (only with ``strict=False``).
        notes: other facts (containers unwrapped, prefixes stripped, file read).
    """

    source: str
    detection: str
    loaded: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when nothing was missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"source: {self.source} ({self.detection}); loaded {len(self.loaded)} tensors"]
        reasons: dict[str, list[str]] = {}
        for key, reason in self.skipped:
            reasons.setdefault(reason, []).append(key)
        for reason, keys in reasons.items():
            lines.append(f"skipped {len(keys)} ({reason}): {_preview(keys)}")
        if self.missing:
            lines.append(f"left out, missing from the checkpoint: {_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"left out, unexpected in the checkpoint: {_preview(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} {list(a)} vs {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"left out, shape mismatch (model vs checkpoint): {_preview(shapes)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _preview(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------- reading files


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file_sha256(path: str, sha256: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    actual = _sha256_of(path)
    if actual != sha256.lower():
        raise ValueError(f"checksum mismatch for {path!r}: expected sha256 {sha256}, got {actual}")


def _download(url: str, sha256: Optional[str], progress: bool) -> str:
    """Download ``url`` once into torch.hub's checkpoint cache and return the local path."""
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(cache, exist_ok=True)
    name = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint"
    # Released files share base names (e.g. the 256 and 384 MobileViTv2 files), so the URL hash is part of the name.
    path = os.path.join(cache, f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{name}")
    cached = os.path.exists(path)
    if not cached:
        try:
            torch.hub.download_url_to_file(url, path, hash_prefix=None, progress=progress)
        except OSError as error:  # URLError and HTTPError are OSErrors; their messages do not name the URL
            raise OSError(f"could not download {url}: {error}") from error
    if sha256 is not None:
        try:
            _check_file_sha256(path, sha256)
        except ValueError as error:
            os.remove(path)
            origin = "the cached copy of" if cached else "downloaded from"
            raise ValueError(f"{error} ({origin} {url}); the cached file was removed") from None
    return path


class _UnreadableFile(ValueError):
    """The file is truncated, corrupt or no checkpoint at all (as opposed to a whole file refused for safety)."""


def _read_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then a JSON header; recognised by content when the name says nothing.
    if path.endswith(".safetensors") or (len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise _UnreadableFile(f"could not read {path!r} as safetensors (truncated or corrupt?): {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch.save writes a zip archive (b"PK"), or a pickle starting with its PROTO opcode in the legacy format;
        # other bytes (an image, an .onnx file) are no checkpoint at all.
        if not head.startswith((b"PK", b"\x80")):
            raise _UnreadableFile(f"{path!r} is not a PyTorch or safetensors checkpoint ({err})") from err
        if "weights only load failed" in str(err).lower():
            raise ValueError(
                f"refused to load {path!r}: it contains pickled Python objects beyond tensors and plain containers, "
                "which could run code. Nothing from it was executed. If you trust the file, re-save its state dict "
                "from the program that wrote it."
            ) from err
        raise _UnreadableFile(f"could not read {path!r}: truncated or corrupt pickle ({err})") from err
    except Exception as err:  # e.g. IndexError or KeyError from the unpickler on a short text file
        if not head.startswith((b"PK", b"\x80")):
            raise _UnreadableFile(
                f"{path!r} is not a PyTorch or safetensors checkpoint ({type(err).__name__}: {err})"
            ) from err
        raise _UnreadableFile(
            f"could not read {path!r}: truncated or corrupt checkpoint ({type(err).__name__}: {err})"
        ) from err


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, notes: list[str]) -> StateDict:
    path: list[str] = []
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        for name in CONTAINER_KEYS:
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                path.append(name)
                break
        else:
            found = ", ".join(repr(k) for k in list(obj)[:10])
            raise ValueError(
                "the checkpoint holds no state dict: expected a mapping of str -> Tensor, or one nested under "
                f"{', '.join(repr(k) for k in CONTAINER_KEYS)}; found keys {found}"
                + (f" inside {'/'.join(path)}" if path else "")
            )
    if not isinstance(obj, Mapping):
        raise TypeCheckError(f"the checkpoint must be a mapping of str -> Tensor, got {type(obj).__name__}")
    if path:
        notes.append(f"unwrapped container {'/'.join(repr(p) for p in path)}")
    state = dict(obj)
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix (DataParallel/DDP)")
    return state


def read_checkpoint(
    checkpoint: Union[str, os.PathLike[str], Mapping[str, Any]],
    *,
    sha256: Optional[str] = None,
    progress: bool = True,
    notes: Optional[list[str]] = None,
) -> StateDict:
    """Read a checkpoint into a flat ``{key: tensor}`` dict, safely.

    Args:
        checkpoint: a path (``.pt``, ``.pth``, ``.bin``, ``.safetensors``, or a Hugging Face ``save_pretrained``
            folder holding ``model.safetensors`` or ``pytorch_model.bin``), an ``http(s)://`` or ``file://`` URL
            (downloaded once into ``torch.hub.get_dir()/checkpoints`` with a progress bar, and from then on read
            from there, as ``torch.hub`` does: the cache is keyed by the URL, so a file that changes behind the
            same URL is not read again until its cached copy is deleted; give a path for files that change), or
            an in-memory dict.
        sha256: expected SHA-256 of the file, downloaded or local (checked on every use when given).
        progress: show a progress bar while downloading.
        notes: if given, a list that receives what was unwrapped or stripped (only when the read succeeds).

    Returns:
        The state dict, with containers (``{"state_dict": ...}``, ``{"model": ...}``, ...) and ``module.`` prefixes
        removed.

    Raises:
        TypeError: ``checkpoint`` is not a path, URL or mapping, ``sha256`` is not a string, ``progress`` is not
            a bool or ``notes`` is not a list.
        FileNotFoundError: the path does not exist.
        ValueError: the file is truncated or corrupt, holds pickled objects beyond tensors (refused; never run),
            holds no state dict, or fails its checksum; ``sha256`` is not 64 hexadecimal digits, or is given with
            an in-memory dict.

    Example:
        >>> sd = read_checkpoint({"model": {"module.fc.weight": torch.zeros(2, 3)}})
        >>> list(sd)
        ['fc.weight']
    """
    check_type("progress", progress, bool)
    if notes is not None:
        check_type("notes", notes, list)
    found: list[str] = []
    state = _read_state_dict(checkpoint, sha256, progress, found)
    if notes is not None:
        notes.extend(found)  # after the read, so a refused file leaves the caller's list as it was
    return state


def _read_state_dict(
    checkpoint: Union[str, os.PathLike[str], Mapping[str, Any]], sha256: Optional[str], progress: bool, notes: list[str]
) -> StateDict:
    """:func:`read_checkpoint`'s work, appending to ``notes`` as it goes."""
    if sha256 is not None:
        check_type("sha256", sha256, str)
        if len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
            raise ValueCheckError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}", actual_value=sha256)
    if isinstance(checkpoint, Mapping):
        if sha256 is not None:
            raise ValueCheckError("sha256 checks a file, and an in-memory state dict has none: pass the file's path")
        return _unwrap(checkpoint, notes)
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeCheckError(
            "checkpoint must be a path, an http(s):// or file:// URL, or a state dict; "
            f"got {type(checkpoint).__name__}"
        )
    location = os.fspath(checkpoint)
    if _is_url(location):
        path = _download(location, sha256, progress)
        try:
            contents = _read_file(path)
        except _UnreadableFile as error:  # not a whole file refused for safety: that one stays cached
            os.remove(path)  # a truncated download or an error page would otherwise be reused on every call
            raise ValueError(f"{error}; it was downloaded from {location} and the cached file was removed") from None
        notes.append(f"read {location} (cached at {path})")
        return _unwrap(contents, notes)
    else:
        path = location
        if os.path.isdir(path):
            found = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(path, n))]
            if not found:
                raise FileNotFoundError(
                    f"{path!r} is a folder without model.safetensors or pytorch_model.bin; give the weights file"
                )
            path = os.path.join(path, found[0])  # a Hugging Face save_pretrained folder
        if sha256 is not None:
            _check_file_sha256(path, sha256)
        notes.append(f"read {path}")
    return _unwrap(_read_file(path), notes)


# --------------------------------------------------------------------------------------------- the model side


@dataclass
class _Target:
    model: nn.Module
    backbone: MobileViTBackbone
    backbone_prefix: str
    heads: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def family(self) -> str:
        return family_of(self.backbone.config.block.attention)


def _is_head(module: nn.Module) -> bool:
    return isinstance(getattr(module, "cvnets_prefixes", None), tuple) and callable(getattr(module, "cvnets_key", None))


def _within(key: str, prefix: str) -> bool:
    """Whether ``key`` names ``prefix`` itself or something inside it (module names are dot-separated)."""
    return key == prefix or key.startswith(prefix + ".")


def _locate(model: nn.Module) -> _Target:
    check_type("model", model, nn.Module)
    backbones = [(name, m) for name, m in model.named_modules() if isinstance(m, MobileViTBackbone)]
    if not backbones:
        raise TypeCheckError(
            "model must be a MobileViTBackbone, or contain one (e.g. nn.Sequential(backbone, head) or a module with a "
            f".backbone attribute); found none in {type(model).__name__}"
        )
    if len(backbones) > 1:
        raise ValueCheckError(
            f"model contains {len(backbones)} MobileViT backbones ({', '.join(n or '<root>' for n, _ in backbones)}); "
            "load each one separately"
        )
    name, backbone = backbones[0]
    # A head is any module outside the backbone's subtree ("backbone_head" is not inside "backbone").
    heads = [(n, m) for n, m in model.named_modules() if _is_head(m) and name and not _within(n, name)]
    return _Target(model, backbone, name + "." if name else "", heads)


def _export_head_key(head: nn.Module, key: str, family: str) -> str:
    exporter = getattr(head, "cvnets_export_key", None)
    if callable(exporter):
        return exporter(key, family)
    if key.startswith(head.cvnets_prefixes) and head.cvnets_key(key) == key:  # heads that mirror the official tree
        return key
    for prefix in head.cvnets_prefixes:
        if head.cvnets_key(prefix + key) == key:
            return prefix + key
    raise ValueCheckError(
        f"{type(head).__name__} has no official key for its parameter {key!r}: give it a cvnets_export_key method"
    )


def _official_keys(target: _Target) -> dict[str, str]:
    """Official key -> model state-dict key, for every tensor of the backbone and the heads."""
    out = {k: target.backbone_prefix + k for k in target.backbone.state_dict()}
    for name, head in target.heads:
        for key in head.state_dict():
            model_key = f"{name}.{key}" if name else key
            official = _export_head_key(head, key, target.family)
            if official in out:
                raise ValueCheckError(
                    f"{out[official]!r} and {model_key!r} both take the official key {official!r}: an official "
                    "layout holds one head of each kind, so one of them would be lost; save with layout='visionkit', "
                    "which keeps every tensor, or save the heads separately"
                )
            out[official] = model_key
    return out


def _uncovered_keys(target: _Target) -> list[str]:
    """State-dict keys of the model outside its backbone and the heads that have official keys (a plain
    ``nn.Linear`` classifier, for one): the cvnets, timm and Hugging Face layouts have no keys for them."""
    if not target.backbone_prefix:  # the model is the backbone
        return []
    inside = [target.backbone_prefix[:-1], *(name for name, _ in target.heads)]
    return [key for key in target.model.state_dict() if not any(_within(key, name) for name in inside)]


# --------------------------------------------------------------------------------------------- layouts


def detect_source(state: Mapping[str, Any], model: Optional[nn.Module] = None) -> tuple[str, str]:
    """Guess the layout of a state dict from sentinel keys.

    Args:
        state: a flat state dict (see :func:`read_checkpoint`).
        model: the model it is meant for; lets the model's own (``"visionkit"``) keys be recognised.

    Returns:
        ``(source, reason)``, e.g. ``("timm", "found sentinel key 'stem.conv.weight'")``.

    Raises:
        TypeError: ``state`` is not a mapping, or ``model`` is not an ``nn.Module``.
        ValueError: no sentinel key is present.

    Example:
        >>> detect_source({"stem.conv.weight": torch.zeros(1)})
        ('timm', "found sentinel key 'stem.conv.weight'")
    """
    check_type("state", state, Mapping)
    if model is not None:
        check_type("model", model, nn.Module)
        # Checked first: a model whose backbone attribute is called "encoder" has the cvnets sentinel as its own key.
        own = model.state_dict()
        if state and all(
            key in own and getattr(value, "shape", None) == own[key].shape for key, value in state.items()
        ):
            first = next(iter(state))
            return "visionkit", f"all {len(state)} keys are the model's own, with its shapes (first {first!r})"
    for source, sentinels in _SENTINELS.items():
        for key in sentinels:
            if key in state:
                return source, f"found sentinel key {key!r}"
    if model is not None:
        target = _locate(model)
        own = target.backbone_prefix + _STEM
        if own in state:
            return "visionkit", f"found the model's own stem key {own!r}"
    for key in state:
        if key.endswith("." + _STEM):
            return "visionkit", f"found a visionkit stem key {key!r}"
    looked = [k for keys in _SENTINELS.values() for k in keys]
    raise ValueCheckError(
        f"cannot tell the checkpoint layout: none of the sentinel keys {looked} is present; first keys are "
        f"{_preview(list(state), 6)}. Pass source='cvnets' | 'timm' | 'hf' | 'visionkit' if you know it."
    )


def _strip_hf_prefix(key: str) -> str:
    for prefix in HF_BACKBONE_PREFIX.values():
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _layout_keys(official: Iterable[str], layout: str, family: str) -> dict[str, tuple[ForeignKey, ...]]:
    """Official key -> its key(s) in ``layout`` (HF keys without the model prefix); unmappable keys left out."""
    out = {}
    for key in official:
        foreign = official_to_layout(key, layout, family)
        if foreign is None:
            continue
        if layout == "hf":
            foreign = tuple(f._replace(key=_strip_hf_prefix(f.key)) for f in foreign)
        out[key] = foreign
    return out


# --------------------------------------------------------------------------------------------- variant guess


@functools.lru_cache(maxsize=None)
def _variant_shapes() -> tuple[tuple[str, str, tuple[tuple[str, tuple[int, ...]], ...]], ...]:
    """(name, block family, official backbone key -> shape) of every released variant, built on the meta device."""
    from .variants import VARIANTS  # variants imports backbone; imported lazily to keep this module light

    out = []
    for variant in VARIANTS:
        with torch.device("meta"):
            backbone = variant.build()
        shapes = tuple((k, tuple(v.shape)) for k, v in backbone.state_dict().items())
        out.append((variant.name, family_of(backbone.config.block.attention), shapes))
    return tuple(out)


def _guess_variant(state: Mapping[str, torch.Tensor], layout: str) -> Optional[str]:
    """Name the released variant whose backbone keys and shapes agree best with ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    best: tuple[float, str] = (0.0, "")
    for name, family, official_shapes in _variant_shapes():
        expected = {}
        for key, shape in official_shapes:
            for f in _layout_keys([key], layout, family).get(key, ()):
                expected[f.key] = (shape[0] // f.parts, *shape[1:]) if shape else shape
        agree = sum(1 for k, s in expected.items() if shapes.get(k) == s)
        score = agree / max(len(expected), 1)
        if score > best[0]:
            best = (score, f"{name} ({agree} of its {len(expected)} backbone tensors match)")
    return best[1] if best[0] > 0.5 else None


# --------------------------------------------------------------------------------------------- loading


@dataclass
class _Plan:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # model key -> tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # model key -> checkpoint key(s), where they differ


def _take_head_key(target: _Target, official: str) -> Optional[str]:
    """Model key of the head tensor that takes the official key ``official``, or ``None`` if no head has it."""
    for name, head in target.heads:
        if official.startswith(head.cvnets_prefixes):
            own = head.cvnets_key(official)
            if own is not None and own in head.state_dict():
                return f"{name}.{own}" if name else own
    return None


def _claimed_by_head(target: _Target, official: str) -> bool:
    """Whether one of the model's heads takes keys with the prefix of ``official`` (a key it lacks is then a
    mismatch between file and head, e.g. projection layers the head was built without, not a head to skip)."""
    return any(official.startswith(head.cvnets_prefixes) and head.cvnets_key(official) is not None
               for _, head in target.heads)


def _complete_backbone_keys(backbone: MobileViTBackbone) -> list[str]:
    """State-dict keys of the complete backbone (all stages, ``conv_1x1_exp``) with ``backbone``'s configuration."""
    with torch.device("meta"):
        complete = MobileViTBackbone(backbone.config, in_channels=backbone.in_channels, expand_output=True)
    return list(complete.state_dict())


def _folded_keys(backbone: MobileViTBackbone) -> list[str]:
    """The convolution biases a BatchNorm fold added: ``backbone`` has them, its unfused configuration has a norm
    there instead."""
    complete = set(_complete_backbone_keys(backbone))
    return [
        key for key in backbone.state_dict()
        if key not in complete and key.endswith(".block.conv.bias")
        and key.removesuffix("conv.bias") + "norm.weight" in complete
    ]


def _plan_cvnets_like(target: _Target, state: StateDict, layout: str, notes: list[str]) -> _Plan:
    plan = _Plan()
    family = target.family
    backbone_keys = list(target.backbone.state_dict())
    forward = _layout_keys(backbone_keys, layout, family)
    # Keys of the complete backbone of this configuration: those the model lacks (conv_1x1_exp when built with
    # expand_output=False, or stages a feature extractor pruned) are recognised and skipped, not "unexpected".
    # A fused backbone has convolution biases the complete unfused one lacks; its own keys count as complete too.
    full_keys = list(dict.fromkeys([*_complete_backbone_keys(target.backbone), *backbone_keys]))
    present = set(backbone_keys)
    absent = {k for k in full_keys if k not in present}
    inverse = {f.key: (official, f) for official, fs in _layout_keys(full_keys, layout, family).items() for f in fs}
    file_key = {k: k for k in state}  # key as matched -> key as written in the checkpoint
    if layout == "hf":
        file_key = {_strip_hf_prefix(k): k for k in state}
    if layout == "cvnets" and any(k.startswith("encoder.") for k in state):
        file_key = {k.removeprefix("encoder."): k for k in state}
        notes.append("stripped the 'encoder.' prefix of detection/segmentation checkpoints from backbone keys")
    state = {k: state[original] for k, original in file_key.items()}

    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in inverse:
            official, f = inverse[key]
            if official in absent:
                reason = f"{official.split('.', 1)[0]} is not part of this backbone (expand_output=False or pruned)"
                plan.skipped.append((file_key[key], reason))
            else:
                parts.setdefault(official, {})[f.part] = tensor
            continue
        candidates = head_key_to_official(key, layout)
        taken = next((own for own in (_take_head_key(target, c) for c in candidates) if own is not None), None)
        if taken is not None:
            plan.tensors[taken] = tensor
            plan.origin[taken] = file_key[key]
        elif any(_claimed_by_head(target, c) for c in candidates):
            plan.unexpected.append(file_key[key])
        elif any(c.startswith(TRAINING_ONLY_PREFIXES) for c in candidates):
            plan.skipped.append((file_key[key], "training-only auxiliary head"))
        elif any(c.startswith(OFFICIAL_HEAD_PREFIXES) for c in candidates):
            plan.skipped.append((file_key[key], "head weights; the model has no head that takes them"))
        else:
            plan.unexpected.append(file_key[key])

    for official in backbone_keys:
        model_key = target.backbone_prefix + official
        got = parts.get(official, {})
        pieces = forward.get(official, ())
        if not pieces or len(got) < len(pieces):
            plan.missing.append(model_key)
            continue
        plan.tensors[model_key] = got[0] if len(pieces) == 1 else torch.cat([got[i] for i in range(len(pieces))], 0)
        plan.origin[model_key] = " + ".join(file_key[f.key] for f in pieces)
    for name, head in target.heads:
        for key in head.state_dict():
            model_key = f"{name}.{key}" if name else key
            if model_key not in plan.tensors:
                plan.missing.append(model_key)
    plan.missing.extend(_uncovered_keys(target))  # nothing in an official file is for them
    return plan


def _plan_visionkit(target: _Target, state: StateDict) -> _Plan:
    plan = _Plan()
    own = target.model.state_dict()
    # The backbone may sit under a different prefix in the file (saved bare, loaded wrapped, or the reverse).
    prefix = next((k[: -len(_STEM)] for k in state if k.endswith(_STEM)), target.backbone_prefix)
    backbone_keys = target.backbone.state_dict()
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(prefix) and key[len(prefix) :] in backbone_keys:
            plan.tensors[target.backbone_prefix + key[len(prefix) :]] = tensor
        elif key in own and not key.startswith(target.backbone_prefix):
            plan.tensors[key] = tensor
        else:
            rest[key] = tensor
    # Heads under another name in the file (saved from nn.Sequential(features, head), loaded into SSDLite's .head).
    for name, head in target.heads:
        head_keys = set(head.state_dict())
        for file_prefix in _head_prefixes(rest, head_keys):
            taken = {k: k[len(file_prefix) + 1 :] for k in rest if k.startswith(file_prefix + ".")}
            if set(taken.values()) == head_keys and all(f"{name}.{k}" not in plan.tensors for k in head_keys):
                for file_key, own_key in taken.items():
                    plan.tensors[f"{name}.{own_key}"] = rest.pop(file_key)
                    plan.origin[f"{name}.{own_key}"] = file_key
                break
    for key in rest:
        if target.heads:
            plan.unexpected.append(key)
        else:  # a bare backbone or feature extractor: the file's heads are skipped, as in the official layouts
            plan.skipped.append((key, "outside the backbone; the model has no head that takes it"))
    plan.missing = [k for k in own if k not in plan.tensors]
    return plan


def _head_prefixes(state: Mapping[str, Any], head_keys: set[str]) -> list[str]:
    """Module names under which ``state`` might hold a head whose own state-dict keys are ``head_keys``."""
    found: dict[str, None] = {}
    for key in state:
        for head_key in head_keys:
            if key.endswith("." + head_key):
                found[key[: -len(head_key) - 1]] = None
    return list(found)


def _adapt_stem(target: _Target, plan: _Plan, notes: list[str]) -> None:
    """Fit a 3-channel (RGB/BGR) stem weight to a model built with another ``in_channels``.

    One channel takes the sum over the three (a grey image then gives what the 3-channel model gives on that image
    repeated); more channels repeat the three cyclically, scaled by ``3 / in_channels`` (for a multiple of 3, the
    image repeated that many times then gives the 3-channel activations).
    """
    key = target.backbone_prefix + _STEM
    tensor = plan.tensors.get(key)
    channels = target.backbone.in_channels
    if tensor is None or channels == 3 or tensor.dim() != 4 or tensor.shape[1] != 3:
        return
    weight = tensor.double()
    if channels == 1:
        adapted = weight.sum(1, keepdim=True)
    else:
        adapted = weight.repeat(1, -(-channels // 3), 1, 1)[:, :channels] * (3.0 / channels)
    plan.tensors[key] = adapted  # float64: official fp16 weights would round the sums; the copy casts once
    how = "summed over its 3 channels" if channels == 1 else f"its 3 channels repeated and scaled by 3/{channels}"
    notes.append(f"adapted the checkpoint's 3-channel stem to in_channels={channels} ({how})")


def _check_shapes(target: _Target, plan: _Plan) -> None:
    own = target.model.state_dict()
    for key in list(plan.tensors):
        have, want = tuple(plan.tensors[key].shape), tuple(own[key].shape)
        if have != want:
            plan.mismatched.append((key, want, have))
            del plan.tensors[key]


def _classifier_classes(target: _Target, plan: _Plan) -> Optional[int]:
    """The checkpoint's class count when what does not fit is a classifier of another size, else ``None``."""
    from .heads import ClassificationHead

    for key, _, have in plan.mismatched:
        for name, head in target.heads:
            if isinstance(head, ClassificationHead) and _within(key, name) and key.endswith("fc.weight"):
                return int(have[0])
    return None


def _failure_message(target: _Target, plan: _Plan, source: str, state: StateDict) -> str:
    lines = [f"the checkpoint ({source} layout) does not fit {target.backbone.config.name}"
             + (f" with heads {[type(h).__name__ for _, h in target.heads]}" if target.heads else "")]
    if plan.mismatched:
        described = []
        for key, want, have in plan.mismatched:
            origin = plan.origin.get(key, key)
            described.append(f"{key}{'' if origin == key else f' (checkpoint {origin})'}: {list(want)} vs {list(have)}")
        lines.append(f"{len(plan.mismatched)} shape mismatches (model vs checkpoint): {_preview(described, 6)}")
    if plan.missing:
        lines.append(f"{len(plan.missing)} missing keys: {_preview(plan.missing, 6)}")
    if plan.unexpected:
        lines.append(f"{len(plan.unexpected)} unexpected keys: {_preview(plan.unexpected, 6)}")
    if source != "visionkit":
        guess_state = state
        if source == "hf":
            guess_state = {_strip_hf_prefix(k): v for k, v in state.items()}
        if source == "cvnets":
            guess_state = {k.removeprefix("encoder."): v for k, v in state.items()}
        guess = _guess_variant(guess_state, source)
        if guess is not None:
            lines.append(f"the checkpoint looks like {guess}")
    stem = target.backbone_prefix + _STEM
    for key, want, have in plan.mismatched:
        if key == stem and len(want) == len(have) == 4 and want[1] != have[1] and want[0] == have[0]:
            lines.append(
                f"the model's stem takes {want[1]} input channels, the checkpoint's {have[1]}: build with "
                f"in_channels={have[1]}, or load with strict=False and initialise the stem yourself"
            )
    folded = set(_folded_keys(target.backbone))
    if any(key.removeprefix(target.backbone_prefix) in folded for key in plan.missing):
        lines.append(
            "the model was fused (its convolutions have biases an unfused checkpoint lacks): load the checkpoint "
            "before calling fuse()"
        )
    if any(k.endswith(".block.conv.bias") for k in plan.unexpected) and any(
        k.endswith(".block.norm.weight") for k in plan.missing
    ):
        lines.append("the checkpoint comes from a fused model (BatchNorms folded into biases): call fuse() on the "
                     "model (in eval mode) before loading it")
    classes = _classifier_classes(target, plan)
    if classes is not None:
        lines.append(
            f"the checkpoint's classifier has {classes} classes: build the head with that many "
            f"(visionkit convert: --num-classes {classes})"
        )
    elif target.heads and plan.missing and not plan.mismatched and all(
        any(_within(key, name) for name, _ in target.heads) for key in plan.missing
    ):
        lines.append(
            "the checkpoint has no weights for the model's head: load it into the backbone alone "
            "(visionkit convert: --num-classes 0)"
        )
    uncovered = _uncovered_keys(target) if source != "visionkit" else []
    if uncovered:
        lines.append(
            f"{_preview(uncovered, 3)} belong to neither the backbone nor a head with official keys (visionkit's "
            f"ClassificationHead, DeepLabV3Head, SSDLiteHead), so no {source} checkpoint has them: use those heads, "
            "or load the backbone alone and those layers separately"
        )
    if plan.missing and all("conv_1x1_exp." in k for k in plan.missing):
        lines.append(
            "official detection/segmentation backbones have no conv_1x1_exp: build with expand_output=False "
            "(visionkit convert: --no-expand)"
        )
    lines.append(
        "pass strict=False to load what fits anyway (the report lists what was left out; visionkit convert and "
        "visionkit export --weights are always strict)"
    )
    return "\n  ".join(lines)


def load_checkpoint(
    model: nn.Module,
    checkpoint: Union[str, os.PathLike[str], Mapping[str, Any]],
    *,
    source: str = "auto",
    strict: bool = True,
    sha256: Optional[str] = None,
    progress: bool = True,
) -> LoadReport:
    """Load official cvnets, timm, Hugging Face or visionkit weights into a MobileViT model.

    Everything is checked before the model is touched; on any error the model keeps every parameter and buffer
    exactly as it was. Floating tensors are cast to the model's dtypes (official files are stored in fp16 or fp32).

    Args:
        model: a :class:`~visionkit.contrib.MobileViTBackbone`, or a module containing one plus heads following the
            head <-> checkpoint contract (module docstring), e.g. ``nn.Sequential(backbone, ClassificationHead(...))``.
        checkpoint: path (``.pt``/``.pth``/``.bin``/``.safetensors``), ``http(s)://`` or ``file://`` URL, or state
            dict. Nested containers and ``module.`` prefixes are unwrapped.
        source: ``"cvnets"`` (official; ``encoder.``-prefixed detection/segmentation files too), ``"timm"``,
            ``"hf"`` (``MobileViT*`` / ``MobileViTV2*``, v1 q/k/v split by rows), ``"visionkit"`` (this model's own
            keys), or ``"auto"`` to detect from sentinel keys (the report says which was found).
        strict: raise on any missing, unexpected or mismatched tensor. From a cvnets, timm or Hugging Face file,
            the model's layers outside the backbone and visionkit's heads (a plain ``nn.Linear``) count as missing:
            those files have no keys for them. ``False`` loads what fits and lists the rest in the report; it is
            only ever the caller's choice.
        sha256: expected SHA-256 of the file (downloaded or local).
        progress: show a download progress bar.

    Returns:
        A :class:`LoadReport`. Head weights the model has no head for (e.g. the classifier of a classification
        checkpoint loaded into a bare backbone) and training-only keys (``seg_head.aux_head.*``) are skipped and
        listed there, not errors. A 3-channel stem is adapted to a model built with another ``in_channels``
        (summed for one channel, repeated and scaled by ``3 / in_channels`` for more), with a note.

    Raises:
        TypeError: ``model`` holds no MobileViT backbone, or another argument has the wrong type.
        ValueError: unreadable/unsafe/corrupt file, unknown layout, or (``strict=True``) a key or shape mismatch; the
            message names the keys and shapes and, when another released variant fits better, that variant.
        RuntimeError: copying into the model failed (the model is restored first).

    Example:
        >>> from visionkit.contrib import ClassificationHead, MobileViT
        >>> backbone = MobileViT(mode="xxs")
        >>> head = ClassificationHead(backbone.out_channels, 1000)
        >>> official = dict(backbone.state_dict(), **{"classifier.fc." + k: v for k, v in head.fc.state_dict().items()})
        >>> report = load_checkpoint(MobileViT(mode="xxs"), official)
        >>> report.source, len(report.loaded), report.skipped[0]
        ('cvnets', 309, ('classifier.fc.weight', 'head weights; the model has no head that takes them'))
    """
    target = _locate(model)
    check_type("source", source, str)
    check_choice("source", source, SOURCES)
    check_type("strict", strict, bool)
    notes: list[str] = []
    state = read_checkpoint(checkpoint, sha256=sha256, progress=progress, notes=notes)
    if source == "auto":
        source, detection = detect_source(state, model)
    else:
        detection = "given by the caller"

    plan = _plan_visionkit(target, state) if source == "visionkit" else _plan_cvnets_like(target, state, source, notes)
    _adapt_stem(target, plan, notes)
    _check_shapes(target, plan)
    if strict and (plan.missing or plan.unexpected or plan.mismatched):
        raise ValueCheckError(_failure_message(target, plan, source, state))

    own = model.state_dict()
    for key, tensor in plan.tensors.items():
        if tensor.is_floating_point() != own[key].is_floating_point():
            raise ValueCheckError(f"{key}: the checkpoint has dtype {tensor.dtype}, the model {own[key].dtype}")
    snapshot = {k: v.detach().clone() for k, v in own.items()}
    try:
        with torch.no_grad():
            for key, tensor in plan.tensors.items():
                own[key].copy_(tensor)
    except BaseException as err:  # Ctrl-C included: the model is never left half-loaded
        with torch.no_grad():
            for key, value in snapshot.items():
                own[key].copy_(value)
        if not isinstance(err, Exception):
            raise
        raise RuntimeError(f"copying the checkpoint into the model failed; the model was restored: {err}") from err
    return LoadReport(
        source=source,
        detection=detection,
        loaded=tuple(plan.tensors),
        skipped=tuple(plan.skipped),
        missing=tuple(plan.missing),
        unexpected=tuple(plan.unexpected),
        mismatched=tuple(plan.mismatched),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------- saving


def convert_state_dict(model: nn.Module, layout: str = "cvnets") -> StateDict:
    """Return the model's weights as a state dict in ``layout``.

    ``"cvnets"`` gives official keys (backbone keys carry ``encoder.`` when the model has a non-classification
    head, as official detection/segmentation files do); ``"timm"`` gives timm keys; ``"hf"`` gives the keys of
    ``MobileViT(V2)Model`` for a bare backbone and of ``MobileViT(V2)For...`` (``mobilevit.``/``mobilevitv2.``
    prefix) when there are heads, with v1's qkv split by rows; ``"visionkit"`` is ``model.state_dict()``.

    Raises:
        TypeError: ``model`` holds no MobileViT backbone.
        ValueError: unknown layout, a head that has no key in that layout (timm has no segmentation head,
            neither timm nor Hugging Face a detection head), a MobileViTv3 model in the timm or hf layout (neither
            library has v3), a fused model in an official layout, or, in an official layout, tensors it has no
            keys for: layers outside the backbone and visionkit's heads (a plain ``nn.Linear``), or two heads of
            the same kind.

    Example:
        >>> from visionkit.contrib import MobileViT
        >>> sd = convert_state_dict(MobileViT(mode="xxs"), "timm")
        >>> sd["stem.conv.weight"].shape
        torch.Size([16, 3, 3, 3])
    """
    target = _locate(model)
    check_type("layout", layout, str)
    check_choice("layout", layout, ("cvnets", "timm", "hf", "visionkit"))
    own = model.state_dict()
    if layout == "visionkit":  # contiguous: safetensors refuses e.g. the weights of a channels_last model
        return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in own.items()}
    if layout in ("timm", "hf") and target.backbone.config.block.fusion == "local":
        raise ValueCheckError(
            f"{'timm' if layout == 'timm' else 'Hugging Face transformers'} has no MobileViTv3 (its fusion layers "
            f"have other shapes than v1/v2's), so a {layout} file of {target.backbone.config.name} would load "
            "nowhere; use layout 'cvnets' or 'visionkit'"
        )
    folded = _folded_keys(target.backbone)
    if folded:
        raise ValueCheckError(
            f"this model was fused (fuse() / fuse_batchnorm): its BatchNorms live in convolution biases such as "
            f"{folded[0]!r}, which the official {layout} layout cannot hold; save it with layout='visionkit' "
            "(visionkit loads that back into a fused model), or save the model before fusing"
        )
    uncovered = _uncovered_keys(target)
    if uncovered:
        raise ValueCheckError(
            f"{len(uncovered)} tensors of the model belong to neither its backbone nor a head with official keys "
            f"(visionkit's ClassificationHead, DeepLabV3Head, SSDLiteHead): {_preview(uncovered, 4)}; the {layout} "
            "layout has no keys for them, and they would be left out: save with layout='visionkit', which keeps "
            "every tensor"
        )
    official = _official_keys(target)
    encoder = layout == "cvnets" and any(
        not set(h.cvnets_prefixes) <= {"classifier."} for _, h in target.heads
    )
    backbone_keys = set(target.backbone.state_dict())
    out: StateDict = {}
    for key, model_key in official.items():
        tensor = own[model_key].detach()
        foreign = official_to_layout(key, layout, target.family)
        if foreign is None:
            raise ValueCheckError(f"the {layout} layout has no key for {key!r} (model key {model_key!r})")
        for f in foreign:
            name = f.key
            if key in backbone_keys:
                if encoder:
                    name = "encoder." + name
                elif layout == "hf" and not target.heads:
                    name = _strip_hf_prefix(name)
            part = tensor.chunk(f.parts, 0)[f.part] if f.parts > 1 else tensor
            out[name] = part.contiguous().clone()
    return out


def save_checkpoint(model: nn.Module, path: Union[str, os.PathLike[str]], layout: str = "cvnets") -> int:
    """Write the model's weights in ``layout`` (see :func:`convert_state_dict`) to ``path``.

    ``.safetensors`` files are written with safetensors, anything else with ``torch.save`` (a plain state dict that
    ``torch.load(weights_only=True)`` reads).

    Returns:
        The number of tensors written.

    Raises:
        TypeError: ``model`` holds no MobileViT backbone or ``path`` is not a path.
        ValueError: see :func:`convert_state_dict`.
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    check_type("path", path, (str, os.PathLike))
    location = os.fspath(path)
    check_output_folder(location)
    state = convert_state_dict(model, layout)
    with replaced_on_success(location) as partial:  # a failed save leaves an earlier file whole
        if location.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state, partial)
        else:
            torch.save(state, partial)
    return len(state)


# --------------------------------------------------------------------------------------------- channel order


def _flippable_stem(model: nn.Module) -> nn.Conv2d:
    """The stem convolution of ``model``'s backbone, after checking that its input channels can be reversed."""
    conv = _locate(model).backbone.conv_1.block.conv
    if conv.in_channels != 3:
        raise ValueCheckError(f"only 3-channel stems can be flipped; this one takes {conv.in_channels} channels")
    return conv


def flip_stem_channels(model: nn.Module) -> nn.Module:
    """Reverse the input channels of the stem convolution in place (RGB <-> BGR) and return ``model``.

    Official MobileViT v1 and v3-XXS/XS/S weights expect BGR input; after this call they take RGB (and the reverse
    for RGB weights). The flipped model on an image equals the original model on the channel-reversed image.

    Raises:
        TypeError: ``model`` holds no MobileViT backbone.
        ValueError: the backbone does not take 3 input channels.

    Example:
        >>> from visionkit.contrib import MobileViT
        >>> model = MobileViT(mode="xxs").eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> reference = model(x.flip(1))
        >>> torch.allclose(flip_stem_channels(model)(x), reference, atol=1e-6)
        True
    """
    conv = _flippable_stem(model)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.flip(1))
    return model
