"""The benchmark script runs, writes its table and reports what it could not measure (it asserts nothing on speed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from visionkit.contrib import benchmark


def test_latency_table_under_autocast_is_written_with_ratios(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    argv = ["--variants", "mobilevitv3_xxs", "mobilevit_xxs", "--batches", "2", "--rounds", "2", "--size", "64",
            "--impls", "vk_eager", "vk_fused", "hf_eager", "--train-variants", "--highres-variants",
            "--autocast", "bf16", "-o", str(report)]
    assert benchmark.main(argv) == 0
    text = report.read_text()
    assert "precision: torch.autocast bf16" in text
    row = next(line for line in text.splitlines() if line.startswith("mobilevit_xxs "))
    # three timings, then eager/hf and fused/hf ratios; compiled and ONNX were not asked for
    assert re.fullmatch(r"mobilevit_xxs\s+2(\s+\d+\.\d){3}(\s+\d+\.\d\dx){2}\s+-\s+-", row), row
    assert "not measured: hf_eager: transformers has no MobileViTv3 (first seen at mobilevitv3_xxs)" in text


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
