"""Sphinx extension: model-zoo tables and figures computed from the code at build time.

Directives:

``.. visionkit-zoo:: FAMILY``
    A table of every variant of ``FAMILY`` (``MobileViT``, ``MobileViTv2`` or ``MobileViTv3``) in
    :data:`visionkit.contrib.variants.VARIANTS`: short name, constructor, parameters (backbone alone and with a
    1000-class :class:`~visionkit.contrib.ClassificationHead`), MACs at 256 x 256 (counted by
    :func:`visionkit.contrib.summary.count_macs`), channels of feature levels 0-4 (from ``feature_info``) and of
    the final map, and the released top-1 when the weights registry is available.

``.. visionkit-zoo-figure::``
    Parameters against MACs at 256 for every variant (and released top-1 against MACs when the registry is
    available), drawn with matplotlib's Agg backend into ``docs/_generated/`` and shown as a figure.

Nothing in the tables is typed by hand: rows come from :func:`zoo_rows`, which builds each model.
``tests/test_docs.py`` checks the rendered tables against independently built models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import torch

import visionkit.contrib
from visionkit.contrib.heads import ClassificationHead
from visionkit.contrib.summary import count_macs, count_parameters
from visionkit.contrib.variants import VARIANTS, Variant

#: Input side at which MACs are counted (the official classification resolution).
MACS_RESOLUTION = 256
FAMILIES = ("MobileViT", "MobileViTv2", "MobileViTv3")


@dataclass(frozen=True)
class ReleasedTop1:
    """Top-1 of one released checkpoint, as the weights registry reports it."""

    tag: str
    top1: float
    resolution: int
    channel_order: str


@dataclass(frozen=True)
class ZooRow:
    """One generated table row."""

    name: str
    family: str
    title: str
    call: str
    params: int
    params_with_head: int
    macs: int
    level_channels: tuple[int, ...]
    out_channels: int


# ---------------------------------------------------------------------------------------------------------------
# WEIGHTS REGISTRY HOOK: the only place the docs read the weights registry.
# While ``visionkit.contrib.list_weights`` does not exist (before the registry is merged) this returns ``None``
# and the tables and figures have no top-1. To make the registry mandatory, replace the ``getattr``
# fallback below by a plain ``visionkit.contrib.list_weights`` call.
# ---------------------------------------------------------------------------------------------------------------
def released_top1(variant_name: str) -> tuple[ReleasedTop1, ...]:
    """Released checkpoints of ``variant_name`` from the weights registry (:func:`visionkit.contrib.list_weights`)."""
    return tuple(
        ReleasedTop1(w.tag, float(w.top1), int(w.resolution), str(w.channel_order))
        for w in visionkit.contrib.list_weights(variant_name)
    )


@functools.lru_cache(maxsize=None)
def zoo_rows(family: Optional[str] = None) -> tuple[ZooRow, ...]:
    """Build every variant (of ``family``, or all) and measure it; cached for the life of the process."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if family is not None:
        by_name = {row.name: row for row in zoo_rows(None)}
        return tuple(by_name[v.name] for v in VARIANTS if v.family == family)
    # One thread: the counts do not depend on it, and on a busy machine (CI, docs builds next to test runs) two
    # intra-op threads spinning against other processes made this loop ~8x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tuple(_measure(variant) for variant in VARIANTS)
    finally:
        torch.set_num_threads(threads)


def _measure(variant: Variant) -> ZooRow:
    backbone = variant.build().eval()
    params = count_parameters(backbone)
    return ZooRow(
        name=variant.name,
        family=variant.family,
        title=variant.title,
        call=variant.call,
        params=params,
        params_with_head=params + count_parameters(ClassificationHead(backbone.out_channels, 1000)),
        macs=count_macs(backbone, MACS_RESOLUTION, MACS_RESOLUTION),
        level_channels=tuple(info.channels for info in backbone.feature_info),
        out_channels=backbone.out_channels,
    )


def format_macs(macs: int) -> str:
    """MACs in millions with one decimal, e.g. ``"328.9"``."""
    return f"{macs / 1e6:.1f}"


def _list_table(title: str, css_class: str, body: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :class: {css_class}", ""]
    for cells in body:
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return lines


def table_rst(family: str, rows: Optional[tuple[ZooRow, ...]] = None) -> list[str]:
    """The ``list-table`` source of ``family``'s zoo table (``rows`` defaults to :func:`zoo_rows`).

    With the weights registry, a column gives the top-1 of each variant's default (first) checkpoint, and a second
    table lists every released checkpoint.
    """
    rows = zoo_rows(family) if rows is None else rows
    released = {row.name: released_top1(row.name) for row in rows}
    header = [
        "Variant",
        "Constructor",
        "Params",
        "Params + 1000-class head",
        f"MACs at {MACS_RESOLUTION} (M)",
        "Channels, levels 0–4",
        "Output channels",
        "Top-1 (%), default weights",
    ]
    body = [header]
    for row in rows:
        cells = [
            f"{row.title} ``{row.name}``",
            f"``{row.call}``",
            f"{row.params:,}",
            f"{row.params_with_head:,}",
            format_macs(row.macs),
            ", ".join(str(c) for c in row.level_channels),
            str(row.out_channels),
            f"{released[row.name][0].top1:g}" if released[row.name] else "–",
        ]
        body.append(cells)
    lines = _list_table(f"{family} variants, measured at build time", "visionkit-zoo", body)
    checkpoints = [["Variant", "Weights tag", "Resolution", "Channel order", "Top-1 (%), ImageNet-1k val"]]
    for row in rows:
        for entry in released[row.name]:
            cells = [f"``{row.name}``", f"``{entry.tag}``", str(entry.resolution), entry.channel_order]
            checkpoints.append([*cells, f"{entry.top1:g}"])
    lines += ["", *_list_table(f"{family}: released checkpoints", "visionkit-checkpoints", checkpoints)]
    return lines


class ZooTableDirective(SphinxDirective):
    """``.. visionkit-zoo:: FAMILY`` — the generated model-zoo table of one family."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        family = self.arguments[0]
        if family not in FAMILIES:
            raise self.error(f"visionkit-zoo: family must be one of {', '.join(FAMILIES)}; got {family!r}")
        container = nodes.container(classes=["visionkit-zoo-table"])
        self.state.nested_parse(StringList(table_rst(family), source="<visionkit-zoo>"), self.content_offset, container)
        return [container]


def draw_figure(path: Path, rows: tuple[ZooRow, ...], highlight: Optional[str] = None) -> None:
    """Draw parameters vs MACs and released top-1 vs MACs for ``rows`` into ``path``.

    With ``highlight`` set to a family, the other families are drawn in grey behind it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    released = {row.name: released_top1(row.name) for row in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), squeeze=False)
    markers = {"MobileViT": "o", "MobileViTv2": "s", "MobileViTv3": "^"}
    order = sorted(FAMILIES, key=lambda family: family == highlight)  # the highlighted family is drawn last
    for family in order:
        fam = [row for row in rows if row.family == family]
        style: dict[str, Any] = {"linestyle": "none", "marker": markers[family], "markersize": 7, "label": family}
        if highlight is not None and family != highlight:
            style.update(color="0.75", zorder=1)
        elif highlight is not None:
            style.update(zorder=3)
        macs = [row.macs / 1e9 for row in fam]
        axes[0][0].plot(macs, [row.params / 1e6 for row in fam], **style)
        if highlight is None or family == highlight:
            for row in fam:
                axes[0][0].annotate(row.name.split("_", 1)[1], (row.macs / 1e9, row.params / 1e6), fontsize=7,
                                    xytext=(4, 3), textcoords="offset points")
        pts = [(row.macs / 1e9, released[row.name][0].top1) for row in fam if released[row.name]]
        axes[0][1].plot([p[0] for p in pts], [p[1] for p in pts], **style)
    axes[0][0].set_xlabel(f"MACs at {MACS_RESOLUTION}×{MACS_RESOLUTION} (G)")
    axes[0][0].set_ylabel("backbone parameters (M)")
    axes[0][0].set_title("Size against compute")
    axes[0][1].set_xlabel(f"MACs at {MACS_RESOLUTION}×{MACS_RESOLUTION} (G)")
    axes[0][1].set_ylabel("released top-1, ImageNet-1k (%)")
    axes[0][1].set_title("Accuracy of the default released checkpoint")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class ZooFigureDirective(SphinxDirective):
    """``.. visionkit-zoo-figure:: [FAMILY]`` — parameters (and top-1) against MACs for every variant.

    With a family argument that family is highlighted. The content, if any, is the caption.
    """

    optional_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        family = self.arguments[0] if self.arguments else None
        if family is not None and family not in FAMILIES:
            raise self.error(f"visionkit-zoo-figure: family must be one of {', '.join(FAMILIES)}; got {family!r}")
        file_name = f"zoo_params_macs_{(family or 'all').lower()}.png"
        target = Path(self.env.srcdir) / "_generated" / file_name
        rows = zoo_rows(None)
        draw_figure(target, rows, highlight=family)
        caption = " ".join(self.content) or "Every variant: parameters against MACs, computed at build time."
        if any(released_top1(row.name) for row in rows):
            caption += " Right: ImageNet-1k top-1 of each variant's default released checkpoint."
        source = [f".. figure:: /_generated/{file_name}", "   :alt: parameters against MACs of every variant", ""]
        source.append(f"   {caption}")
        container = nodes.container(classes=["visionkit-zoo-figure"])
        self.state.nested_parse(StringList(source, source="<visionkit-zoo-figure>"), self.content_offset, container)
        return [container]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("visionkit-zoo", ZooTableDirective)
    app.add_directive("visionkit-zoo-figure", ZooFigureDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
