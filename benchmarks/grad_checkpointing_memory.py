"""Training peak memory with and without gradient checkpointing of the transformer layers (CPU).

Method: every configuration runs in a fresh Python subprocess, which builds the model and the batch, records its
resident set size (RSS, from ``/proc/self/statm``), then runs one training step (forward, cross-entropy on a
1000-class head, backward) and reads the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).
The reported "training peak" is peak RSS minus the RSS before the step: memory the step itself needed
(activations kept for backward, gradients, temporaries). A warm-up step on a tiny input first loads the kernels so
their one-off allocations are in the baseline, not in the measurement.

The children run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves every tensor above 128 KiB with its own
``mmap`` and returns it to the OS when freed, so RSS follows the memory actually in use. (With glibc's default
dynamic threshold, freed tensors can stay in the heap and the peak RSS overstates what the step needed.)

Usage::

    python benchmarks/grad_checkpointing_memory.py --variant mobilevit_s --size 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(variant: str, size: int, batch: int, checkpointing: bool, threads: int) -> dict:
    """Run one training step in this process and return its memory figures (call in a fresh process)."""
    import torch
    from torch import nn

    from visionkit.contrib import ClassificationHead
    from visionkit.contrib.variants import build_variant

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    backbone = build_variant(variant, grad_checkpointing=checkpointing)
    model = nn.Sequential(backbone, ClassificationHead(backbone.out_channels, 1000)).train()
    # Warm-up on a small input: kernels and allocator set-up are then part of the baseline.
    nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    model.zero_grad(set_to_none=False)
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    baseline = _rss_bytes()
    start = time.perf_counter()
    nn.functional.cross_entropy(model(x), y).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "baseline_mib": baseline / 2**20,
        "peak_mib": peak / 2**20,
        "step_mib": (peak - baseline) / 2**20,
        "step_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="mobilevit_s")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.variant, args.size, args.batch, args.child == "on", args.threads)))
        return
    results = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", setting, "--variant", args.variant]
        cmd += ["--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads)]
        env = dict(
            os.environ,
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            MALLOC_MMAP_THRESHOLD_="131072",
        )
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results[setting] = json.loads(out.strip().splitlines()[-1])
    print(
        f"{args.variant}, batch {args.batch}, {args.size}x{args.size}, float32, one training step on CPU "
        f"({args.threads} threads); memory = peak RSS of a fresh process minus its RSS before the step"
    )
    for setting, label in (("off", "without checkpointing"), ("on", "with checkpointing")):
        r = results[setting]
        print(
            f"  {label:<22} step peak {r['step_mib']:6.0f} MiB  (process peak {r['peak_mib']:.0f} MiB, "
            f"baseline {r['baseline_mib']:.0f} MiB)  step time {r['step_seconds']:.1f} s"
        )
    cut = 1 - results["on"]["step_mib"] / results["off"]["step_mib"]
    print(f"  checkpointing cuts the training peak by {cut:.1%}")


if __name__ == "__main__":
    main()
