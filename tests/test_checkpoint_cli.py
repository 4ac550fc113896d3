"""``visionkit weights`` and ``visionkit convert``."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

from visionkit.cli import main
from visionkit.contrib import ClassificationHead, MobileViTv2, list_weights, load_checkpoint

DATA = pathlib.Path(__file__).parent / "data"


def test_weights_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(list_weights())
    assert any(line.startswith("mobilevitv3_050.mobilevitv3-in1k ") for line in lines)


@pytest.mark.parametrize("layout", ["timm", "hf"])
def test_convert_command_round_trips(tmp_path: pathlib.Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"v2_050_{layout}.safetensors"
    args = ["convert", str(DATA / "v2_050_cls.pt"), str(out), "--variant", "mobilevitv2_050", "--to", layout]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "source: cvnets" in printed and f"({layout} layout, 269 tensors)" in printed
    model = nn.Sequential(MobileViTv2(0.5), ClassificationHead(256, 1000))
    assert load_checkpoint(model, out).source == layout
    blob = torch.load(DATA / "v2_050_cls.pt", weights_only=True)
    for key, value in blob["state_dict"].items():
        own = key if not key.startswith("classifier.") else "1.fc." + key.rsplit(".", 1)[1]
        own = own if own.startswith("1.") else "0." + own
        assert torch.equal(model.state_dict()[own], value.to(model.state_dict()[own].dtype)), key


def test_convert_command_refuses_wrong_variant(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.pt"
    assert main(["convert", str(DATA / "v2_050_cls.pt"), str(out), "--variant", "mobilevitv2_075"]) == 2
    assert "visionkit convert: error: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="looks like mobilevitv2_050"):
        main(["--traceback", "convert", str(DATA / "v2_050_cls.pt"), str(out), "--variant", "mobilevitv2_075"])
    assert not out.exists()


def test_convert_refuses_a_folder_as_destination_and_negative_classes(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionkit.contrib import checkpoint_cli

    monkeypatch.setattr(checkpoint_cli, "load_checkpoint", lambda *args, **kwargs: pytest.fail("the load started"))
    for folder in (tmp_path, tmp_path / "w.safetensors"):
        folder.mkdir(exist_ok=True)
        assert main(["convert", str(DATA / "v2_050_cls.pt"), str(folder), "--variant", "mobilevitv2_050"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("visionkit convert: error: ") and "is a folder" in err, err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(DATA / "v2_050_cls.pt"), str(tmp_path / "w.pt"), "--variant", "mobilevitv2_050",
              "--num-classes", "-5"])
    assert exit_info.value.code == 2
    assert "--num-classes: must be 0 (backbone only) or a positive number of classes, got -5" in capsys.readouterr().err


def test_weights_details_show_licence_url_and_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "--variant", "mobilevitv3_xxs", "--details"]) == 0
    printed = capsys.readouterr().out
    assert "licence: Micron Technology software license agreement: personal, non-commercial use only" in printed
    assert "url: https://github.com/micronDLA/MobileViTv3/releases/tag/v1.0.0 (download by hand" in printed
    assert "notes: published as a folder per model" in printed


def test_convert_takes_in_channels_and_names_files_that_are_no_checkpoint(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionkit.contrib import MobileViT, save_checkpoint

    gray = tmp_path / "gray.pt"
    save_checkpoint(MobileViT(mode="xxs", in_channels=1), gray)
    args = ["convert", str(gray), str(tmp_path / "gray_timm.pt"), "--variant", "mobilevit_xxs", "--num-classes", "0"]
    assert main([*args, "--in-channels", "1", "--to", "timm"]) == 0
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert main(["convert", str(picture), str(tmp_path / "x.pt"), "--variant", "mobilevit_xxs"]) == 2
    err = capsys.readouterr().err
    assert "is not a PyTorch or safetensors checkpoint" in err and "could run code" not in err
