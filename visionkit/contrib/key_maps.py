"""State-dict key tables between the official cvnets layout and the timm and Hugging Face layouts.

visionkit's module tree mirrors the official apple/ml-cvnets one, so an official key *is* a visionkit backbone
key. Each table below lists, in order, one row per module: its official key prefix and the equivalent prefixes in
timm (``mobilevit_*`` / ``mobilevitv2_*``) and Hugging Face transformers (``MobileViT*`` / ``MobileViTV2*``). The
first row whose official template matches a key wins; the rest of the key (the parameter name) is carried over,
renamed by the row's ``leaf`` rule:

* ``"conv_norm"``: the row names a conv + norm unit; official ``block.conv.*`` / ``block.norm.*`` become timm
  ``conv.*`` / ``bn.*`` and HF ``convolution.*`` / ``normalization.*``.
* ``"same"``: the parameter name is unchanged.
* ``"qkv"``: v1's fused ``qkv_proj`` (``[3d, d]`` and ``[3d]``); timm keeps it fused, HF splits it by rows into
  ``query`` (rows ``[0, d)``), ``key`` (``[d, 2d)``) and ``value`` (``[2d, 3d)``).

Template placeholders: ``{L}`` is the official stage number (``layer_1`` ... ``layer_5``) and ``{S}`` the 0-based
stage index ``L - 1`` used by timm and HF; ``{j}`` and ``{k}`` (block and transformer-layer indices) are copied.
A row may be restricted to some stages. Only the direction official -> other is written down; loaders invert it
over the keys a model actually has, which also resolves the final-norm index that timm and HF leave out.

The tables follow ``mobilevit-spec.md`` §8 and were checked against transformers 5.23 (the HF models built from
configs have exactly these keys; see ``tests/test_checkpoint.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

from ._checks import check_choice

__all__ = [
    "HEAD_RULES",
    "HF_BACKBONE_PREFIX",
    "LAYOUTS",
    "V1_RULES",
    "V2_RULES",
    "ForeignKey",
    "KeyRule",
    "family_of",
    "head_key_to_official",
    "official_to_layout",
]

#: The layouts a key can be written in (``"visionkit"`` is handled by the loader: it is the model's own keys).
LAYOUTS: tuple[str, ...] = ("cvnets", "timm", "hf")

#: Prefix of every backbone key in the HF layout, per block family.
HF_BACKBONE_PREFIX: dict[str, str] = {"v1": "mobilevit.", "v2": "mobilevitv2."}

_HF_QKV_PARTS = ("query", "key", "value")


@dataclass(frozen=True)
class KeyRule:
    """One row of a key table: a module's official key prefix and its timm and HF equivalents.

    Attributes:
        official: official (cvnets) prefix template.
        timm: timm prefix template (``None``: timm has no such module).
        hf: Hugging Face prefix template, without the model prefix ``mobilevit.`` / ``mobilevitv2.`` for backbone
            rows (``None``: HF has no such module).
        leaf: how the parameter name after the prefix is renamed: ``"conv_norm"``, ``"same"`` or ``"qkv"``.
        stages: official stage numbers ``{L}`` the row applies to (``None``: all).
    """

    official: str
    timm: Optional[str]
    hf: Optional[str]
    leaf: Literal["conv_norm", "same", "qkv"] = "same"
    stages: Optional[tuple[int, ...]] = None


class ForeignKey(NamedTuple):
    """A key in another layout; ``part``/``parts`` say which row block of the official tensor it holds."""

    key: str
    part: int = 0
    parts: int = 1


#: The three convs of an inverted residual: official, timm and HF names.
_MV2_CONVS = (
    ("exp_1x1", "conv1_1x1", "expand_1x1"),
    ("conv_3x3", "conv2_kxk", "conv_3x3"),
    ("red_1x1", "conv3_1x1", "reduce_1x1"),
)


def _inverted_residual_rules() -> list[KeyRule]:
    rules = []
    for official, timm, hf in _MV2_CONVS:
        # layer_1 / layer_2: a plain list of inverted residuals.
        rules.append(
            KeyRule(f"layer_{{L}}.{{j}}.block.{official}.", f"stages.{{S}}.{{j}}.{timm}.",
                    f"encoder.layer.{{S}}.layer.{{j}}.{hf}.", "conv_norm", stages=(1, 2))
        )
        # layer_3 .. layer_5: the stride-2 inverted residual in front of the MobileViT block.
        rules.append(
            KeyRule(f"layer_{{L}}.0.block.{official}.", f"stages.{{S}}.0.{timm}.",
                    f"encoder.layer.{{S}}.downsampling_layer.{hf}.", "conv_norm", stages=(3, 4, 5))
        )
    return rules


_T = "layer_{L}.1.global_rep.{k}."  # official transformer layer k of stage L
_TT = "stages.{S}.1.transformer.{k}."  # timm
_TH = "encoder.layer.{S}.transformer.layer.{k}."  # HF

#: MobileViT v1 block family (v1 and MobileViTv3-XXS/XS/S and their L2 variants).
V1_RULES: tuple[KeyRule, ...] = (
    KeyRule("conv_1.", "stem.", "conv_stem.", "conv_norm"),
    *_inverted_residual_rules(),
    KeyRule("layer_{L}.1.local_rep.conv_3x3.", "stages.{S}.1.conv_kxk.", "encoder.layer.{S}.conv_kxk.", "conv_norm"),
    KeyRule("layer_{L}.1.local_rep.conv_1x1.block.conv.", "stages.{S}.1.conv_1x1.",
            "encoder.layer.{S}.conv_1x1.convolution."),
    KeyRule(_T + "pre_norm_mha.0.", _TT + "norm1.", _TH + "layernorm_before."),
    KeyRule(_T + "pre_norm_mha.1.qkv_proj.", _TT + "attn.qkv.", _TH + "attention.attention.", "qkv"),
    KeyRule(_T + "pre_norm_mha.1.out_proj.", _TT + "attn.proj.", _TH + "attention.output.dense."),
    KeyRule(_T + "pre_norm_ffn.0.", _TT + "norm2.", _TH + "layernorm_after."),
    KeyRule(_T + "pre_norm_ffn.1.", _TT + "mlp.fc1.", _TH + "intermediate.dense."),
    KeyRule(_T + "pre_norm_ffn.4.", _TT + "mlp.fc2.", _TH + "output.dense."),
    # What is left under global_rep is the final LayerNorm (index n = number of layers).
    KeyRule(_T, "stages.{S}.1.norm.", "encoder.layer.{S}.layernorm."),
    KeyRule("layer_{L}.1.conv_proj.", "stages.{S}.1.conv_proj.", "encoder.layer.{S}.conv_projection.", "conv_norm"),
    KeyRule("layer_{L}.1.fusion.", "stages.{S}.1.conv_fusion.", "encoder.layer.{S}.fusion.", "conv_norm"),
    KeyRule("conv_1x1_exp.", "final_conv.", "conv_1x1_exp.", "conv_norm"),
)

#: MobileViT v2 block family (v2 and MobileViTv3-0.5/0.75/1.0). No tensor is reshaped in any layout.
V2_RULES: tuple[KeyRule, ...] = (
    KeyRule("conv_1.", "stem.", "conv_stem.", "conv_norm"),
    *_inverted_residual_rules(),
    KeyRule("layer_{L}.1.local_rep.0.", "stages.{S}.1.conv_kxk.", "encoder.layer.{S}.conv_kxk.", "conv_norm"),
    KeyRule("layer_{L}.1.local_rep.1.block.conv.", "stages.{S}.1.conv_1x1.", "encoder.layer.{S}.conv_1x1.convolution."),
    KeyRule(_T + "pre_norm_attn.0.", _TT + "norm1.", _TH + "layernorm_before."),
    KeyRule(_T + "pre_norm_attn.1.qkv_proj.block.conv.", _TT + "attn.qkv_proj.",
            _TH + "attention.qkv_proj.convolution."),
    KeyRule(_T + "pre_norm_attn.1.out_proj.block.conv.", _TT + "attn.out_proj.",
            _TH + "attention.out_proj.convolution."),
    KeyRule(_T + "pre_norm_ffn.0.", _TT + "norm2.", _TH + "layernorm_after."),
    KeyRule(_T + "pre_norm_ffn.1.block.conv.", _TT + "mlp.fc1.", _TH + "ffn.conv1.convolution."),
    KeyRule(_T + "pre_norm_ffn.3.block.conv.", _TT + "mlp.fc2.", _TH + "ffn.conv2.convolution."),
    KeyRule(_T, "stages.{S}.1.norm.", "encoder.layer.{S}.layernorm."),
    KeyRule("layer_{L}.1.conv_proj.", "stages.{S}.1.conv_proj.", "encoder.layer.{S}.conv_projection.", "conv_norm"),
)

#: Head keys (official keys outside the backbone). HF head keys have no model prefix. Segmentation renames follow
#: ``mobilevit-spec.md`` §8.3 (HF ``MobileViT*ForSemanticSegmentation``); timm has no segmentation or detection heads.
HEAD_RULES: tuple[KeyRule, ...] = (
    KeyRule("classifier.fc.", "head.fc.", "classifier."),
    KeyRule("classifier.1.", "head.fc.", "classifier."),
    KeyRule("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.", None,
            "segmentation_head.aspp.convs.4.conv_1x1.", "conv_norm"),
    KeyRule("seg_head.aspp.aspp_layer.convs.{j}.", None, "segmentation_head.aspp.convs.{j}.", "conv_norm"),
    KeyRule("seg_head.aspp.aspp_layer.project.", None, "segmentation_head.aspp.project.", "conv_norm"),
    KeyRule("seg_head.classifier.classifier.", None, "segmentation_head.classifier.", "conv_norm"),
    KeyRule("seg_head.classifier.", None, "segmentation_head.classifier.", "conv_norm"),
)

_LEAVES = {
    "timm": (("block.conv.", "conv."), ("block.norm.", "bn.")),
    "hf": (("block.conv.", "convolution."), ("block.norm.", "normalization.")),
}


def family_of(attention: str) -> str:
    """Key-table family of a block attention kind: ``"multi_head"`` -> ``"v1"``, ``"separable"`` -> ``"v2"``.

    Raises:
        ValueError: ``attention`` is neither.

    Example:
        >>> family_of("separable")
        'v2'
    """
    check_choice("attention", attention, _FAMILY_OF)
    return _FAMILY_OF[attention]


_FAMILY_OF = {"multi_head": "v1", "separable": "v2"}
_FAMILIES = ("v1", "v2")


_PLACEHOLDER = re.compile(r"\{(L|j|k)\}")


def _compile(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    pattern = ""
    for i, part in enumerate(parts):
        pattern += f"(?P<{part}>\\d+)" if i % 2 else re.escape(part)
    return re.compile(pattern)


_COMPILED: dict[str, re.Pattern[str]] = {}


def _match(template: str, key: str) -> Optional[re.Match[str]]:
    pattern = _COMPILED.get(template)
    if pattern is None:
        pattern = _COMPILED[template] = _compile(template)
    return pattern.match(key)


def _rename_leaf(rest: str, leaf: str, layout: str) -> str:
    if leaf != "conv_norm":
        return rest
    for official, other in _LEAVES[layout]:
        if rest.startswith(official):
            return other + rest[len(official) :]
    return rest


def official_to_layout(key: str, layout: str, family: str) -> Optional[tuple[ForeignKey, ...]]:
    """Translate one official key into ``layout``.

    Args:
        key: an official (cvnets) key, e.g. ``"layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"``.
        layout: ``"cvnets"``, ``"timm"`` or ``"hf"``.
        family: ``"v1"`` or ``"v2"`` (see :func:`family_of`); picks the table and the HF model prefix.

    Returns:
        The key(s) in ``layout`` (three for v1's qkv in HF, each holding a third of the rows), or ``None`` when no
        row of the tables covers the key in that layout.

    Raises:
        ValueError: ``layout`` or ``family`` is not one of the values above.

    Example:
        >>> official_to_layout("conv_1.block.norm.running_var", "timm", "v1")
        (ForeignKey(key='stem.bn.running_var', part=0, parts=1),)
        >>> for part in official_to_layout("layer_3.1.global_rep.1.pre_norm_mha.1.qkv_proj.bias", "hf", "v1"):
        ...     print(part.key, part.part, part.parts)
        mobilevit.encoder.layer.2.transformer.layer.1.attention.attention.query.bias 0 3
        mobilevit.encoder.layer.2.transformer.layer.1.attention.attention.key.bias 1 3
        mobilevit.encoder.layer.2.transformer.layer.1.attention.attention.value.bias 2 3
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("family", family, _FAMILIES)
    if layout == "cvnets":
        return (ForeignKey(key),)
    rules = V1_RULES if family == "v1" else V2_RULES
    for table, prefix in ((rules, HF_BACKBONE_PREFIX[family]), (HEAD_RULES, "")):
        for rule in table:
            m = _match(rule.official, key)
            if m is None:
                continue
            fields = m.groupdict()
            if "L" in fields:
                stage = int(fields["L"])
                if rule.stages is not None and stage not in rule.stages:
                    continue
                fields["S"] = str(stage - 1)
            target = rule.timm if layout == "timm" else rule.hf
            if target is None:
                return None
            head = (prefix if layout == "hf" else "") + target.format(**fields)
            rest = _rename_leaf(key[m.end() :], rule.leaf, layout)
            if rule.leaf == "qkv" and layout == "hf":
                return tuple(ForeignKey(f"{head}{name}.{rest}", i, 3) for i, name in enumerate(_HF_QKV_PARTS))
            return (ForeignKey(head + rest),)
    return None


def head_key_to_official(key: str, layout: str) -> list[str]:
    """Official keys a head key of ``layout`` can come from, in table order.

    Head keys are the one place where the inverse is ambiguous: timm's ``head.fc.*`` and HF's ``classifier.*`` are
    v1's ``classifier.fc.*`` *or* v2's ``classifier.1.*``; a loader offers every candidate to the model's heads.

    Args:
        key: a key of a timm or HF checkpoint (HF without the ``mobilevit.`` prefix, which head keys never have).
        layout: ``"cvnets"`` (returned unchanged), ``"timm"`` or ``"hf"``.

    Raises:
        ValueError: ``layout`` is not one of those.

    Example:
        >>> head_key_to_official("head.fc.bias", "timm")
        ['classifier.fc.bias', 'classifier.1.bias']
        >>> head_key_to_official("segmentation_head.aspp.convs.4.conv_1x1.normalization.running_var", "hf")
        ['seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm.running_var']
    """
    check_choice("layout", layout, LAYOUTS)
    if layout == "cvnets":
        return [key]
    found = []
    for rule in HEAD_RULES:
        template = rule.timm if layout == "timm" else rule.hf
        if template is None:
            continue
        m = _match(template, key)
        if m is None:
            continue
        rest = key[m.end() :]
        if rule.leaf == "conv_norm":
            # A conv + norm row only covers keys that continue with its conv or norm leaf.
            leaf = next(((o, f) for o, f in _LEAVES[layout] if rest.startswith(f)), None)
            if leaf is None:
                continue
            rest = leaf[0] + rest[len(leaf[1]) :]
        found.append(rule.official.format(**m.groupdict()) + rest)
    return found
