"""``visionkit summary``: parameters, MACs, feature shapes and measured latency of every variant."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ._checks import check_positive_int, check_type
from .backbone import MobileViTBackbone
from .heads import ClassificationHead
from .variants import VARIANTS, Variant

__all__ = ["VariantSummary", "count_macs", "count_parameters", "register", "summarize"]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters())


def count_macs(model: nn.Module, height: int = 256, width: int = 256) -> int:
    """Multiply-accumulates of one forward pass on a :math:`(1, C, H, W)` input.

    Counted with PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode` (which reports 2 FLOPs per MAC
    for convolutions and matrix products, attention included), halved. Norms, activations and pooling are not
    counted.

    Args:
        model: a module taking one image batch; its first convolution gives the input channels :math:`C`.
        height: input height :math:`H`.
        width: input width :math:`W`.

    Returns:
        Multiply-accumulates of one forward pass in evaluation mode, on an input of the first convolution's dtype
        and device (every submodule's training flag is restored afterwards, also on error).

    Raises:
        TypeError: ``model`` is not a module, or ``height`` or ``width`` is not an int.
        ValueError: ``height`` or ``width`` is below 1, or ``model`` has no :class:`torch.nn.Conv2d` to take the
            input channels from.

    Example:
        >>> count_macs(nn.Conv2d(3, 8, 1, bias=False), 4, 4)
        384
    """
    check_type("model", model, nn.Module)
    height, width = check_positive_int("height", height), check_positive_int("width", width)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError(f"count_macs takes the input channels from the model's first Conv2d, and "
                         f"{type(model).__name__} has none")
    weight = first_conv.weight
    x = torch.zeros(1, first_conv.in_channels, height, width, dtype=weight.dtype, device=weight.device)
    return _flops_in_eval_mode(model, x) // 2


def _cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: object,
                         out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of CPU flash attention: the two matrix products of ``softmax(q k^T) v``, as PyTorch counts them for the
    CUDA attention kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: Attention kernels that :class:`~torch.utils.flop_counter.FlopCounterMode` has no formula for (torch 2.13): on CPU
#: ``F.scaled_dot_product_attention`` runs this one, and without the entry MobileViT v1's attention counted nothing.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def _flops_in_eval_mode(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs that :class:`torch.utils.flop_counter.FlopCounterMode` counts in ``model(x)`` (with a formula for CPU
    attention added), run in evaluation mode without gradients; every submodule's training flag is restored
    afterwards, also on error, so BatchNorm running statistics and the model's modes are left as they were."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for module, training in modes:  # each module's own flag, also when the forward raises
            module.training = training
    return counter.get_total_flops()


@dataclass(frozen=True)
class VariantSummary:
    """Summary row of one variant (see :func:`summarize`)."""

    variant: Variant
    backbone_params: int
    classifier_params: int
    macs: int
    level_shapes: tuple[tuple[int, int, int], ...]
    out_shape: tuple[int, int, int]
    latency_ms: float | None


def _latency_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def summarize(variant: Variant, size: int = 256, repeats: int = 5, latency: bool = True) -> VariantSummary:
    """Measure one variant at ``size`` x ``size`` (batch 1, float32, eval mode).

    Raises:
        TypeError, ValueError: ``size`` or ``repeats`` is not a positive int.
    """
    size, repeats = check_positive_int("size", size), check_positive_int("repeats", repeats)
    backbone: MobileViTBackbone = variant.build().eval()
    head = ClassificationHead(backbone.out_channels, 1000)
    x = torch.rand(1, backbone.in_channels, size, size)
    with torch.inference_mode():
        levels = backbone.forward_intermediates(x)
        out = backbone(x)
    return VariantSummary(
        variant=variant,
        backbone_params=count_parameters(backbone),
        classifier_params=count_parameters(backbone) + count_parameters(head),
        macs=count_macs(backbone, size, size),
        level_shapes=tuple(tuple(f.shape[1:]) for f in levels),  # type: ignore[misc]
        out_shape=tuple(out.shape[1:]),  # type: ignore[arg-type]
        latency_ms=_latency_ms(backbone, x, repeats) if latency else None,
    )


def format_table(rows: list[VariantSummary], size: int) -> str:
    """Render summaries as a plain-text table."""
    header = (
        f"{'variant':<20} {'backbone':>11} {'+1000-cls':>11} {'MACs@' + str(size):>10} "
        f"{'levels (C x H x W), strides 2..32':<62} {'output':<13} {'ms':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        levels = " ".join(f"{c}x{h}x{w}" for c, h, w in r.level_shapes)
        out = "x".join(str(d) for d in r.out_shape)
        ms = f"{r.latency_ms:7.1f}" if r.latency_ms is not None else "      -"
        lines.append(
            f"{r.variant.name:<20} {r.backbone_params:>11,} {r.classifier_params:>11,} "
            f"{r.macs / 1e6:>9.1f}M {levels:<62} {out:<13} {ms}"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    limits = (("--size", args.size, 1), ("--repeats", args.repeats, 1), ("--threads", args.threads, 0))
    for name, value, least in limits:
        if value < least:  # refused before any model is built (the CLI prints one error line)
            raise ValueError(f"{name} must be at least {least}, got {value}")
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in VARIANTS if args.family is None or v.family.lower() == args.family.lower()]
    rows = [summarize(v, args.size, args.repeats, latency=not args.no_latency) for v in variants]
    latency = (
        "latency not measured" if args.no_latency
        else f"latency = median of {args.repeats} runs on {torch.get_num_threads()} CPU threads"
    )
    print(
        f"visionkit summary: {len(rows)} variants, input 1x3x{args.size}x{args.size}, float32, eval mode; "
        f"MACs from torch.utils.flop_counter; {latency}, torch {torch.__version__}"
    )
    print(format_table(rows, args.size))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``summary`` command."""
    parser = subparsers.add_parser(
        "summary", help="table of every variant: parameters, MACs, shapes, latency",
        description="Print a table of every variant (or one family): parameters, MACs, feature shapes and the "
        "latency of one forward on this machine.",
    )
    parser.add_argument("--size", type=int, default=256, help="square input size (default 256)")
    parser.add_argument("--family", choices=["MobileViT", "MobileViTv2", "MobileViTv3"], help="only this family")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.set_defaults(run=_run)
