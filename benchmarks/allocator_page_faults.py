"""Batch-1 CPU latency and page faults under different settings of glibc's allocator.

At batch 1 a MobileViT forward allocates and frees a few MiB. With glibc's default settings, freed memory can be
handed back to the operating system, and the next call then pays a minor page fault for each 4 KiB page it touches
again. This script shows how much of a batch-1 latency that is, for visionkit and for Hugging Face transformers.

Method: each allocator setting runs in a fresh Python subprocess whose environment carries the setting (glibc reads
``MALLOC_*`` variables at start-up, which is also how a user would apply them). The child builds both models with
random weights, warms them up, then runs ``--rounds`` rounds; in each round each model makes ``--calls``
back-to-back calls, in an order that alternates between rounds. Per model it reports the median time per call over
the rounds and, from ``resource.getrusage``, the minor page faults and the kernel (system) CPU time per call.

Usage::

    python benchmarks/allocator_page_faults.py --variant mobilevit_xxs --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from visionkit.contrib.benchmark import RETAIN_HEAP_SETTINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ``visionkit benchmark --heap retain``'s mallopt settings as the environment variables glibc reads at start-up
#: (``M_MMAP_THRESHOLD`` -> ``MALLOC_MMAP_THRESHOLD_``). A fixed mmap threshold of 32 MiB keeps tensors below it in
#: the heap, and a trim threshold of 1 GiB keeps the freed heap in the process, so the next call reuses mapped pages.
RETAIN_ENVIRONMENT = {f"MALLOC_{name[2:]}_": str(value) for name, (_, value) in RETAIN_HEAP_SETTINGS.items()}

#: Allocator settings compared, as environment variables for the child process.
SETTINGS: dict[str, dict[str, str]] = {
    "glibc defaults": {},
    "retain: MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=1 GiB": RETAIN_ENVIRONMENT,
    # Either variable alone switches off glibc's dynamic thresholds; shown because it is a natural first try.
    "MALLOC_TRIM_THRESHOLD_=1 GiB alone": {"MALLOC_TRIM_THRESHOLD_": RETAIN_ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]},
}


def measure(variant: str, batch: int, size: int, calls: int, rounds: int, threads: int) -> dict[str, dict[str, float]]:
    """Time both implementations in this process and return their figures (run it in a fresh process)."""
    import torch

    from visionkit.contrib.benchmark import _build_hf
    from visionkit.contrib.variants import build_variant

    torch.set_num_threads(threads)
    models = {"visionkit": build_variant(variant).eval(), "transformers": _build_hf(variant).eval()}
    x = torch.rand(batch, 3, size, size)
    samples: dict[str, dict[str, list[float]]] = {name: {"ms": [], "faults": [], "sys_ms": []} for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            for _ in range(5):
                model(x)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                before = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                for _ in range(calls):
                    models[name](x)
                elapsed = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                samples[name]["ms"].append(elapsed / calls * 1e3)
                samples[name]["faults"].append((after.ru_minflt - before.ru_minflt) / calls)
                samples[name]["sys_ms"].append((after.ru_stime - before.ru_stime) / calls * 1e3)
    return {
        name: {key: statistics.median(values) for key, values in figures.items()} for name, figures in samples.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="mobilevit_xxs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per model and round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        seen = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}
        figures = measure(args.variant, args.batch, args.size, args.calls, args.rounds, args.threads)
        print(json.dumps({"environment": seen, "figures": figures}))
        return

    names = ("variant", "batch", "size", "calls", "rounds", "threads")
    child_args = [f"--{name}={getattr(args, name)}" for name in names]
    print(f"{args.variant}, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads; medians over "
          f"{args.rounds} rounds of {args.calls} calls; each setting in a fresh process")
    print(f"{'allocator setting':68s} {'model':12s} {'ms/call':>8s} {'faults/call':>12s} {'sys ms/call':>12s}")
    for label, variables in SETTINGS.items():
        env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
        env.update(variables)
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", *child_args],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the child for {label!r} failed:\n{result.stderr[-2000:]}")
        reply = json.loads(result.stdout.strip().splitlines()[-1])
        if reply["environment"] != variables:
            raise RuntimeError(f"the child for {label!r} saw {reply['environment']}, expected {variables}")
        figures = reply["figures"]
        for name, row in figures.items():
            print(f"{label:68s} {name:12s} {row['ms']:8.1f} {row['faults']:12.0f} {row['sys_ms']:12.2f}")
            label = ""


if __name__ == "__main__":
    main()
