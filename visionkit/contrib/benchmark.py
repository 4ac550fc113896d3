"""Latency and memory benchmark: visionkit against Hugging Face transformers, kornia and timm (``visionkit benchmark``).

Everything runs in one process. For each variant and batch size every implementation is built, warmed up
(``torch.compile`` compiles and ONNX models are exported then), and timed round by round, every implementation
once per round in a rotating order, so that load from other processes hits all of them alike. Within its turn an
implementation runs back-to-back calls filling at least ``--min-round-ms`` (a count fixed before the rounds), and
the sample is the turn's time per call. The table reports medians and ratios to transformers measured in the same
run; a second table gives the spread of the per-round ratios (:func:`round_ratios`), and a third the compute floor
of each row: the operations of one forward (:func:`forward_flops`) at the best rate the machine reached on a large
matrix product or 1x1 convolution (:func:`matrix_rate`), the time below which no implementation of the same
arithmetic can go. It is a script, not a test: it asserts nothing about speed.

Implementations (``--impls``):

* ``vk_eager``: the visionkit backbone as built; ``vk_fused``: after :meth:`MobileViTBackbone.fuse`;
  ``vk_compiled``: fused, then :func:`compile_for_inference` (``torch.compile(fullgraph=True)`` with frozen
  parameters, channels-last weights and, on the CPU, Inductor's C++ wrapper); ``vk_aoti``: fused, compiled ahead of time by
  :func:`export_aoti_package` (static shape) and run from the package; ``vk_onnx``: :func:`export_onnx` (static)
  run by ONNX Runtime;
* ``hf_eager``: ``transformers.MobileViTModel`` / ``MobileViTV2Model`` configured to the same architecture
  (same parameter count; random weights, latency does not depend on them); ``hf_onnx``: its
  ``torch.onnx.export`` run by ONNX Runtime;
* ``kornia``: ``kornia.models.vit_mobile.MobileViT`` (v1 only; a different, smaller architecture, shown for
  reference); ``timm``: ``timm.create_model(..., features_only=True)`` when timm can be imported.

CPU latencies depend on the C allocator as well as on the model. With glibc's defaults, memory freed at the end
of a call can go back to the operating system, and the next call pays a minor page fault for every 4 KiB page it
touches again (``benchmarks/allocator_page_faults.py`` shows thousands of faults and several milliseconds of kernel
time per batch-1 call of transformers' model). The table therefore lists minor page faults per call, and
``--heap retain`` asks glibc (``mallopt``) to keep freed memory in the process, as jemalloc and tcmalloc do, so
that the rows can also be compared without the page-fault path.

Run ``python benchmarks/benchmark.py --help`` (or ``visionkit benchmark --help``) for the options;
``--quick`` measures one variant for a few rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import importlib.util
import io
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import nn

from ._checks import check_output_folder
from ._files import replaced_on_success

__all__ = [
    "DEFAULT_VARIANTS",
    "IMPLEMENTATIONS",
    "RETAIN_HEAP_SETTINGS",
    "calls_per_round",
    "forward_flops",
    "main",
    "matrix_rate",
    "peak_memory",
    "register",
    "retain_freed_memory",
    "round_ratios",
]

#: Variants measured by default (short names of :data:`visionkit.contrib.variants.VARIANTS`).
DEFAULT_VARIANTS = (
    "mobilevit_xxs",
    "mobilevit_xs",
    "mobilevit_s",
    "mobilevitv2_050",
    "mobilevitv2_100",
    "mobilevitv2_200",
)
#: Implementation keys, in table order.
IMPLEMENTATIONS = (
    "vk_eager", "vk_fused", "vk_compiled", "vk_aoti", "vk_onnx", "hf_eager", "hf_onnx", "kornia", "timm"
)

# transformers configuration of each v1 variant: (hidden_sizes, neck_hidden_sizes, expand_ratio).
_HF_V1 = {
    "xxs": ([64, 80, 96], [16, 16, 24, 48, 64, 80, 320], 2.0),
    "xs": ([96, 120, 144], [16, 32, 48, 64, 80, 96, 384], 4.0),
    "s": ([144, 192, 240], [16, 32, 64, 96, 128, 160, 640], 4.0),
}
_TIMM_NAMES = {"mobilevit_xxs": "mobilevit_xxs", "mobilevit_xs": "mobilevit_xs", "mobilevit_s": "mobilevit_s"}


# implementations that run a float32 artefact (an ONNX file, an AOTInductor package) whatever --autocast says
_FLOAT32_ONLY = ("vk_aoti", "vk_onnx", "hf_onnx")

#: ``--autocast`` choices: the dtype PyTorch implementations run under ``torch.autocast`` (``None``: float32).
AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _under_autocast(fn: Callable[[], Any], device: torch.device, dtype: Optional[torch.dtype]) -> Callable[[], Any]:
    """``fn`` run under ``torch.autocast(device, dtype)``; ``fn`` itself when ``dtype`` is ``None``."""
    if dtype is None:
        return fn

    def run() -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return run


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name, with its family and model numbers and widest vector extension where Linux reports them.

    Virtual machines often show only a brand ("AMD EPYC"); the numbers tell processor generations apart (the same
    code can measure differently on two of them).
    """
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break  # the end of the first processor's block
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = fields.get("flags", "").split()
    vector = next((label for flag, label in _VECTOR_EXTENSIONS if flag in flags), None)
    if vector:
        details.append(vector)
    return f"{name} ({', '.join(details)})" if details else name


# /proc/cpuinfo flags, widest first.
_VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: ``--heap retain``: glibc ``mallopt`` parameters (M_MMAP_THRESHOLD is -3, M_TRIM_THRESHOLD is -1) and values.
#: Blocks below 32 MiB (glibc's largest allowed mmap threshold) come from the heap, and up to 1 GiB of freed heap
#: stays in the process instead of being returned to the operating system.
RETAIN_HEAP_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 1 << 30)}


def retain_freed_memory() -> str:
    """Ask glibc to keep freed memory in the process (the ``--heap retain`` option); returns a description.

    This changes the whole process's allocator, which is why only the benchmark does it, and only when asked.
    Outside the benchmark the same effect comes from the environment, e.g.
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``, or from preloading jemalloc or tcmalloc.

    Raises:
        OSError: the C library is not glibc (no ``mallopt``) or refused a setting.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError) as error:
        raise OSError(f"--heap retain needs glibc's mallopt, which this C library lacks ({error})") from None
    for name, (param, value) in RETAIN_HEAP_SETTINGS.items():
        if mallopt(param, value) != 1:
            raise OSError(f"glibc refused mallopt({name}, {value})")
    return ", ".join(f"{name} {value >> 20} MiB" for name, (_, value) in RETAIN_HEAP_SETTINGS.items())


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of ``model(x)`` in its convolutions, matrix products and attention.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, two per multiply-add. Elementwise operations,
    normalisation, softmax and data movement are not counted, so the count is a lower bound on the work. The
    forward runs in evaluation mode (the count is the same; a model in training mode keeps its BatchNorm running
    statistics and gets its modes back).

    Example:
        >>> forward_flops(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.rand(1, 3, 16, 16))  # 2 * 3 * 8 * 9 * 256
        110592
    """
    from .summary import _flops_in_eval_mode

    return _flops_in_eval_mode(model, x)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):  # the first two calls warm up
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def matrix_rate(device: torch.device, dtype: Optional[torch.dtype] = None, repeats: int = 10) -> dict[str, float]:
    """Floating-point operations per second that ``device`` attains on two large, well-shaped products.

    The probes are a 2048x2048 matrix product and a 1x1 convolution of a channels-last (1, 512, 64, 64) input to
    512 channels (the kind of layer that dominates the larger MobileViTs), each the median of ``repeats`` timed
    calls after two warm-up calls, run under ``torch.autocast`` with ``dtype`` unless it is ``None``. The larger
    of the two is what :func:`forward_flops` is divided by for a compute floor: no implementation of the same
    arithmetic can take less time than its counted operations at that rate.

    Returns:
        Operations per second of each probe, keyed ``"matmul"`` and ``"conv1x1"``.

    Raises:
        ValueError: ``repeats`` is less than 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    n, channels, size = 2048, 512, 64
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    x = torch.rand(1, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(channels, channels, 1, 1, device=device)
    probes = {
        "matmul": (lambda: a @ b, 2 * n**3),
        "conv1x1": (lambda: nn.functional.conv2d(x, weight), 2 * channels * channels * size * size),
    }
    rates = {}
    with torch.inference_mode():
        for key, (fn, flops) in probes.items():
            rates[key] = flops / _median_seconds(_under_autocast(fn, device, dtype), device, repeats)
    return rates


def _minor_faults() -> Optional[int]:
    """Minor page faults of this process so far (``None`` where ``resource`` is missing, e.g. on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak tensor memory in bytes allocated while ``fn()`` runs, above what was live before.

    On CUDA this is ``torch.cuda.max_memory_allocated``. On CPU it is the running sum of every allocation and free
    the profiler records (its ``[memory]`` events, in time order), so buffers that an operator allocates and frees
    inside itself count too, such as the attention matrix of a non-fused ``scaled_dot_product_attention``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    # The per-operator totals of prof.events() net out what an operator frees before it returns; the raw
    # allocation records do not.
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        current += record.nbytes()
        peak = max(peak, current)
    return peak


class _Output(nn.Module):
    """Wrap a transformers model so that it returns the last hidden state tensor only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state


def _build_hf(name: str) -> nn.Module:
    from transformers import MobileViTConfig, MobileViTModel, MobileViTV2Config, MobileViTV2Model

    from .variants import get_variant

    variant = get_variant(name)
    if variant.family == "MobileViT":
        hidden, neck, expand = _HF_V1[name.split("_", 1)[1]]
        config = MobileViTConfig(hidden_sizes=hidden, neck_hidden_sizes=neck, expand_ratio=expand)
        return _Output(MobileViTModel(config, expand_output=True))
    if variant.family == "MobileViTv2":
        width = int(name.rsplit("_", 1)[1]) / 100
        return _Output(MobileViTV2Model(MobileViTV2Config(width_multiplier=width), expand_output=True))
    raise ValueError(f"transformers has no {variant.family}")


def _ort_session(path: str, threads: int, profile_prefix: Optional[str] = None) -> Any:
    """An ONNX Runtime CPU session with the benchmark's settings; ``profile_prefix`` turns its profiler on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle ONNX Runtime workers otherwise spin for a while after each run and slow whichever implementation the
    # interleaved rounds run next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    exporter_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes, one per export
    stack.callback(exporter_log.setLevel, exporter_log.level)
    exporter_log.setLevel(logging.ERROR)
    return stack


def _onnx_runner(model: nn.Module, x: torch.Tensor, path: str, threads: int, visionkit: bool) -> Callable[[], Any]:
    model = model.eval()
    with _quiet():
        if visionkit:
            from .export import export_onnx

            export_onnx(model, path, opset=18, input_size=tuple(x.shape[-2:]), batch_size=x.shape[0])
        else:
            try:
                torch.onnx.export(model, (x,), path, opset_version=18, dynamo=True, input_names=["images"])
            except Exception:  # fall back to the TorchScript-based exporter
                torch.onnx.export(model, (x,), path, opset_version=18, dynamo=False, input_names=["images"])
    session = _ort_session(path, threads)
    name = session.get_inputs()[0].name
    feed = {name: x.cpu().numpy()}
    return lambda: session.run(None, feed)


def _runners(
    name: str, batch: int, args: argparse.Namespace, device: torch.device, tmp: str
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """Build every requested implementation; returns the callables and, per failed implementation, why."""
    from .compiled import compile_for_inference
    from .variants import build_variant, get_variant

    family = get_variant(name).family
    x = torch.rand(batch, 3, args.size, args.size, device=device)
    runners: dict[str, Callable[[], Any]] = {}
    skipped: dict[str, str] = {}

    def add(key: str, build: Callable[[], Callable[[], Any]]) -> None:
        if key not in args.impls:
            return
        try:
            runner = build()
            if key not in _FLOAT32_ONLY:
                runner = _under_autocast(runner, device, AUTOCAST_DTYPES[args.autocast])
            with torch.inference_mode():
                runner()  # warm-up (compiles / creates kernels)
                runner()
            runners[key] = runner
        except Exception as error:  # a missing or failing peer is reported, not fatal
            skipped[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"

    torch.manual_seed(0)
    eager = build_variant(name).eval().to(device)
    fused = copy.deepcopy(eager).fuse()
    add("vk_eager", lambda: lambda: eager(x))
    add("vk_fused", lambda: lambda: fused(x))

    def compiled() -> Callable[[], Any]:
        # Each compile_for_inference keeps its own graphs; the reset drops those of the previous variants and batches.
        torch.compiler.reset()
        model = compile_for_inference(copy.deepcopy(fused), mode=args.compile_mode)
        return lambda: model(x)

    add("vk_compiled", compiled)

    def aoti() -> Callable[[], Any]:
        from .export import export_aoti_package, load_aoti_package

        with _quiet():
            path = export_aoti_package(
                fused, os.path.join(tmp, "vk.pt2"), input_size=tuple(x.shape[-2:]), batch_size=x.shape[0]
            )
        package = load_aoti_package(path)
        return lambda: package(x)

    add("vk_aoti", aoti)
    if device.type == "cpu":
        add("vk_onnx", lambda: _onnx_runner(fused, x, os.path.join(tmp, "vk.onnx"), args.threads, True))
    else:
        skipped.update({k: "ONNX Runtime rows are CPU only" for k in ("vk_onnx", "hf_onnx") if k in args.impls})
    if family in ("MobileViT", "MobileViTv2"):
        hf_models: list[nn.Module] = []  # built once, and only when a transformers row is asked for

        def hf_model() -> nn.Module:
            if not hf_models:
                hf_models.append(_build_hf(name).eval().to(device))
            return hf_models[0]

        add("hf_eager", lambda: (lambda model: lambda: model(x))(hf_model()))
        if device.type == "cpu":
            add("hf_onnx", lambda: _onnx_runner(hf_model(), x, os.path.join(tmp, "hf.onnx"), args.threads, False))
    else:
        skipped["hf_eager"] = skipped["hf_onnx"] = "transformers has no MobileViTv3"
    if family == "MobileViT":

        def kornia_runner() -> Callable[[], Any]:
            from kornia.models.vit_mobile import MobileViT as KorniaMobileViT

            model = KorniaMobileViT(mode=name.split("_", 1)[1]).eval().to(device)
            return lambda: model(x)

        add("kornia", kornia_runner)
    elif "kornia" in args.impls:
        skipped["kornia"] = "kornia has MobileViT v1 only"

    def timm_runner() -> Callable[[], Any]:
        import timm  # type: ignore[import-not-found]

        model = timm.create_model(_TIMM_NAMES.get(name, name), pretrained=False, features_only=True).eval().to(device)
        return lambda: model(x)

    add("timm", timm_runner)
    return runners, skipped


def calls_per_round(seconds_per_call: float, min_round_seconds: float) -> int:
    """How many back-to-back calls fill ``min_round_seconds`` (at least one).

    Example:
        >>> calls_per_round(0.012, 0.1), calls_per_round(0.3, 0.1), calls_per_round(0.01, 0.0)
        (9, 1, 1)
    """
    if seconds_per_call <= 0:
        raise ValueError(f"seconds_per_call must be positive, got {seconds_per_call}")
    return max(1, math.ceil(min_round_seconds / seconds_per_call))


def round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """Median, lower and upper quartile of the per-round ratios ``numerator[r] / denominator[r]``.

    The rounds interleave the implementations, so both times of one round saw the same load on the machine; the
    spread of these ratios shows how far a ratio of medians can be trusted.

    Args:
        numerator: seconds per call in each round (e.g. visionkit's).
        denominator: seconds per call in the same rounds (e.g. transformers').

    Raises:
        ValueError: the sequences are empty, differ in length, or hold a time that is not positive.

    Example:
        >>> round_ratios([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0])
        (1.5, 1.0, 2.0)
    """
    if not numerator or len(numerator) != len(denominator):
        raise ValueError(
            f"expected two equally long, non-empty sequences of round times, got {len(numerator)} and "
            f"{len(denominator)}"
        )
    if min(*numerator, *denominator) <= 0:
        raise ValueError(f"round times must be positive, got {list(numerator)} and {list(denominator)}")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    lower, median, upper = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, lower, upper


def _time_rounds(
    runners: dict[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    min_round_seconds: float = 0.0,
    faults: Optional[dict[str, float]] = None,
    samples_out: Optional[dict[str, list[float]]] = None,
) -> dict[str, float]:
    """Median seconds per call over ``rounds`` rounds, the order rotated every round.

    In each round an implementation runs as many back-to-back calls as fill ``min_round_seconds`` (the count is
    fixed per implementation from one timed call before the rounds), so that one call of a few milliseconds is
    not the whole sample; the sample is the round's time divided by the calls. When ``faults`` is a dict it
    receives, per implementation, the median minor page faults per call (where the platform counts them); when
    ``samples_out`` is a dict it receives every round's seconds per call, in round order.
    """
    keys = list(runners)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    fault_samples: dict[str, list[float]] = {k: [] for k in keys}
    calls: dict[str, int] = {}
    with torch.inference_mode():
        for key in keys:
            _sync(device)
            start = time.perf_counter()
            runners[key]()
            _sync(device)
            calls[key] = calls_per_round(max(time.perf_counter() - start, 1e-6), min_round_seconds)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                _sync(device)
                faults_before = _minor_faults()
                start = time.perf_counter()
                for _ in range(calls[key]):
                    runners[key]()
                _sync(device)
                samples[key].append((time.perf_counter() - start) / calls[key])
                faults_after = _minor_faults()
                if faults_before is not None and faults_after is not None:
                    fault_samples[key].append((faults_after - faults_before) / calls[key])
    if faults is not None:
        faults.update({k: statistics.median(v) for k, v in fault_samples.items() if v})
    if samples_out is not None:
        samples_out.update(samples)
    return {k: statistics.median(v) for k, v in samples.items()}


def _fmt_ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


#: The ratio columns: (visionkit implementation, transformers implementation it is divided by).
_RATIO_PAIRS = (
    ("vk_eager", "hf_eager"),
    ("vk_fused", "hf_eager"),
    ("vk_compiled", "hf_eager"),
    ("vk_aoti", "hf_eager"),
    ("vk_onnx", "hf_onnx"),
)
_RATIO_LABELS = ("eager/hf", "fused/hf", "comp/hf", "aoti/hf", "onnx/hf")


def _fmt_spread(samples: dict[str, list[float]], numerator: str, denominator: str) -> str:
    if numerator not in samples or denominator not in samples:
        return "-"
    median, lower, upper = round_ratios(samples[numerator], samples[denominator])
    return f"{median:.2f} [{lower:.2f}, {upper:.2f}]"


def _latency_table(args: argparse.Namespace, device: torch.device, out: Callable[[str], None]) -> None:
    cols = [k for k in IMPLEMENTATIONS if k in args.impls]
    out(
        f"\n## Inference latency, {args.size}x{args.size}, median ms per call over {args.rounds} interleaved rounds"
        f" (each round: at least {args.min_round_ms:g} ms of back-to-back calls per implementation)"
    )
    out("ratios: " + ", ".join(f"{vk.removeprefix('vk_')}/{hf}" for vk, hf in _RATIO_PAIRS))
    header = f"{'variant':16s} {'B':>2s} " + " ".join(f"{c:>11s}" for c in cols)
    header += "".join(f" {label:>9s}" for label in _RATIO_LABELS)
    out(header)
    notes: dict[str, str] = {}
    # per timed row: variant, batch, median seconds, page faults per call and per-round ratio cells
    rows: list[tuple[str, int, dict[str, float], dict[str, float], list[str]]] = []
    for name in args.variants:
        for batch in args.batches:
            with tempfile.TemporaryDirectory() as tmp:
                runners, skipped = _runners(name, batch, args, device, tmp)
                faults: dict[str, float] = {}
                samples: dict[str, list[float]] = {}
                medians = _time_rounds(runners, args.rounds, device, args.min_round_ms / 1000, faults, samples)
            rows.append((name, batch, medians, faults, [_fmt_spread(samples, vk, hf) for vk, hf in _RATIO_PAIRS]))
            for key, why in skipped.items():
                notes.setdefault(f"{key}: {why}", name)
            line = f"{name:16s} {batch:2d} " + " ".join(f"{_fmt_ms(medians.get(c)):>11s}" for c in cols)
            line += "".join(f" {_fmt_ratio(medians.get(vk), medians.get(hf)):>9s}" for vk, hf in _RATIO_PAIRS)
            out(line)
            del runners
    for note, first in notes.items():
        out(f"  not measured: {note} (first seen at {first})")
    if any(faults for *_, faults, _ in rows):
        out("\nminor page faults per call (median over the rounds: pages the OS had to map on first touch)")
        out(f"{'variant':16s} {'B':>2s} " + " ".join(f"{c:>11s}" for c in cols))
        for name, batch, _, faults, _ in rows:
            cells = ("-" if faults.get(c) is None else f"{faults[c]:.0f}" for c in cols)
            out(f"{name:16s} {batch:2d} " + " ".join(f"{cell:>11s}" for cell in cells))
    if any(cell != "-" for *_, cells in rows for cell in cells):
        out("\nper-round ratios (each round's visionkit time over transformers' in the same round): median "
            "[lower quartile, upper quartile]")
        out(f"{'variant':16s} {'B':>2s} " + " ".join(f"{label:>18s}" for label in _RATIO_LABELS))
        for name, batch, *_, cells in rows:
            out(f"{name:16s} {batch:2d} " + " ".join(f"{cell:>18s}" for cell in cells))
    # after all the timing, so that counting (a model built and run per row) cannot disturb the timed rows
    _floor_table(rows, args.size, device, AUTOCAST_DTYPES[args.autocast], out)


def _variant_flops(name: str, batch: int, size: int, device: torch.device) -> int:
    from .variants import build_variant

    return forward_flops(build_variant(name).eval().to(device), torch.rand(batch, 3, size, size, device=device))


def _floor_table(
    rows: Sequence[tuple[Any, ...]],
    size: int,
    device: torch.device,
    dtype: Optional[torch.dtype],
    out: Callable[[str], None],
) -> None:
    """The compute floor of each timed row (variant, batch, median seconds, ...): its counted operations at the best
    rate :func:`matrix_rate` measured."""
    rates = matrix_rate(device, dtype)
    rate = max(rates.values())
    probes = ", ".join(f"{key} {value / 1e9:.1f}" for key, value in rates.items())
    out("\ncompute floor: the operations torch.utils.flop_counter counts in one forward (convolutions, matrix "
        "products, attention)")
    out(f"at the best rate measured here ({probes} GFLOP/s); no implementation of the same arithmetic runs in less")
    out("floor/hf: the lowest ratio to hf_eager this machine allows; fused, compiled, aoti: share of that rate they "
        "attain")
    out(f"{'variant':16s} {'B':>2s} {'GFLOP':>8s} {'floor ms':>9s} {'floor/hf':>9s} {'fused':>6s} {'compiled':>9s}"
        f" {'aoti':>6s}")
    for name, batch, medians, *_ in rows:
        flops = _variant_flops(name, batch, size, device)
        floor = flops / rate
        timed = (medians.get(key) for key in ("vk_fused", "vk_compiled", "vk_aoti"))
        share = ["-" if seconds is None else f"{floor / seconds:.0%}" for seconds in timed]
        out(f"{name:16s} {batch:2d} {flops / 1e9:8.2f} {floor * 1e3:9.2f} "
            f"{_fmt_ratio(floor, medians.get('hf_eager')):>9s} {share[0]:>6s} {share[1]:>9s} {share[2]:>6s}")


def _train_table(args: argparse.Namespace, device: torch.device, out: Callable[[str], None]) -> None:
    from .variants import build_variant

    batch = args.train_batch
    out(f"\n## Training step (forward + backward), batch {batch}, {args.size}x{args.size}, "
        f"median over {args.train_rounds} interleaved rounds")
    out(f"{'variant':16s} {'vk ms':>9s} {'hf ms':>9s} {'ratio':>7s} {'vk peak MiB':>12s} {'hf peak MiB':>12s} {'ratio':>7s}")
    for name in args.train_variants:
        torch.manual_seed(0)
        models = {"vk": build_variant(name).train().to(device), "hf": _build_hf(name).train().to(device)}
        x = torch.rand(batch, 3, args.size, args.size, device=device)

        def step(model: nn.Module) -> Callable[[], None]:
            forward = _under_autocast(lambda: model(x).float().mean(), device, AUTOCAST_DTYPES[args.autocast])

            def run() -> None:
                model.zero_grad(set_to_none=True)
                forward().backward()

            return run

        steps = {k: step(m) for k, m in models.items()}
        for run in steps.values():
            run()
        samples: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(args.train_rounds):
            for key in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                _sync(device)
                start = time.perf_counter()
                steps[key]()
                _sync(device)
                samples[key].append(time.perf_counter() - start)
        for model in models.values():
            model.zero_grad(set_to_none=True)
        peaks = {k: peak_memory(run, device) / 2**20 for k, run in steps.items()}
        t = {k: statistics.median(v) for k, v in samples.items()}
        out(f"{name:16s} {t['vk'] * 1e3:9.1f} {t['hf'] * 1e3:9.1f} {t['vk'] / t['hf']:6.2f}x "
            f"{peaks['vk']:12.1f} {peaks['hf']:12.1f} {peaks['vk'] / peaks['hf']:6.2f}x")
        del models, steps


def _highres(args: argparse.Namespace, device: torch.device, out: Callable[[str], None]) -> None:
    from .variants import build_variant, get_variant

    height, width = args.highres
    precision = "" if args.autocast == "none" else f", torch.autocast {args.autocast}"
    out(f"\n## High resolution, batch 1, {height}x{width}{precision} "
        "(fused attention via scaled_dot_product_attention)")
    for name in args.highres_variants:
        model = build_variant(name).eval().to(device)
        x = torch.rand(1, 3, height, width, device=device)
        forward = _under_autocast(lambda: model(x), device, AUTOCAST_DTYPES[args.autocast])
        with torch.inference_mode():
            forward()  # warm-up
            start = time.perf_counter()
            y = forward()
            _sync(device)
            seconds = time.perf_counter() - start
            peak = peak_memory(forward, device)
        naive = ""
        if get_variant(name).family == "MobileViT":
            # the largest attention matrix a naive implementation would hold: layer_3 at stride 8
            h8, w8 = -(-height // 8), -(-width // 8)
            tokens = (-(-h8 // 2)) * (-(-w8 // 2))
            heads = model.config.block.num_heads
            naive = f"; a naive N x N attention matrix alone would take {heads * 4 * tokens**2 * 4 / 2**30:.1f} GiB"
        out(f"{name:16s} output {tuple(y.shape)}  {seconds * 1e3:.0f} ms  peak {peak / 2**20:.0f} MiB{naive}")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Add the benchmark options to ``parser`` (a new one when ``None``)."""
    parser = parser or argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants", nargs="*", default=None,
        help=f"variant short names (default: {' '.join(DEFAULT_VARIANTS)}; none: no latency table)",
    )
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--size", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per implementation (default: 15)")
    parser.add_argument(
        "--min-round-ms",
        type=float,
        default=100.0,
        help="per round, repeat each implementation's call until this many ms are filled (the count is fixed "
        "before the rounds; default: 100)",
    )
    parser.add_argument(
        "--heap",
        default="system",
        choices=["system", "retain"],
        help="system: the C allocator as configured (glibc returns freed memory to the OS, so calls can pay page "
        "faults); retain: mallopt keeps freed memory in the process, as jemalloc/tcmalloc do (glibc only; "
        "default: system)",
    )
    parser.add_argument("--impls", nargs="+", default=None, choices=IMPLEMENTATIONS, help="(default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ONNX Runtime rows are CPU only)")
    parser.add_argument(
        "--autocast",
        default="none",
        choices=list(AUTOCAST_DTYPES),
        help="run the PyTorch implementations (inference and training) under torch.autocast with this dtype; "
        "ONNX Runtime rows stay float32 (default: none)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of vk_compiled; reduce-overhead replays CUDA graphs on a GPU (default: default)",
    )
    parser.add_argument(
        "--train-variants",
        nargs="*",
        default=None,
        help="variants timed for one training step (default: mobilevit_xxs mobilevitv2_050; none: skip)",
    )
    parser.add_argument("--train-batch", type=int, default=16, help="training-step batch size (default: 16)")
    parser.add_argument("--train-rounds", type=int, default=None, help="timed training steps (default: 5)")
    parser.add_argument(
        "--highres", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"), help="high-resolution frame size"
    )
    parser.add_argument(
        "--highres-variants",
        nargs="*",
        default=["mobilevit_xxs"],
        help="variants run on one high-resolution frame (default: mobilevit_xxs; none: skip)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smaller defaults: mobilevit_xxs only, 3 rounds, 2 training rounds, no compiled rows (options given "
        "explicitly still apply)",
    )
    parser.add_argument("-o", "--output", default=None, help="also write the report to this file")
    return parser


def register(subparsers: Any) -> None:
    """Add the ``benchmark`` command to the ``visionkit`` command line."""
    parser = subparsers.add_parser("benchmark", help="latency/memory benchmark against transformers and kornia")
    build_parser(parser)
    parser.set_defaults(run=run)


_QUICK = {"variants": ["mobilevit_xxs"], "rounds": 3, "train_variants": ["mobilevit_xxs"], "train_rounds": 2}
_FULL = {"variants": list(DEFAULT_VARIANTS), "rounds": 15, "train_variants": ["mobilevit_xxs", "mobilevitv2_050"],
         "train_rounds": 5}


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the options left out (``None``): ``--quick`` changes only these, never what was given.

    Raises:
        ValueError: ``--compile-mode`` is given but ``vk_compiled`` is not measured, so it would be ignored.
    """
    for key, value in (_QUICK if args.quick else _FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)
    if getattr(args, "impls", None) is None:
        skip = ("vk_compiled", "vk_aoti") if args.quick else ()
        args.impls = [i for i in IMPLEMENTATIONS if i not in skip]
    if getattr(args, "compile_mode", None) is None:
        args.compile_mode = "default"
    elif "vk_compiled" not in args.impls:
        raise ValueError(
            f"--compile-mode {args.compile_mode} sets the mode of vk_compiled, which this run does not measure "
            "(--quick leaves it out): add vk_compiled to --impls"
        )


def _check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers, an unusable device or output folder before anything is built or timed."""
    from .variants import get_variant

    for option, value, least in (
        ("--size", args.size, 1), ("--rounds", args.rounds, 1), ("--threads", args.threads, 1),
        ("--train-batch", args.train_batch, 1), ("--train-rounds", args.train_rounds, 1),
        *(("--batches", b, 1) for b in args.batches), *(("--highres", v, 1) for v in args.highres),
    ):
        if value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    if not 0 < args.min_round_ms < math.inf:
        raise ValueError(f"--min-round-ms must be positive and finite, got {args.min_round_ms}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch build or machine has no CUDA device")
    for name in args.train_variants:
        if get_variant(name).family not in ("MobileViT", "MobileViTv2"):
            raise ValueError(f"--train-variants: {name} has no transformers counterpart to compare with (v1, v2 only)")
    peers = {"hf_eager", "hf_onnx"} if device.type == "cpu" else {"hf_eager"}
    with_peers = [v for v in args.variants if get_variant(v).family in ("MobileViT", "MobileViTv2")]
    wanted = peers & set(args.impls) if with_peers and args.batches else set()
    if (wanted or args.train_variants) and importlib.util.find_spec("transformers") is None:
        raise ValueError(
            "transformers is not installed, and the transformers rows and the training table need it: "
            "pip install -e '.[bench]' (or leave them out: --impls without hf_*, --train-variants with no names)"
        )
    if args.output is not None:
        check_output_folder(args.output)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; prints the report (and writes ``args.output``)."""
    from .variants import get_variant

    _resolve_defaults(args)
    for name in [*args.variants, *args.train_variants, *args.highres_variants]:
        get_variant(name)  # a clear error for a misspelt name, before anything runs
    _check_options(args)
    heap = "as configured (glibc defaults unless the environment sets MALLOC_* or preloads another allocator)"
    if args.heap == "retain":
        heap = "retain freed memory (mallopt " + retain_freed_memory() + ")"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    versions = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "transformers", "kornia", "timm"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} not importable")
    started = time.time()
    out("# visionkit benchmark")
    out(f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
        f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    out("versions: " + ", ".join(versions))
    precision = "float32"
    if args.autocast != "none":
        precision = f"torch.autocast {args.autocast} ({', '.join(_FLOAT32_ONLY)}: float32)"
    if device.type == "cuda":
        precision += f"; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}"
    if "vk_compiled" in args.impls:
        precision += f"; vk_compiled: torch.compile mode {args.compile_mode}"
    out("precision: " + precision)
    out("heap: " + heap)
    script = os.path.basename(sys.argv[0])
    program = f"python benchmarks/{script}" if script == "benchmark.py" else "visionkit"
    out("command: " + " ".join([program, *sys.argv[1:]]))
    if args.variants and args.batches:
        _latency_table(args, device, out)
    if args.train_variants:
        _train_table(args, device, out)
    if args.highres_variants:
        _highres(args, device, out)
    out(f"\ntotal wall time {time.time() - started:.0f} s")
    if args.output is not None:
        with replaced_on_success(args.output) as partial, open(partial, "w") as f:  # an earlier report stays whole
            f.write("\n".join(lines) + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``benchmarks/benchmark.py``."""
    return run(build_parser().parse_args(argv))
