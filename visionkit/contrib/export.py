"""Export a backbone (or any model built from visionkit blocks) to ``torch.export`` and ONNX.

Both paths trace the blocks' unconditional resize (see :mod:`visionkit.contrib.blocks`), so one graph serves
every input size when ``dynamic=True``. Patches are unfolded with reshape/permute only: the ONNX graph has no
``Im2Col``/``Col2Im`` and no tensor above rank 5 (Core ML's limit).

Command line::

    visionkit export mobilevit_xxs --format onnx -o mobilevit_xxs.onnx --dynamic --opset 18
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn

from ._checks import check_choice, check_positive_int, check_type

__all__ = ["MIN_DYNAMIC_SIZE", "export_onnx", "export_program", "register"]

#: Smallest height and width a dynamic export accepts: below it the stride-32 stage has a single patch, a size
#: the symbolic tracer specialises on. Export statically (``dynamic=False``) at the size you need for smaller inputs.
MIN_DYNAMIC_SIZE = 65
_MAX_DYNAMIC_SIZE = 8192
_MAX_DYNAMIC_BATCH = 1024


def _example_input(model: nn.Module, batch: int, input_size: Sequence[int]) -> torch.Tensor:
    check_type("input_size", input_size, (tuple, list))
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {tuple(input_size)!r}")
    for value in input_size:
        check_positive_int("input_size[...]", value)
    channels = getattr(model, "in_channels", 3)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    return torch.rand(batch, channels, *input_size, device=device, dtype=dtype)


def _dynamic_shapes(input_size: Sequence[int]) -> tuple[dict[int, Any]]:
    if min(input_size) < MIN_DYNAMIC_SIZE:
        raise ValueError(
            f"a dynamic export traces at input_size >= {MIN_DYNAMIC_SIZE} on both sides, got {tuple(input_size)}"
        )
    batch = torch.export.Dim("batch", min=1, max=_MAX_DYNAMIC_BATCH)
    height = torch.export.Dim("height", min=MIN_DYNAMIC_SIZE, max=_MAX_DYNAMIC_SIZE)
    width = torch.export.Dim("width", min=MIN_DYNAMIC_SIZE, max=_MAX_DYNAMIC_SIZE)
    return ({0: batch, 2: height, 3: width},)


def export_program(
    model: nn.Module, *, dynamic: bool = True, input_size: Sequence[int] = (256, 256), batch: int = 2
) -> torch.export.ExportedProgram:
    """Export ``model`` with :func:`torch.export.export`, with dynamic batch, height and width by default.

    Size-dependent checks the symbolic tracer cannot prove (for example that a size rounded up to a multiple of
    the patch is divisible by its patch count) become runtime assertions instead of export errors; they hold
    for every size.

    Args:
        model: a model taking images :math:`(B, C, H, W)`; put it in eval mode first for inference.
        dynamic: whether batch, height and width are symbolic (height and width from
            :data:`MIN_DYNAMIC_SIZE` to 8192).
        input_size: ``(height, width)`` of the example input used for tracing.
        batch: batch size of the example input (use 2 or more when ``dynamic``).

    Returns:
        The exported program; ``program.module()`` runs it.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``input_size`` is not two positive ints (at least :data:`MIN_DYNAMIC_SIZE` when dynamic).

    Example:
        >>> from visionkit.contrib import MobileViTv2
        >>> model = MobileViTv2(0.5).eval()
        >>> program = export_program(model, dynamic=False, input_size=(64, 96), batch=1)
        >>> program.module()(torch.rand(1, 3, 64, 96)).shape
        torch.Size([1, 256, 2, 4])
    """
    check_type("model", model, nn.Module)
    check_type("dynamic", dynamic, bool)
    check_positive_int("batch", batch)
    example = _example_input(model, batch, input_size)
    dynamic_shapes = _dynamic_shapes(input_size) if dynamic else None
    return torch.export.export(
        model, (example,), dynamic_shapes=dynamic_shapes, prefer_deferred_runtime_asserts_over_guards=True
    )


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    opset: int = 18,
    dynamic: bool = False,
    input_size: Sequence[int] = (256, 256),
    batch_size: int = 1,
) -> str:
    """Write ``model`` to an ONNX file that ONNX Runtime runs.

    The model is exported in eval mode through :func:`export_program` and ``torch.onnx.export(dynamo=True)``.
    The graph has one input ``images`` :math:`(B, C, H, W)` and one output ``features``.

    Args:
        model: the model (a backbone, or a backbone with a head); it is put in eval mode.
        path: file to write.
        opset: ONNX opset version, 17 or later.
        dynamic: symbolic batch, height and width (from :data:`MIN_DYNAMIC_SIZE` up); otherwise the graph is
            fixed to batch 1 and ``input_size``.
        input_size: ``(height, width)`` to trace at (the fixed size when not ``dynamic``).
        batch_size: the fixed batch size when not ``dynamic``.

    Returns:
        The path written, as a string.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``opset`` below 17, or an invalid ``input_size``.
    """
    check_type("model", model, nn.Module)
    check_type("path", path, (str, os.PathLike))
    check_type("opset", opset, int)
    check_type("dynamic", dynamic, bool)
    if opset < 17:
        raise ValueError(f"opset must be 17 or later (LayerNormalization, GroupNorm as ops), got {opset}")
    model.eval()
    check_positive_int("batch_size", batch_size)
    program = export_program(model, dynamic=dynamic, input_size=input_size, batch=2 if dynamic else batch_size)
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            input_names=["images"],
            output_names=["features"],
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    onnx_program.save(path)
    return path


def register(subparsers: Any) -> None:
    """Add the ``export`` command to the ``visionkit`` command line."""
    parser = subparsers.add_parser(
        "export",
        help="export a variant to ONNX",
        description="Export a backbone variant (random weights unless --weights is given) to ONNX.",
    )
    parser.add_argument("model", help="variant short name, e.g. mobilevit_xxs or mobilevitv2_050")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="output format (default: onnx)")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18, at least 17)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="trace size")
    parser.add_argument("--weights", default=None, help="a state dict (.pt/.pth) to load into the backbone first")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions first")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .variants import VARIANTS, build_variant

    check_choice("model", args.model, [v.name for v in VARIANTS])
    model = build_variant(args.model).eval()
    if args.weights is not None:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    if args.fuse:
        model.fuse()
    path = export_onnx(model, args.output, opset=args.opset, dynamic=args.dynamic, input_size=tuple(args.size))
    print(f"wrote {path} ({args.model}, opset {args.opset}, {'dynamic' if args.dynamic else 'static'})")
    return 0
