"""``visionkit weights`` (list the registry) and ``visionkit convert`` (rewrite a checkpoint in another layout).

``visionkit convert`` is the explicit, checkable converter: it builds the named variant (with a classifier unless
``--num-classes 0``), loads the file with :func:`~visionkit.contrib.load_checkpoint` (strict: every tensor of the
model must be in the file, and every tensor of the file must find its place, except that a backbone-only conversion
leaves the file's head tensors out and lists them as skipped), prints the report and writes the weights in the
requested layout with :func:`~visionkit.contrib.save_checkpoint`.
"""

from __future__ import annotations

import argparse

from torch import nn

from ._checks import check_output_folder
from .checkpoint import SOURCES, load_checkpoint, save_checkpoint
from .heads import ClassificationHead
from .variants import VARIANTS, build_variant
from .weights import WeightsEntry, list_weights

__all__ = ["format_weights_details", "format_weights_table", "register"]


def format_weights_table(entries: list[WeightsEntry]) -> str:
    """Render registry entries as a fixed-width text table.

    Example:
        >>> print(format_weights_table(list_weights("mobilevit_xxs")))  # doctest: +ELLIPSIS
        weights                    res  order  params     top-1  hf hub                     timm
        mobilevit_xxs.cvnets-in1k  256  BGR    1,272,024  69.00  apple/mobilevit-xx-small   mobilevit_xxs.cvnets_in1k
    """
    header = ("weights", "res", "order", "params", "top-1", "hf hub", "timm")
    rows = [
        (w.name, str(w.resolution), w.channel_order, f"{w.num_params:,}", f"{w.top1:.2f}", w.hf_hub_id or "-",
         w.timm_name or "-")
        for w in entries
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in (header, *rows))


def format_weights_details(entries: list[WeightsEntry]) -> str:
    """Per entry: licence, where the file is, preprocessing and notes (what the table leaves out).

    Example:
        >>> print(format_weights_details(list_weights("mobilevit_xxs")))  # doctest: +ELLIPSIS
        mobilevit_xxs.cvnets-in1k
          licence: Apple ml-cvnets license (https://github.com/apple/ml-cvnets/blob/main/LICENSE)
          url: https://docs-assets.developer.apple.com/.../mobilevit_xxs.pt (direct download, no published sha256)
          preprocessing: resize 288 bilinear, centre crop 256, mean (0.0, 0.0, 0.0), std (1.0, 1.0, 1.0), BGR
          notes: OpenCV bilinear resize in the official evaluation (cvnets v0.1); ...
    """
    blocks = []
    for w in entries:
        fetch = "direct download" if w.direct_download else "download by hand"
        checksum = f"sha256 {w.sha256}" if w.sha256 else "no published sha256"
        lines = [
            w.name,
            f"  licence: {w.license}",
            f"  url: {w.url} ({fetch}, {checksum})",
            f"  preprocessing: resize {round(w.resolution / w.crop_pct)} {w.interpolation}, centre crop "
            f"{w.resolution}, mean {w.mean}, std {w.std}, {w.channel_order}",
        ]
        if w.notes:
            lines.append(f"  notes: {w.notes}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _run_weights(args: argparse.Namespace) -> int:
    entries = list_weights(args.variant)
    print(format_weights_details(entries) if args.details else format_weights_table(entries))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    check_output_folder(args.dst)  # before loading: a folder or a missing folder fails here, not after the work
    backbone = build_variant(args.variant, expand_output=not args.no_expand, in_channels=args.in_channels)
    model: nn.Module = backbone
    if args.num_classes > 0:
        model = nn.Sequential(backbone, ClassificationHead(backbone.out_channels, args.num_classes))
    report = load_checkpoint(model, args.src, source=args.source)
    print(report)
    written = save_checkpoint(model, args.dst, layout=args.to)
    print(f"wrote {args.dst} ({args.to} layout, {written} tensors)")
    return 0


def _classes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer number of classes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (backbone only) or a positive number of classes, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` and ``convert`` commands."""
    names = [v.name for v in VARIANTS]
    listing = subparsers.add_parser(
        "weights", help="list the registered pretrained checkpoints",
        description="List the registered pretrained checkpoints as a table, or with --details each one's licence, "
        "URL, preprocessing and notes.",
    )
    listing.add_argument("--variant", choices=names, help="only this variant")
    listing.add_argument("--details", action="store_true", help="licence, URL, preprocessing and notes per entry")
    listing.set_defaults(run=_run_weights)

    convert = subparsers.add_parser(
        "convert", help="rewrite a checkpoint in another layout (cvnets, timm, hf, visionkit), strictly checked"
    )
    convert.add_argument("src", help="input checkpoint: path or http(s)/file URL")
    convert.add_argument("dst", help="output path (.safetensors or anything else for torch.save)")
    convert.add_argument("--variant", required=True, choices=names, help="variant the weights belong to")
    convert.add_argument("--source", default="auto", choices=SOURCES, help="input layout (default: detect)")
    convert.add_argument("--to", default="cvnets", choices=("cvnets", "timm", "hf", "visionkit"),
                         help="output layout (default cvnets)")
    convert.add_argument("--num-classes", type=_classes, default=1000,
                         help="classifier classes; 0 converts the backbone only and leaves the file's head "
                              "tensors out (listed as skipped in the report) (default 1000)")
    convert.add_argument("--in-channels", type=int, default=3,
                         help="input channels of the backbone, e.g. 1 for a grayscale model (default: 3)")
    convert.add_argument("--no-expand", action="store_true",
                         help="backbone without conv_1x1_exp, as in detection/segmentation checkpoints")
    convert.set_defaults(run=_run_convert)
