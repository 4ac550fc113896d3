"""Where ONNX Runtime spends a batch-1 call: visionkit's export against transformers' export, per operator type.

For each variant, both models are exported as ``visionkit benchmark`` exports them (visionkit fused, opset 18,
256x256, batch 1; transformers through ``torch.onnx.export``) and run in ONNX Runtime with the benchmark's session
settings. The two sessions are first timed against each other in interleaved rounds (median ms per call). Then each
runs ``--calls`` calls with ONNX Runtime's profiler on, and the script adds up the kernel time of every node by its
operator type, per call: the convolutions against everything else (normalisation, activations, the patch
reshapes) shows which part of a graph an ONNX ratio comes from.

    python benchmarks/onnx_op_profile.py [--variants mobilevitv2_200 ...] [--rounds 15] [--calls 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from typing import Any, Optional

import torch

from visionkit.contrib.benchmark import _build_hf, _onnx_runner, _ort_session
from visionkit.contrib.variants import build_variant

#: Operator types reported on their own lines (those taking most time in either graph); the rest are "other".
SHOWN = 8


def kernel_ms_per_op_type(profile: list[dict[str, Any]], calls: int) -> dict[str, float]:
    """Kernel time (ms per call) of every operator type in an ONNX Runtime profile (its JSON events)."""
    totals: collections.Counter[str] = collections.Counter()
    for event in profile:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]  # microseconds
    return {op: microseconds / calls / 1e3 for op, microseconds in totals.items()}


def _profile(path: str, x: torch.Tensor, threads: int, calls: int, folder: str) -> dict[str, float]:
    session = _ort_session(path, threads, profile_prefix=os.path.join(folder, "profile"))
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(calls):
        session.run(None, feed)
    with open(session.end_profiling()) as file:
        return kernel_ms_per_op_type(json.load(file), calls)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["mobilevitv2_200"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=30, help="calls per round and implementation, and profiled")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, ONNX Runtime with {args.threads} threads, batch 1, 256x256")
    for name in args.variants:
        torch.manual_seed(0)
        x = torch.rand(1, 3, 256, 256)
        models = {"visionkit": build_variant(name).eval().fuse(), "transformers": _build_hf(name).eval()}
        with tempfile.TemporaryDirectory() as folder:
            paths = {key: os.path.join(folder, f"{key}.onnx") for key in models}
            runs = {
                key: _onnx_runner(model, x, paths[key], args.threads, visionkit=key == "visionkit")
                for key, model in models.items()
            }
            times: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(args.rounds):
                for key, run in runs.items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        run()
                    times[key].append((time.perf_counter() - start) / args.calls * 1e3)
            profiles = {key: _profile(paths[key], x, args.threads, args.calls, folder) for key in runs}
        vk_ms, hf_ms = (statistics.median(times[key]) for key in ("visionkit", "transformers"))
        print(f"\n{name}: visionkit {vk_ms:.2f} ms, transformers {hf_ms:.2f} ms per call (ratio {vk_ms / hf_ms:.2f}x)")
        print(f"kernel time per call (ms), ONNX Runtime's profiler over {args.calls} calls")
        print(f"{'operator type':>22} {'visionkit':>10} {'transformers':>13}")
        kinds = sorted({kind for profile in profiles.values() for kind in profile},
                       key=lambda kind: -max(profile.get(kind, 0.0) for profile in profiles.values()))
        shown = kinds[:SHOWN]
        for op in (*shown, "other", "total"):
            values = []
            for key in runs:
                profile = profiles[key]
                if op == "total":
                    values.append(sum(profile.values()))
                elif op == "other":
                    values.append(sum(ms for kind, ms in profile.items() if kind not in shown))
                else:
                    values.append(profile.get(op, 0.0))
            print(f"{op:>22} {values[0]:10.2f} {values[1]:13.2f}")


if __name__ == "__main__":
    main()
