"""The command line: ``visionkit summary`` (also through ``python -m visionkit``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from visionkit.cli import main
from visionkit.contrib.summary import count_macs
from visionkit.contrib.variants import VARIANTS, build_variant


def test_summary_lists_every_variant_with_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--size", "64", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for variant in VARIANTS:
        assert variant.name in out
    row = next(line for line in out.splitlines() if line.startswith("mobilevit_xxs "))
    assert "951,024" in row and "1,272,024" in row and "320x2x2" in row
    row = next(line for line in out.splitlines() if line.startswith("mobilevitv3_xxs_l2 "))
    assert "1,145,288" in row


def test_summary_family_filter_and_no_latency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--family", "MobileViTv3", "--size", "64", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "mobilevitv3_050" in out and "mobilevit_xxs " not in out


def test_macs_are_counted_by_pytorch_flop_counter() -> None:
    # The FlopCounterMode count of v1-XXS at 256 (convolutions, linears and attention matmuls; no norms), against
    # an independent count: hooks on every convolution and linear, plus the two attention products of each
    # transformer layer (Q K^T and the weighted sum of V: 2 P N^2 d multiply-adds for P patch positions, N patches).
    model = build_variant("mobilevit_xxs").eval()
    layers = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal layers
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            layers += output.numel() * module.in_channels // module.groups * kernel
        else:
            layers += output.numel() * module.in_features

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.rand(1, 3, 256, 256))
    # (transformer layers, patches N, dim d) of layers 3-5 at 256x256, 2x2 patches (P = 4)
    attention = sum(depth * 2 * 4 * n**2 * dim for depth, n, dim in ((2, 256, 64), (4, 64, 80), (3, 16, 96)))
    assert count_macs(build_variant("mobilevit_xxs"), 256, 256) == layers + attention
    assert count_macs(build_variant("mobilevit_xxs"), 128, 128) < (layers + attention) / 3


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "visionkit", "summary", "--family", "MobileViT", "--size", "32", "--no-latency"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mobilevit_s " in result.stdout


def test_version_names_visionkit_and_torch(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import visionkit

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"visionkit {visionkit.__version__} (torch {torch.__version__}, Python "), out


def test_unknown_command_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_refused_input_is_one_error_line_and_exit_code_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "mobilevit_xxxs", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionkit export: error: model must be one of 'mobilevit_xxs'")
    assert "got 'mobilevit_xxxs'" in err
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()
    missing = tmp_path / "missing.pt"
    assert main(["convert", str(missing), str(tmp_path / "out.pt"), "--variant", "mobilevit_xxs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionkit convert: error: ") and "missing.pt" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="model must be one of"):
        main(["--traceback", "export", "mobilevit_xxxs", "-o", str(tmp_path / "m.onnx")])


@pytest.mark.parametrize("program", [["-m", "visionkit", "benchmark"], ["benchmarks/benchmark.py"]])
def test_refused_input_from_the_shell_exits_with_2(program: list[str]) -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, *program, "--variants", "xxs"], capture_output=True, text=True, cwd=root
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("visionkit benchmark: error: variant name must be one of")


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--size", "0"], "--size must be at least 1, got 0"), (["--repeats", "0"], "--repeats must be at least 1, got 0"),
     (["--threads", "-2"], "--threads must be at least 0, got -2")],
)
def test_summary_refuses_bad_numbers_in_one_line(option, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--family", "MobileViT", *option]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"visionkit summary: error: {message}" and captured.out == ""


def test_count_macs_and_summarize_check_their_arguments() -> None:
    from visionkit.contrib.summary import summarize

    model = build_variant("mobilevit_xxs")
    with pytest.raises(ValueError, match="first Conv2d, and Linear has none"):
        count_macs(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="height must be a positive integer"):
        count_macs(model, -1, 64)
    with pytest.raises(TypeError, match="height must be an int"):
        count_macs(model, 64.0, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        summarize(VARIANTS[0], size=64, repeats=0)
