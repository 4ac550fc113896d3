"""Time :func:`~visionkit.contrib.compile_for_inference` with Inductor's C++ wrapper against its Python wrapper.

Every variant of the benchmark is fused and compiled twice, with ``cpp_wrapper=True`` and ``cpp_wrapper=False``,
and the two run in this process, interleaved round by round, at batch 1 and 256x256 (where per-operation overhead
weighs most). The table gives the median time per call, the ratio C++ / Python and the largest difference between
the two outputs. ``compile_for_inference`` uses the C++ wrapper for CPU models because of what this script showed on
the machine we measured; run it on yours. The two compilations took about 25 s for MobileViT-XXS.

    python benchmarks/cpp_wrapper.py [--rounds 15] [--threads 2] [--variants mobilevit_xxs ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any, Callable, Optional

import torch

from visionkit.contrib import compile_for_inference
from visionkit.contrib.benchmark import DEFAULT_VARIANTS, retain_freed_memory
from visionkit.contrib.variants import build_variant


def _per_call_ms(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per wrapper and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = parser.parse_args(argv)
    heap = retain_freed_memory()  # as the heap-kept benchmark report: no page faults from returned memory
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, heap kept ({heap}), batch 1, 256x256")
    print(f"{'variant':>16} {'python ms':>10} {'c++ ms':>8} {'ratio':>6} {'max diff':>9}")
    for name in args.variants:
        torch.compiler.reset()  # drops the previous variant's compiled graphs
        torch.manual_seed(0)
        fused = build_variant(name).eval().fuse()
        x = torch.rand(1, 3, 256, 256)
        runs = {
            "python": compile_for_inference(copy.deepcopy(fused), cpp_wrapper=False),
            "cpp": compile_for_inference(copy.deepcopy(fused), cpp_wrapper=True),
        }
        outputs = {key: run(x) for key, run in runs.items()}  # compiles
        diff = max((a - b).abs().max().item() for a, b in zip(outputs["python"], outputs["cpp"]))
        times: dict[str, list[float]] = {key: [] for key in runs}
        for run in runs.values():
            _per_call_ms(lambda run=run: run(x), 3)  # warm-up
        for _ in range(args.rounds):
            for key, run in runs.items():
                times[key].append(_per_call_ms(lambda run=run: run(x), args.calls))
        python_ms, cpp_ms = (statistics.median(times[key]) for key in ("python", "cpp"))
        print(f"{name:>16} {python_ms:10.2f} {cpp_ms:8.2f} {cpp_ms / python_ms:6.2f} {diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
