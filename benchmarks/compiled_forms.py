"""Time the two forms the MobileViT blocks take only under ``torch.compile`` against the forms recorded graphs keep.

Under :func:`torch.compile` (not :func:`torch.export.export`, tracing or scripting) two things are computed
differently, with results equal to float rounding:

* the patch unfold and fold are one permutation of a rank-6 view instead of two rank-5 moves
  (:func:`visionkit.contrib.blocks.unfold_tokens`), which Inductor vectorises along the channels;
* MobileViTv2's separable attention projects the score-weighted input to keys instead of projecting every token
  (:class:`visionkit.contrib.attention.LinearSelfAttention`), nearly halving ``qkv_proj``'s multiply-adds.

Every variant is fused and compiled twice with :func:`~visionkit.contrib.compile_for_inference`: once as the
library runs it, once with both forms switched back (the switch is patched in around each of that model's calls,
so dynamo's guards see the same function at every call and never recompile). The two run in this process,
interleaved round by round, at 256x256 unless ``--size`` says otherwise. The table gives the median time per call, the ratio new / recorded forms
and the largest difference between the two outputs.

    python benchmarks/compiled_forms.py [--rounds 15] [--batch 1] [--size 256] [--threads 2] [--variants mobilevit_xxs ...]
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

from visionkit.contrib import blocks, compile_for_inference
from visionkit.contrib.attention import LinearSelfAttention
from visionkit.contrib.benchmark import DEFAULT_VARIANTS, retain_freed_memory
from visionkit.contrib.variants import build_variant


@contextlib.contextmanager
def _recorded_forms() -> Iterator[None]:
    """The rank-5 patch moves and the official qkv projection, as in exported graphs."""
    keeps_rank_five, foldable = blocks._keeps_rank_five, LinearSelfAttention._foldable_qkv_conv
    blocks._keeps_rank_five = lambda x: True
    LinearSelfAttention._foldable_qkv_conv = lambda self: None
    try:
        yield
    finally:
        blocks._keeps_rank_five, LinearSelfAttention._foldable_qkv_conv = keeps_rank_five, foldable


def _per_call_ms(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per form and round")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = parser.parse_args(argv)
    heap = retain_freed_memory()  # as the heap-kept benchmark report: no page faults from returned memory
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, heap kept ({heap}), "
          f"batch {args.batch}, {args.size}x{args.size}")
    print(f"median ms per call over {args.rounds} interleaved rounds")
    print(f"{'variant':>16} {'recorded':>9} {'compile':>8} {'ratio':>6} {'max diff':>9}")
    for name in args.variants:
        torch.compiler.reset()  # drops the previous variant's compiled graphs
        torch.manual_seed(0)
        fused = build_variant(name).eval().fuse()
        x = torch.rand(args.batch, 3, args.size, args.size)
        recorded_model = compile_for_inference(copy.deepcopy(fused))
        compile_model = compile_for_inference(copy.deepcopy(fused))

        def recorded(recorded_model: Callable[..., Any] = recorded_model) -> Any:
            with _recorded_forms():
                return recorded_model(x)

        runs = {"recorded": recorded, "compile": lambda compile_model=compile_model: compile_model(x)}
        outputs = {form: run() for form, run in runs.items()}  # compiles
        diff = (outputs["recorded"] - outputs["compile"]).abs().max().item()
        times: dict[str, list[float]] = {form: [] for form in runs}
        for run in runs.values():
            _per_call_ms(run, 3)  # warm-up
        for _ in range(args.rounds):
            for form, run in runs.items():
                times[form].append(_per_call_ms(run, args.calls))
        recorded_ms, compile_ms = (statistics.median(times[form]) for form in ("recorded", "compile"))
        print(f"{name:>16} {recorded_ms:9.2f} {compile_ms:8.2f} {compile_ms / recorded_ms:6.2f} {diff:9.1e}",
              flush=True)


if __name__ == "__main__":
    main()
