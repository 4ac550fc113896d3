"""The benchmark script runs, writes its table and reports what it could not measure (it asserts nothing on speed)."""

from __future__ import annotations

import builtins
import copy
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from visionkit.contrib import benchmark


def test_latency_table_under_autocast_is_written_with_ratios(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    argv = ["--variants", "mobilevitv3_xxs", "mobilevit_xxs", "--batches", "2", "--rounds", "2", "--size", "64",
            "--impls", "vk_eager", "vk_fused", "hf_eager", "--train-variants", "--highres-variants",
            "--autocast", "bf16", "-o", str(report)]
    from visionkit.contrib import MobileViTBackbone

    from torch.utils.flop_counter import FlopCounterMode

    outputs: list[torch.dtype] = []  # what the timed visionkit calls returned: bfloat16 only under autocast

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        # the compute-floor section counts FLOPs of one float32 forward; every other call is timed
        if isinstance(module, MobileViTBackbone) and not torch.utils._python_dispatch.is_in_torch_dispatch_mode():
            outputs.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        assert benchmark.main(argv) == 0
    finally:
        handle.remove()
    assert outputs and set(outputs) == {torch.bfloat16}
    text = report.read_text()
    assert "precision: torch.autocast bf16" in text
    row = next(line for line in text.splitlines() if line.startswith("mobilevit_xxs "))
    # three timings, then eager/hf and fused/hf ratios; compiled, AOTInductor and ONNX were not asked for
    assert re.fullmatch(r"mobilevit_xxs\s+2(\s+\d+\.\d){3}(\s+\d+\.\d\dx){2}(\s+-){3}", row), row
    assert "not measured: hf_eager: transformers has no MobileViTv3 (first seen at mobilevitv3_xxs)" in text
    spread = text[text.index("per-round ratios") :].splitlines()
    row = next(line for line in spread if line.startswith("mobilevit_xxs "))
    cell = r"\s+(\d+\.\d\d) \[(\d+\.\d\d), (\d+\.\d\d)\]"
    found = re.fullmatch(rf"mobilevit_xxs\s+2{cell}{cell}(?:\s+-){{3}}", row)
    assert found, row
    for median, lower, upper in (found.groups()[:3], found.groups()[3:]):
        assert float(lower) <= float(median) <= float(upper)
    v3_row = next(line for line in spread if line.startswith("mobilevitv3"))
    assert re.fullmatch(r"mobilevitv3_xxs\s+2(\s+-){5}", v3_row), v3_row
    floor = text[text.index("compute floor") :].splitlines()
    best_rate = max(float(v) for v in re.search(r"matmul ([\d.]+), conv1x1 ([\d.]+) GFLOP/s", floor[1]).groups())
    row = next(line for line in floor if line.startswith("mobilevit_xxs "))
    found = re.fullmatch(r"mobilevit_xxs\s+2\s+(\d+\.\d\d)\s+(\d+\.\d\d)\s+(\d+\.\d\d)x\s+(\d+)%\s+-\s+-", row)
    assert found, row
    gflop, floor_ms = float(found[1]), float(found[2])
    from visionkit.contrib.variants import build_variant

    expected = benchmark.forward_flops(build_variant("mobilevit_xxs"), torch.rand(2, 3, 64, 64)) / 1e9
    assert gflop == pytest.approx(expected, abs=0.005)
    assert floor_ms == pytest.approx(expected / best_rate * 1e3, abs=0.006 + 0.001 * floor_ms)
    assert 0 < float(found[3]) and 0 < int(found[4]) <= 100
    v3_row = next(line for line in floor if line.startswith("mobilevitv3"))
    assert re.fullmatch(r"mobilevitv3_xxs\s+2\s+\d+\.\d\d\s+\d+\.\d\d\s+-\s+\d+%\s+-\s+-", v3_row), v3_row


def test_aoti_column_times_the_package_in_float32_under_autocast(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    argv = ["--variants", "mobilevit_xxs", "--batches", "1", "--rounds", "2", "--size", "64", "--impls", "vk_fused",
            "vk_aoti", "hf_eager", "--train-variants", "--highres-variants", "--autocast", "bf16", "-o", str(report)]
    assert benchmark.main(argv) == 0
    text = report.read_text()
    assert "precision: torch.autocast bf16 (vk_aoti, vk_onnx, hf_onnx: float32)" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("variant ") and "vk_aoti" in line)
    assert header.split()[2:] == ["vk_fused", "vk_aoti", "hf_eager", "eager/hf", "fused/hf", "comp/hf", "aoti/hf",
                                  "onnx/hf"]
    row = next(line for line in lines if line.startswith("mobilevit_xxs "))
    found = re.fullmatch(r"mobilevit_xxs\s+1\s+(\S+)\s+(\S+)\s+(\S+)\s+-\s+(\S+)x\s+-\s+(\S+)x\s+-", row)
    assert found, row
    fused, aoti, hf, fused_ratio, aoti_ratio = map(float, found.groups())
    assert aoti_ratio == pytest.approx(aoti / hf, abs=0.01 + 0.02 * aoti_ratio)  # from the unrounded times
    assert fused_ratio == pytest.approx(fused / hf, abs=0.01 + 0.02 * fused_ratio)
    floor = text[text.index("compute floor") :].splitlines()
    row = next(line for line in floor if line.startswith("mobilevit_xxs "))
    assert re.fullmatch(r"mobilevit_xxs\s+1(\s+\d+\.\d\d){2}\s+\d+\.\d\dx\s+\d+%\s+-\s+\d+%", row), row


def test_round_ratios_pair_the_rounds_and_refuse_bad_input() -> None:
    # paired by round: ratios 0.5, 2.5, 0.5; the ratio of the two medians would be 5 / 2 = 2.5
    assert benchmark.round_ratios([1.0, 5.0, 6.0], [2.0, 2.0, 12.0]) == (0.5, 0.5, 1.5)
    assert benchmark.round_ratios([3.0], [2.0]) == (1.5, 1.5, 1.5)
    median, lower, upper = benchmark.round_ratios([1.0, 1.0, 1.0, 1.0, 3.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    assert (median, lower, upper) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equally long, non-empty"):
        benchmark.round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equally long, non-empty"):
        benchmark.round_ratios([], [])
    with pytest.raises(ValueError, match="must be positive"):
        benchmark.round_ratios([1.0, 0.0], [1.0, 1.0])


def test_forward_flops_counts_two_operations_per_multiply_add() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False),  # 8 outputs x (2 inputs x 9) per pixel
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 5 * 5, 10),
    )
    x = torch.rand(3, 4, 5, 5)
    assert benchmark.forward_flops(model, x) == 2 * 3 * (8 * 2 * 9 * 25 + 200 * 10)
    from visionkit.contrib.variants import build_variant

    backbone = build_variant("mobilevit_xxs").eval()
    one, four = (benchmark.forward_flops(backbone, torch.rand(b, 3, 64, 64)) for b in (1, 4))
    assert one > 0 and four == 4 * one  # attention and convolutions alike scale with the batch


def test_forward_flops_leaves_a_training_model_as_it_was() -> None:
    from visionkit.contrib.variants import build_variant

    model = build_variant("mobilevit_xxs").train()
    model.layer_1.eval()  # a mixed model: every module's own flag must come back
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: m.training for k, m in model.named_modules()}
    eval_count = benchmark.forward_flops(copy.deepcopy(model).eval(), torch.rand(2, 3, 64, 64))
    assert benchmark.forward_flops(model, torch.rand(2, 3, 64, 64)) == eval_count
    assert {k: m.training for k, m in model.named_modules()} == flags
    for key, value in model.state_dict().items():  # BatchNorm running statistics and batch counters untouched
        assert torch.equal(value, buffers[key]), key


def test_matrix_rate_measures_both_probes_and_refuses_no_repeats() -> None:
    rates = benchmark.matrix_rate(torch.device("cpu"), repeats=1)
    assert sorted(rates) == ["conv1x1", "matmul"]
    assert all(1e6 < rate < 1e15 for rate in rates.values()), rates
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        benchmark.matrix_rate(torch.device("cpu"), repeats=0)


def test_time_rounds_hands_out_every_round() -> None:
    samples: dict[str, list[float]] = {}
    medians = benchmark._time_rounds({"a": lambda: None, "b": lambda: time.sleep(0.002)}, 4, torch.device("cpu"),
                                     0.0, None, samples)
    assert sorted(samples) == ["a", "b"] and all(len(v) == 4 for v in samples.values())
    assert all(t >= 0.002 for t in samples["b"]) and medians["b"] >= 0.002


def test_training_table_has_time_and_memory_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--variants", "--train-variants", "mobilevit_xxs", "--train-batch", "2", "--train-rounds", "1",
            "--size", "64", "--highres-variants"]
    assert benchmark.main(argv) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mobilevit_xxs "))
    assert re.fullmatch(r"mobilevit_xxs(\s+\d+\.\d){2}\s+\d+\.\d\dx(\s+\d+\.\d){2}\s+\d+\.\d\dx", row), row


def test_unknown_variant_or_autocast_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="mobilevit_xxl"):
        benchmark.main(["--variants", "mobilevit_xxl"])
    with pytest.raises(SystemExit):
        benchmark.main(["--autocast", "int8"])


def test_short_calls_are_repeated_within_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    assert benchmark.calls_per_round(0.012, 0.1) == 9
    assert benchmark.calls_per_round(0.25, 0.1) == 1
    with pytest.raises(ValueError, match="positive"):
        benchmark.calls_per_round(0.0, 0.1)
    # A clock the calls advance by fixed steps, so that the counts do not depend on the load of the machine.
    now = [0.0]
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    steps = {"fast": 0.0001, "slow": 0.03}
    counts = {"fast": 0, "slow": 0}

    def runner(key: str) -> Callable[[], None]:
        def call() -> None:
            counts[key] += 1
            now[0] += steps[key]

        return call

    runners = {key: runner(key) for key in steps}
    medians = benchmark._time_rounds(runners, 3, torch.device("cpu"), min_round_seconds=0.05)
    assert counts["slow"] == 1 + 3 * 2  # calibration call, then two calls (>= 50 ms) in each of the three rounds
    assert counts["fast"] == 1 + 3 * benchmark.calls_per_round(0.0001, 0.05)  # short calls fill 50 ms: ~500 each
    assert benchmark.calls_per_round(0.0001, 0.05) >= 499
    assert medians["slow"] == pytest.approx(0.03) and medians["fast"] == pytest.approx(0.0001)


def test_page_faults_per_call_are_counted_per_implementation() -> None:
    # A fresh interpreter: in a long test session glibc may already hold a free 64 MiB block from earlier tests and
    # serve the allocation from it without new pages.
    code = """
import torch
from visionkit.contrib import benchmark
faults = {}
benchmark._time_rounds({"fresh": lambda: torch.ones(16 << 20), "nothing": lambda: None}, 3, torch.device("cpu"),
                       0.0, faults)
print(faults["fresh"], faults["nothing"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fresh, nothing = map(float, done.stdout.split())
    assert fresh >= 32  # 64 MiB, above glibc's largest mmap threshold: at least one fault per 2 MiB with huge pages
    assert nothing < 1


def test_heap_retain_is_reported_in_the_header(tmp_path: Path) -> None:
    # mallopt changes the allocator of the whole process, so the run gets its own
    report = tmp_path / "report.txt"
    argv = ["--heap", "retain", "--variants", "mobilevit_xxs", "--batches", "1", "--rounds", "1", "--size", "64",
            "--impls", "vk_eager", "--train-variants", "--highres-variants", "-o", str(report)]
    done = subprocess.run([sys.executable, "-m", "visionkit", "benchmark", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert "heap: retain freed memory (mallopt M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1024 MiB)" in text
    assert re.search(r"^minor page faults per call", text, re.MULTILINE)
    assert re.search(r"^mobilevit_xxs\s+1\s+\d+$", text, re.MULTILINE), text


def test_heap_retain_fails_clearly_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def mallopt(self, param: int, value: int) -> int:
            return 0

    monkeypatch.setattr(benchmark.ctypes, "CDLL", lambda name: Refusing())
    with pytest.raises(OSError, match=r"glibc refused mallopt\(M_MMAP_THRESHOLD, 33554432\)"):
        benchmark.retain_freed_memory()
    monkeypatch.setattr(benchmark.ctypes, "CDLL", lambda name: object())  # e.g. musl or macOS: no mallopt
    with pytest.raises(OSError, match="needs glibc's mallopt"):
        benchmark.retain_freed_memory()


def _ratio_of_rounded(ratio: float, top: float, bottom: float, half_step: float) -> bool:
    """Whether ``ratio`` (printed to 0.01) can be the ratio of two times printed as ``top`` and ``bottom``, each
    rounded to within ``half_step``: 2.21 and 9.83 ms can print 4.46, though 9.83 / 2.21 is 4.448."""
    low, high = (top - half_step) / (bottom + half_step), (top + half_step) / (bottom - half_step)
    return low - 0.005 <= ratio <= high + 0.005


def _benchmark_script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _allocator_script():
    return _benchmark_script("allocator_page_faults")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def test_linear_backends_script_times_both_products_and_compares_their_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = _benchmark_script("linear_backends")
    script.main(["--rounds", "1", "--calls", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "->" in line and "us" not in line]
    assert len(rows) == len(script.SHAPES)
    for row in rows:
        blas_us, onednn_us, ratio, diff = (float(value) for value in row[-4:])
        assert blas_us > 0 and onednn_us > 0 and _ratio_of_rounded(ratio, onednn_us, blas_us, 0.05)
        assert diff < 1e-3


@pytest.mark.parametrize(
    "option", ["cpp_wrapper", "model_guards", "compile_forms", "composed_convolutions", "max_autotune"]
)
def test_compile_options_script_times_both_settings_and_compares_their_outputs(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _benchmark_script("compile_options")
    argv = ["--option", option, "--variants", "mobilevitv2_050", "--rounds", "1", "--calls", "1", "--size", "64"]
    script.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert "batch 1, 64x64" in lines[0]
    assert f"option {option}:" in lines[1]
    rows = [line.split() for line in lines if line.startswith(" ") and "ms" not in line]
    assert [row[0] for row in rows] == ["mobilevitv2_050"]
    off_ms, on_ms, ratio, diff = (float(value) for value in rows[0][1:])
    assert off_ms > 0 and on_ms > 0 and _ratio_of_rounded(ratio, on_ms, off_ms, 0.005)
    assert diff < 1e-4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def test_convolution_share_script_counts_every_convolution_of_the_compiled_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from torch import nn

    from visionkit.contrib.variants import build_variant

    script = _benchmark_script("convolution_share")
    script.main(["--variants", "mobilevitv2_050", "--rounds", "1", "--calls", "2"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("mobilevit")]
    assert [row[0] for row in rows] == ["mobilevitv2_050"]
    compiled_ms, conv_ms, share, other_ms, convs, hf_ms, comp_hf, conv_hf = rows[0][1:]
    # Each Conv2d of the fused model (BatchNorms folded into them) runs once per call, as one oneDNN convolution,
    # except the three pairs of 1x1 convolutions that the compiled MobileViTv2 runs as one each
    # (visionkit.contrib.composition)
    fused = build_variant("mobilevitv2_050").eval().fuse()
    assert float(convs) == sum(isinstance(module, nn.Conv2d) for module in fused.modules()) - 3
    compiled_ms, conv_ms, other_ms, hf_ms = (float(value) for value in (compiled_ms, conv_ms, other_ms, hf_ms))
    assert conv_ms > 0 and compiled_ms > 0 and hf_ms > 0
    assert other_ms == pytest.approx(compiled_ms - conv_ms, abs=0.011)
    assert float(comp_hf.rstrip("x")) == pytest.approx(compiled_ms / hf_ms, abs=0.006)
    assert float(conv_hf.rstrip("x")) == pytest.approx(conv_ms / hf_ms, abs=0.006)


def test_convolution_times_read_execution_lines_of_convolutions_only() -> None:
    script = _benchmark_script("convolution_share")
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.7.1 (commit 8d263e6)",
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,brgconv_1x1:avx512_core,forward_inference,,0.01",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,forward_inference,src:f32,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32,0.25",
        "onednn_verbose,1732460000.5,v1,primitive,exec,cpu,convolution,brdgmm_dw:avx512_core,forward_inference,,0.5",
        "a line the program printed itself, 2.0",
    ]
    assert script.convolution_times(lines) == [1.5, 0.5]


def test_onnx_op_profile_script_adds_up_kernel_time_per_operator_type(capsys: pytest.CaptureFixture[str]) -> None:
    script = _benchmark_script("onnx_op_profile")
    script.main(["--variants", "mobilevitv2_050", "--rounds", "1", "--calls", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("mobilevitv2_050: visionkit") for line in lines), lines
    table = [line.split() for line in lines if line.startswith(" ") and "operator type" not in line]
    rows = {kind: (float(vk), float(hf)) for kind, vk, hf in table}
    assert rows["Conv"][0] > 0 and rows["Conv"][1] > 0
    for column in (0, 1):  # the shown types and "other" make up the total
        parts = sum(values[column] for kind, values in rows.items() if kind != "total")
        assert parts == pytest.approx(rows["total"][column], abs=0.01 * len(rows))


def test_onnx_kernel_times_are_added_up_per_operator_type_and_call() -> None:
    script = _benchmark_script("onnx_op_profile")
    events = [
        {"cat": "Node", "name": "conv_1_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv_2_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv_1_fence_before", "dur": 500, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "norm_kernel_time", "dur": 200, "args": {"op_name": "InstanceNormalization"}},
        {"cat": "Session", "name": "model_run", "dur": 9000, "args": {}},
    ]
    assert script.kernel_ms_per_op_type(events, calls=2) == {"Conv": 2.0, "InstanceNormalization": 0.1}


def test_allocator_script_runs_each_setting_in_a_child_with_its_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _allocator_script()
    # One setting keeps the test short; the script itself checks that the child saw exactly that environment.
    monkeypatch.setattr(script, "SETTINGS", {"trim alone": {"MALLOC_TRIM_THRESHOLD_": str(1 << 30)}})
    script.main(["--size", "64", "--rounds", "1", "--calls", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[-4:-3] in (["visionkit"], ["transformers"])]
    assert [row[-4] for row in rows] == ["visionkit", "transformers"], lines
    for row in rows:
        milliseconds, faults, kernel_ms = (float(value) for value in row[-3:])
        assert milliseconds > 0 and faults >= 0 and kernel_ms >= 0



def test_header_names_the_cpu_generation_and_vector_width(tmp_path: Path) -> None:
    # Two processors that both call themselves "AMD EPYC" can time the same code differently: the header tells them
    # apart. Only the first processor's block is read.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse avx avx2 avx512f\n\nprocessor\t: 1\ncpu family\t: 25\nmodel name\t: Other\n"
    )
    assert benchmark._cpu_model(str(cpuinfo)) == "AMD EPYC (family 26 model 2, AVX-512)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx avx2\n")
    assert benchmark._cpu_model(str(cpuinfo)) == "Some CPU (AVX2)"
    assert benchmark._cpu_model(str(tmp_path / "missing")) != ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "foo"], "--device must be cpu or cuda, got 'foo'"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--size", "0"], "--size must be at least 1, got 0"),
        (["--batches", "1", "-1"], "--batches must be at least 1, got -1"),
        (["--batches", "0"], "--batches must be at least 1, got 0"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--train-batch", "0"], "--train-batch must be at least 1, got 0"),
        (["--highres", "-5", "10"], "--highres must be at least 1, got -5"),
        (["--min-round-ms", "0"], "--min-round-ms must be positive and finite, got 0.0"),
        (["--train-variants", "mobilevitv3_xxs"], "mobilevitv3_xxs has no transformers counterpart"),
        (["-o", "/nonexistent-folder/report.txt"], "the folder to write '/nonexistent-folder/report.txt' into"),
    ],
)
def test_bad_options_are_one_error_line_before_anything_runs(argv, message, capsys, monkeypatch) -> None:
    from visionkit.cli import main

    monkeypatch.setattr(benchmark, "_latency_table", lambda *args: pytest.fail("the run started"))
    assert main(["benchmark", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionkit benchmark: error: ") and message in err, err


def test_quick_changes_only_the_defaults() -> None:
    args = benchmark.build_parser().parse_args(["--quick"])
    benchmark._resolve_defaults(args)
    assert (args.variants, args.rounds, args.train_variants, args.train_rounds) == (
        ["mobilevit_xxs"], 3, ["mobilevit_xxs"], 2)
    assert "vk_compiled" not in args.impls and "vk_aoti" not in args.impls and "vk_eager" in args.impls
    given = ["--quick", "--variants", "mobilevitv2_050", "--rounds", "7", "--impls", "vk_eager", "vk_compiled",
             "--train-variants"]
    args = benchmark.build_parser().parse_args(given)
    benchmark._resolve_defaults(args)
    assert (args.variants, args.rounds, args.impls, args.train_variants, args.train_rounds) == (
        ["mobilevitv2_050"], 7, ["vk_eager", "vk_compiled"], [], 2)
    args = benchmark.build_parser().parse_args([])
    benchmark._resolve_defaults(args)
    assert args.variants == list(benchmark.DEFAULT_VARIANTS) and args.rounds == 15 and args.impls == list(
        benchmark.IMPLEMENTATIONS)


def test_without_transformers_the_peers_are_refused_up_front_and_visionkit_rows_still_run(monkeypatch, capsys) -> None:
    import importlib.util

    from visionkit.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    assert main(["benchmark", "--variants", "mobilevit_xxs", "--train-variants", "--highres-variants"]) == 2
    assert "transformers is not installed" in capsys.readouterr().err
    monkeypatch.setattr(benchmark, "_latency_table", lambda *args: print("table ran"))
    v3_only = ["benchmark", "--variants", "mobilevitv3_xxs", "--train-variants", "--highres-variants"]
    assert main(v3_only) == 0  # transformers has no v3 rows to need it for
    assert "table ran" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )

    def no_transformers(name: str) -> None:
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(benchmark, "_build_hf", no_transformers)  # only an hf row would call it
    argv = ["benchmark", "--variants", "mobilevit_xxs", "--batches", "1", "--rounds", "1", "--size", "64",
            "--impls", "vk_eager", "--train-variants", "--highres-variants"]
    assert main(argv) == 0
    assert re.search(r"^mobilevit_xxs\s+1\s+\d+\.\d", capsys.readouterr().out, re.MULTILINE)


def test_a_missing_optional_package_names_the_extra(monkeypatch, capsys) -> None:
    from visionkit import cli

    def run(args) -> int:
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), "export", run))
    assert cli.main(["export", "mobilevit_xxs", "-o", "x.onnx"]) == 2
    assert capsys.readouterr().err.strip() == (
        "visionkit export: error: this command needs onnxscript, which is not installed (pip install -e '.[export]')")

    def run_demo(args) -> int:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), "demo", run_demo))
    assert cli.main(["demo"]) == 2
    assert "this command needs scikit-learn, which is not installed (pip install -e '.[demo]')" in (
        capsys.readouterr().err)  # the name pip installs, not the module's


def _with_run(parser, command: str, run):
    for action in parser._subparsers._group_actions:
        action.choices[command].set_defaults(run=run)
    return parser


def test_high_resolution_runs_under_the_requested_autocast(capsys, monkeypatch) -> None:
    dtypes = []
    forward = benchmark._under_autocast

    def recording(fn, device, dtype):
        wrapped = forward(fn, device, dtype)

        def run():
            out = wrapped()
            dtypes.append(out.dtype)
            return out

        return run

    monkeypatch.setattr(benchmark, "_under_autocast", recording)
    argv = ["--variants", "--train-variants", "--highres", "64", "96", "--highres-variants", "mobilevit_xxs",
            "--autocast", "bf16"]
    assert benchmark.main(argv) == 0
    assert "## High resolution, batch 1, 64x96, torch.autocast bf16" in capsys.readouterr().out
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_compile_options_script_switches_the_compile_forms_back_and_restores_them() -> None:
    from visionkit.contrib import backbone, blocks
    from visionkit.contrib.attention import LinearSelfAttention

    script = _benchmark_script("compile_options")
    attention = LinearSelfAttention(8)
    x = torch.rand(1, 2, 2, 2)
    keeps_rank_five, foldable = blocks._keeps_rank_five, LinearSelfAttention._foldable_qkv_conv
    composes = backbone.composes_pointwise
    with script.recorded_forms():
        assert blocks._keeps_rank_five(x) and attention._foldable_qkv_conv() is None
        assert backbone.composes_pointwise is not composes and not backbone.composes_pointwise()
    assert blocks._keeps_rank_five is keeps_rank_five and LinearSelfAttention._foldable_qkv_conv is foldable
    assert backbone.composes_pointwise is composes
    assert not blocks._keeps_rank_five(x)  # eager mode takes the one-permutation move
    with script.uncomposed_convolutions():
        assert not backbone.composes_pointwise() and blocks._keeps_rank_five is keeps_rank_five
    assert backbone.composes_pointwise is composes


NOTHING_TIMED = ["--variants", "--train-variants", "--highres-variants"]  # the header only


def test_the_command_refuses_before_running_what_it_would_ignore_or_fail_on_later(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionkit.cli import main

    monkeypatch.setattr(benchmark.ctypes, "CDLL", lambda name: object())  # e.g. musl or macOS: no mallopt
    for args, message in (
        (["--min-round-ms", "inf"], "--min-round-ms must be positive and finite, got inf"),
        (["-o", ""], "the output path is empty"),
        (["-o", "/proc/self/report.txt"], "cannot create a file in"),
        (["--quick", "--compile-mode", "max-autotune"], "--compile-mode max-autotune sets the mode of vk_compiled"),
        (["--heap", "retain"], "needs glibc's mallopt"),
    ):
        assert main(["benchmark", *NOTHING_TIMED, *args]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("visionkit benchmark: error: ") and message in captured.err
        assert "total wall time" not in captured.out


def test_a_report_that_fails_to_be_written_leaves_the_earlier_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report.txt"
    report.write_text("an earlier report\n")

    class FullDisk:
        def __init__(self, path: str, mode: str) -> None:
            self.file = builtins.open(path, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, text: str) -> None:
            self.file.write(text[:10])
            raise OSError(28, "No space left on device")

    def writes_fail(path: str, mode: str = "r", *args: object, **kwargs: object) -> object:
        return FullDisk(path, mode) if "w" in mode else builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(benchmark, "open", writes_fail, raising=False)
    with pytest.raises(OSError, match="No space left"):
        benchmark.main([*NOTHING_TIMED, "-o", str(report)])
    assert report.read_text() == "an earlier report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]  # no partial file left behind
    monkeypatch.undo()
    benchmark.main([*NOTHING_TIMED, "-o", str(report)])
    assert report.read_text().startswith("# visionkit benchmark")


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    done = subprocess.run(
        f"{sys.executable} -m visionkit benchmark {' '.join(NOTHING_TIMED)} | head -c 1", shell=True,
        capture_output=True, text=True, timeout=300,
    )
    assert done.stdout == "#" and "Broken pipe" not in done.stderr and "Traceback" not in done.stderr, done.stderr
