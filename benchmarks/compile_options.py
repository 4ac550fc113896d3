"""Time one option of :func:`~visionkit.contrib.compile_for_inference` turned on against turned off.

Every variant of the benchmark is fused and compiled twice, with ``OPTION=False`` and ``OPTION=True``, and the two
run in this process, interleaved round by round, at batch 1 and 256x256 (where per-call overhead weighs most;
``--batch`` and ``--size`` change them). The table gives the median time per call, the ratio True / False and the
largest difference between the two outputs. The options:

* ``cpp_wrapper``: Inductor's C++ wrapper against its Python wrapper. ``compile_for_inference`` uses the C++
  wrapper for CPU models because of what this script showed on the machine we measured;
* ``model_guards``: dynamo's guards on the model's modules kept (checked at every call) against dropped, which is
  ``compile_for_inference``'s default;
* ``compile_forms``: not an argument but the three forms the model takes only under ``torch.compile`` (recorded
  graphs keep the others), against those recorded forms: the patch unfold and fold as one permutation of a rank-6
  view instead of two rank-5 moves (:func:`visionkit.contrib.blocks.unfold_tokens`), MobileViTv2's attention
  projecting its score-weighted input to keys instead of every token
  (:class:`visionkit.contrib.attention.LinearSelfAttention`), and consecutive 1x1 convolutions composed into one
  (:mod:`visionkit.contrib.composition`). For ``False`` all three are switched back around each call of that model
  (so dynamo's guards see the same functions at every call and never recompile);
* ``composed_convolutions``: the third of those forms alone, against the model without it;
* ``max_autotune``: ``mode="max-autotune"`` (Inductor times candidate kernels, among them its own C++ matrix
  products, and keeps the fastest) against the default mode. It compiles for about a minute per model.

Run it on your machine. The two compilations took about 25 s for MobileViT-XXS.

    python benchmarks/compile_options.py [--option cpp_wrapper|model_guards|compile_forms|composed_convolutions|
        max_autotune] [--rounds 15]
        [--batch 1] [--size 256] [--threads 2] [--variants mobilevit_xxs ...]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
from torch import nn

from visionkit.contrib import backbone, blocks, compile_for_inference
from visionkit.contrib.attention import LinearSelfAttention
from visionkit.contrib.benchmark import DEFAULT_VARIANTS, retain_freed_memory
from visionkit.contrib.variants import build_variant

OPTIONS = ("cpp_wrapper", "model_guards", "compile_forms", "composed_convolutions", "max_autotune")


@contextlib.contextmanager
def uncomposed_convolutions() -> Iterator[None]:
    """Every 1x1 convolution on its own, as in exported graphs, also under torch.compile."""
    composes = backbone.composes_pointwise
    backbone.composes_pointwise = lambda: False
    try:
        yield
    finally:
        backbone.composes_pointwise = composes


@contextlib.contextmanager
def recorded_forms() -> Iterator[None]:
    """The rank-5 patch moves, the official qkv projection and uncomposed convolutions, as in exported graphs, also
    under torch.compile."""
    keeps_rank_five, foldable = blocks._keeps_rank_five, LinearSelfAttention._foldable_qkv_conv
    blocks._keeps_rank_five = lambda x: True
    LinearSelfAttention._foldable_qkv_conv = lambda self: None
    try:
        with uncomposed_convolutions():
            yield
    finally:
        blocks._keeps_rank_five, LinearSelfAttention._foldable_qkv_conv = keeps_rank_five, foldable


def _compiled(fused: nn.Module, option: str, setting: bool) -> Callable[[torch.Tensor], Any]:
    """``fused`` (copied) compiled with ``option`` set to ``setting``."""
    if option == "max_autotune":
        return compile_for_inference(copy.deepcopy(fused), mode="max-autotune" if setting else None)
    if option not in ("compile_forms", "composed_convolutions"):
        return compile_for_inference(copy.deepcopy(fused), **{option: setting})
    compiled = compile_for_inference(copy.deepcopy(fused))
    if setting:
        return compiled
    without = recorded_forms if option == "compile_forms" else uncomposed_convolutions

    def with_recorded_forms(x: torch.Tensor) -> Any:
        with without():
            return compiled(x)

    return with_recorded_forms


def _per_call_ms(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--option", choices=OPTIONS, default="cpp_wrapper")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per setting and round")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = parser.parse_args(argv)
    heap = retain_freed_memory()  # as the heap-kept benchmark report: no page faults from returned memory
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, heap kept ({heap}), batch {args.batch}, "
          f"{args.size}x{args.size}")
    print(f"option {args.option}: median ms per call over {args.rounds} interleaved rounds")
    print(f"{'variant':>16} {'False ms':>9} {'True ms':>8} {'ratio':>6} {'max diff':>9}")
    for name in args.variants:
        torch.compiler.reset()  # drops the previous variant's compiled graphs
        torch.manual_seed(0)
        fused = build_variant(name).eval().fuse()
        x = torch.rand(args.batch, 3, args.size, args.size)
        runs = {setting: _compiled(fused, args.option, setting) for setting in (False, True)}
        outputs = {setting: run(x) for setting, run in runs.items()}  # compiles
        diff = max((a - b).abs().max().item() for a, b in zip(outputs[False], outputs[True]))
        times: dict[bool, list[float]] = {setting: [] for setting in runs}
        for run in runs.values():
            _per_call_ms(lambda run=run: run(x), 3)  # warm-up
        for _ in range(args.rounds):
            for setting, run in runs.items():
                times[setting].append(_per_call_ms(lambda run=run: run(x), args.calls))
        off_ms, on_ms = (statistics.median(times[setting]) for setting in (False, True))
        print(f"{name:>16} {off_ms:9.2f} {on_ms:8.2f} {on_ms / off_ms:6.2f} {diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
