"""How much of a compiled batch-1 call is spent inside oneDNN's convolution kernels, against transformers' eager call.

Every variant is fused and compiled with :func:`~visionkit.contrib.compile_for_inference`, batch 1, 256x256, and
timed in this process against Hugging Face transformers' eager model of the same architecture, interleaved round by
round as in ``visionkit benchmark``. Then the compiled model makes ``--calls`` more calls with oneDNN's verbose mode
on, which prints each primitive's execution time; the script adds up the convolutions' per call.

The columns: the compiled call (median ms), the time inside convolution kernels (their bias, activation and
residual-add post-ops included), its share of the call, what is left for everything else (Inductor's own kernels
for the norms, softmax and reshapes, and each convolution's set-up outside its kernel), the number of convolutions
per call, transformers' eager call, and two ratios to it: the compiled call's, and the one the convolution kernels
alone would give. The second is a floor for this oneDNN build: a compiled call cannot get below it without faster
convolution kernels.

    python benchmarks/convolution_share.py [--variants mobilevitv2_100 ...] [--rounds 9] [--calls 10] [--threads 2]
        [--heap default|retain]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch

from visionkit.contrib import compile_for_inference
from visionkit.contrib.benchmark import DEFAULT_VARIANTS, _build_hf, retain_freed_memory
from visionkit.contrib.variants import build_variant


def _per_call_ms(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


@contextlib.contextmanager
def _stdout_to(path: str) -> Iterator[None]:
    """Send file descriptor 1 to ``path``: oneDNN prints its verbose lines with C's stdio, not through Python."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def convolution_times(lines: list[str]) -> list[float]:
    """Execution times (ms) of the convolution primitives in oneDNN verbose output, in the order they ran.

    An execution line reads ``onednn_verbose,[timestamp,]v1,primitive,exec,cpu,convolution,<kernel>,...,<ms>``.
    """
    times = []
    for line in lines:
        fields = line.strip().split(",")
        if fields[0] != "onednn_verbose" or "exec" not in fields or "primitive" not in fields:
            continue
        kind = fields[fields.index("exec") + 2]
        if kind == "convolution":
            times.append(float(fields[-1]))
    return times


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per implementation and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heap", choices=("default", "retain"), default="default")
    args = parser.parse_args(argv)
    if not torch.backends.mkldnn.is_available():
        raise SystemExit("this PyTorch build has no oneDNN, so there are no oneDNN convolutions to time")
    heap = retain_freed_memory() if args.heap == "retain" else "glibc defaults unless the environment sets them"
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, heap: {heap}, batch 1, 256x256")
    print(f"compiled: fused + compile_for_inference; hf: transformers eager; median ms over {args.rounds} rounds")
    print(f"{'variant':>16} {'compiled':>9} {'in convs':>9} {'share':>6} {'other':>6} {'convs':>6} {'hf':>7} "
          f"{'comp/hf':>8} {'convs/hf':>9}")
    for name in args.variants:
        torch.compiler.reset()  # drops the previous variant's compiled graphs
        torch.manual_seed(0)
        compiled = compile_for_inference(build_variant(name).eval().fuse())
        hf = _build_hf(name).eval()
        x = torch.rand(1, 3, 256, 256)
        with torch.no_grad():
            runs = {"compiled": lambda: compiled(x), "hf": lambda: hf(x)}
            for run in runs.values():
                _per_call_ms(run, 3)  # compiles, then warms up
            times: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(args.rounds):
                for key, run in runs.items():
                    times[key].append(_per_call_ms(run, args.calls))
        with tempfile.TemporaryDirectory() as folder:
            log = os.path.join(folder, "onednn_verbose.txt")
            with _stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(args.calls):
                    compiled(x)
            with open(log) as lines:
                conv_times = convolution_times(lines.readlines())
        if not conv_times:
            raise SystemExit("oneDNN printed no convolution executions: is its verbose mode available in this build?")
        compiled_ms, hf_ms = (statistics.median(times[key]) for key in ("compiled", "hf"))
        conv_ms = sum(conv_times) / args.calls
        print(f"{name:>16} {compiled_ms:9.2f} {conv_ms:9.2f} {conv_ms / compiled_ms:6.0%} "
              f"{compiled_ms - conv_ms:6.2f} {len(conv_times) / args.calls:6.4g} {hf_ms:7.2f} "
              f"{compiled_ms / hf_ms:7.2f}x {conv_ms / hf_ms:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
