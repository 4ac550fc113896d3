"""Time ``F.linear`` (PyTorch's BLAS, MKL in the official wheels) against oneDNN's matrix product.

The shapes are the token projections of MobileViT v1 at 256x256 and batch 1: ``(tokens, in) -> out`` for the
``qkv_proj``, ``out_proj`` and feed-forward layers of the XXS and S variants. Both run in this process, interleaved
round by round; the table gives the median time per call and the ratio oneDNN / ``F.linear``, and the largest
difference between the two results. ``visionkit.contrib.linear.project`` calls oneDNN for CPU inference because of
what this script showed on the machine we measured; run it on yours.

    python benchmarks/linear_backends.py [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch
import torch.nn.functional as F

# (tokens, in_features, out_features): v1 XXS layer_3 (d=64) and layer_4 (d=80), v1 S layer_3 (d=144), at batch 1
SHAPES = [
    (1024, 64, 192), (1024, 64, 128), (1024, 128, 64), (1024, 64, 64),
    (256, 80, 240), (256, 80, 160), (256, 160, 80),
    (1024, 144, 432), (1024, 144, 288), (1024, 288, 144),
]


def _per_call_us(fn, calls: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50, help="back-to-back calls per implementation and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    onednn = torch.backends.mkldnn.is_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN available: {onednn}")
    print(f"{'tokens x in -> out':>22} {'F.linear us':>12} {'oneDNN us':>10} {'ratio':>6} {'max diff':>9}")
    for tokens, in_features, out_features in SHAPES:
        x = torch.randn(tokens, in_features)
        weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
        runs = {
            "blas": lambda: F.linear(x, weight, bias),
            "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.inference_mode():
            for fn in runs.values():
                _per_call_us(fn, args.calls)  # warm-up
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    times[name].append(_per_call_us(fn, args.calls))
            diff = (runs["onednn"]() - runs["blas"]()).abs().max().item()
        blas, onednn = statistics.median(times["blas"]), statistics.median(times["onednn"])
        label = f"{tokens} x {in_features} -> {out_features}"
        print(f"{label:>22} {blas:12.1f} {onednn:10.1f} {onednn / blas:6.2f} {diff:9.1e}")


if __name__ == "__main__":
    main()
