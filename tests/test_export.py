"""ONNX export: ONNX Runtime matches PyTorch, graph free of Im2Col/Col2Im and of tensors above rank 5, every
Transpose a single-axis move, CLI. AOTInductor packages: match PyTorch at any batch, refuse other inputs, CLI."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from visionkit.cli import main
from visionkit.contrib import MobileViT, MobileViTv2, MobileViTv3, export_aoti_package, export_onnx, load_aoti_package
from visionkit.contrib.export import AOTIPackage


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _check_graph(path: Path) -> None:
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Col2Im", "Im2Col"}, ops
    typed = [v for v in [*graph.value_info, *graph.output] if v.type.HasField("tensor_type")]
    assert len(typed) > 100  # shape inference reached the whole graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in typed}
    assert max(ranks.values()) <= 5, {k: r for k, r in ranks.items() if r > 5}
    perms = [list(onnx.helper.get_attribute_value(a)) for n in graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms, "the patch unfold and the attention heads should transpose"
    assert all(_moves_one_axis(perm) for perm in perms), [perm for perm in perms if not _moves_one_axis(perm)]


def _moves_one_axis(perm: list[int]) -> bool:
    # ONNX Runtime copies such a Transpose in contiguous runs; a general permutation (the one-step patch unfold
    # (0, 2, 4, 1, 3)) is an element-wise strided gather, several times slower.
    return any(perm[:i] + perm[i + 1 :] == sorted(perm[:i] + perm[i + 1 :]) for i in range(len(perm)))


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize(("build"), [lambda: MobileViT("xxs"), lambda: MobileViTv2(0.5)], ids=["v1_xxs", "v2_050"])
def test_dynamic_onnx_matches_pytorch_at_several_sizes(build, opset: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build().eval()
    path = Path(export_onnx(model, tmp_path / "model.onnx", opset=opset, dynamic=True))
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    assert onnx.load(str(path)).opset_import[0].version == opset
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])]
    assert dims[0] == ["batch", 3, "height", "width"], dims
    assert dims[1][0] == "batch" and "height" in dims[1][2] and "width" in dims[1][3], dims
    _check_graph(path)
    for shape in [(1, 3, 256, 256), (2, 3, 320, 192), (1, 3, 250, 230)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        actual = _run_onnx(path, x)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_v3_on_v1_exports_at_opset_17(tmp_path: Path) -> None:
    # MobileViT v1's attention splits q, k and v with explicit sizes: an even split exported as a Split with
    # num_outputs, which the conversion from opset 18 kept, and ONNX Runtime refused the opset-17 file.
    torch.manual_seed(0)
    model = MobileViTv3("xxs").eval()
    path = Path(export_onnx(model, tmp_path / "v3.onnx", opset=17))
    onnx.checker.check_model(str(path), full_check=True)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run_onnx(path, x), expected, atol=1e-4, rtol=1e-4)


class _EvenSplit(nn.Module):
    """A user's module whose even ``chunk`` the conversion to opset 17 leaves invalid (see the test below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.reshape(x.shape[0], 2, -1).chunk(2, dim=1)  # (B, 3, H, W) has no even split of its channels
        return a * b


def test_export_onnx_writes_nothing_that_onnx_rejects(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(ValueError, match="not valid ONNX at opset 17: .*num_outputs.*opset 18"):
        export_onnx(_EvenSplit().eval(), path, opset=17, input_size=(8, 8))
    assert path.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    export_onnx(_EvenSplit().eval(), path, opset=18, input_size=(8, 8))
    x = torch.rand(1, 3, 8, 8)
    np.testing.assert_allclose(_run_onnx(path, x), _EvenSplit()(x).numpy(), rtol=1e-6)


def _saved_model_with_statistics(model: nn.Module, folder: Path) -> Path:
    """Give ``model``'s BatchNorms non-trivial statistics (so that ``--fuse`` has something to fold); save it."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    weights = folder / "weights.pt"
    torch.save(model.state_dict(), weights)
    return weights


def test_cli_exports_a_static_model_with_given_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = MobileViTv3(width_multiplier=0.5).eval()
    weights = _saved_model_with_statistics(model, tmp_path)
    out = tmp_path / "v3.onnx"
    argv = ["export", "mobilevitv3_050", "--format", "onnx", "-o", str(out), "--opset", "17"]
    assert main([*argv, "--size", "250", "230", "--weights", str(weights), "--fuse"]) == 0
    assert "wrote" in capsys.readouterr().out
    _check_graph(out)
    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(out)).graph.node}
    x = torch.rand(1, 3, 250, 230)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run_onnx(out, x), expected, atol=1e-4, rtol=1e-4)


def test_export_onnx_rejects_bad_arguments(tmp_path: Path) -> None:
    model = MobileViT("xxs").eval()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=16)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "m.onnx", dynamic=True, input_size=(64, 64))
    with pytest.raises(TypeError):
        export_onnx("model", tmp_path / "m.onnx")  # type: ignore[arg-type]
    assert not (tmp_path / "m.onnx").exists()


def test_cli_rejects_an_unknown_variant_or_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["export", "mobilevit_tiny", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionkit export: error: model must be one of") and "'mobilevit_xxs'" in err

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export ran before the output folder was checked")

    # refused before the export runs (seconds for ONNX, a minute for AOTInductor), not when the file is written
    monkeypatch.setattr(torch.export, "export", no_export)
    for fmt, name in (("onnx", "m.onnx"), ("pt2", "m.pt2")):
        assert main(["export", "mobilevit_xxs", "--format", fmt, "-o", str(tmp_path / "no" / name)]) == 2
        assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(MobileViT("xxs"), tmp_path / "no" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_an_aoti_package_that_matches_pytorch_at_any_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    model = MobileViT("xxs").eval()
    weights = _saved_model_with_statistics(model, tmp_path)
    out = tmp_path / "xxs.pt2"
    argv = ["export", "mobilevit_xxs", "--format", "pt2", "-o", str(out), "--size", "96", "64"]
    assert main([*argv, "--weights", str(weights), "--fuse", "--dynamic-batch"]) == 0
    assert "AOTInductor package, dynamic batch, 96x64" in capsys.readouterr().out
    package = load_aoti_package(out)
    assert isinstance(package, AOTIPackage)
    assert (package.input_shape, package.dtype, package.device) == ((None, 3, 96, 64), torch.float32, "cpu")
    for batch in (1, 3):
        x = torch.rand(batch, 3, 96, 64)
        with torch.no_grad():
            torch.testing.assert_close(package(x), model(x), atol=1e-4, rtol=1e-4)
    # the compiled code assumes contiguous strides; a channels-last input is made contiguous first
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(package(channels_last), package(x), atol=0, rtol=0)
    # the compiled code would read any buffer as a (B, 3, 96, 64) float32 one; the package refuses the rest
    for bad in [torch.rand(1, 3, 64, 96), torch.rand(1, 1, 96, 64), torch.rand(3, 96, 64)]:
        with pytest.raises(ValueError, match=r"shape \(B, 3, 96, 64\)"):
            package(bad)
    with pytest.raises(ValueError, match="float32 on cpu, got torch.float64"):
        package(torch.rand(1, 3, 96, 64, dtype=torch.float64))
    with pytest.raises(TypeError):
        package(np.zeros((1, 3, 96, 64), dtype=np.float32))  # type: ignore[arg-type]


def test_load_aoti_package_refuses_a_package_without_input_specification(tmp_path: Path) -> None:
    conv = nn.Conv2d(3, 4, 1).eval()
    program = torch.export.export(conv, (torch.rand(1, 3, 8, 8),))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "plain.pt2"))
    with pytest.raises(ValueError, match="no input specification"):
        load_aoti_package(path)


def test_load_aoti_package_refuses_files_that_are_not_packages(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt2"
    torch.save({"weight": torch.zeros(2)}, checkpoint)  # a zip archive too, without a compiled model
    text = tmp_path / "model.pt2"
    text.write_bytes(b"not an archive")
    for path in (checkpoint, text):
        with pytest.raises(ValueError, match="is not an AOTInductor package that loads here"):
            load_aoti_package(path)


def test_dynamic_export_program_refuses_a_batch_of_one() -> None:
    from visionkit.contrib import export_program

    with pytest.raises(ValueError, match="a dynamic export traces with a batch of at least 2, got batch=1"):
        export_program(MobileViTv2(0.5).eval(), input_size=(96, 96), batch=1)


def test_aoti_export_rejects_bad_arguments(tmp_path: Path) -> None:
    model = MobileViT("xxs").eval()
    with pytest.raises(ValueError, match=r"must end in '\.pt2'"):
        export_aoti_package(model, tmp_path / "m.so")
    with pytest.raises(TypeError):
        export_aoti_package(model, tmp_path / "m.pt2", dynamic_batch=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        export_aoti_package(model, tmp_path / "m.pt2", batch_size=0)
    with pytest.raises(FileNotFoundError, match="m.pt2"):
        load_aoti_package(tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="--dynamic-batch"):
        main(["--traceback", "export", "mobilevit_xxs", "--format", "pt2", "-o", str(tmp_path / "m.pt2"), "--dynamic"])
    with pytest.raises(ValueError, match="--format pt2"):
        main(["--traceback", "export", "mobilevit_xxs", "-o", str(tmp_path / "m.onnx"), "--dynamic-batch"])
    assert list(tmp_path.iterdir()) == []


def _modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def test_onnx_export_runs_in_eval_mode_and_leaves_every_module_in_its_own_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MobileViTv2(0.5)  # training mode, with one submodule in eval mode
    next(module for module in model.modules() if isinstance(module, nn.BatchNorm2d)).eval()
    modes = _modes(model)
    assert any(modes) and not all(modes)
    out = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64))
    assert _modes(model) == modes
    x = torch.rand(1, 3, 64, 64)
    reference = MobileViTv2(0.5)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = reference.eval()(x).numpy()
    np.testing.assert_allclose(_run_onnx(Path(out), x), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        export_onnx(model, tmp_path / "bad.onnx", batch_size=0)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "bad.onnx", input_size=(64, 0))
    assert _modes(model) == modes  # failed calls change nothing either
    assert not (tmp_path / "bad.onnx").exists()


def test_aoti_export_runs_in_eval_mode_and_leaves_every_module_in_its_own_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Sequential(nn.Dropout(0.5)).eval())
    modes = _modes(model)
    with pytest.raises(ValueError, match="input_size"):
        export_aoti_package(model, tmp_path / "bad.pt2", input_size=(8,))
    assert _modes(model) == modes
    weight = model[0].weight
    package = load_aoti_package(export_aoti_package(model, tmp_path / "m.pt2", input_size=(8, 8)))  # about 10 s
    assert _modes(model) == modes
    # the package is compiled from a channels-last copy: the caller's parameters keep their object and format
    assert model[0].weight is weight and weight.is_contiguous()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
        torch.testing.assert_close(package(x), expected, atol=1e-5, rtol=1e-5)  # BatchNorm ran on running statistics
    assert _modes(model) == modes


def test_cli_reads_an_official_classification_file_and_refuses_another_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    official = Path(__file__).parent / "data" / "v1_xxs_cls.pt"  # official keys, classifier included
    out = tmp_path / "xxs.onnx"
    argv = ["export", "mobilevit_xxs", "--format", "onnx", "-o", str(out), "--size", "64", "64"]
    assert main([*argv, "--weights", str(official)]) == 0
    printed = capsys.readouterr().out
    # the whole report: the classifier the exported backbone leaves out is named, not dropped silently
    assert "source: cvnets" in printed and "loaded 309 tensors" in printed and "skipped 2 (head weights" in printed
    blob = torch.load(official, weights_only=True)
    model = MobileViT("xxs").eval()
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items() if not k.startswith("classifier.")})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(_run_onnx(out, x), model(x).numpy(), atol=1e-4, rtol=1e-4)
    wrong = ["export", "mobilevit_s", "--format", "onnx", "-o", str(tmp_path / "s.onnx"), "--weights", str(official)]
    assert main(wrong) == 2
    assert "visionkit export: error: the checkpoint (cvnets layout) does not fit" in capsys.readouterr().err


def test_exports_take_the_channels_of_a_wrapped_backbone_and_name_every_output(tmp_path: Path) -> None:
    from visionkit.contrib import ClassificationHead, FeatureExtractor, SSDLiteHead, export_program

    one_channel = nn.Sequential(MobileViT("xxs", in_channels=1), ClassificationHead(320, 10)).eval()
    program = export_program(one_channel, dynamic=False, input_size=(64, 64), batch=1)
    assert program.module()(torch.rand(1, 1, 64, 64)).shape == (1, 10)
    features = FeatureExtractor(MobileViT("xxs", expand_output=False), indices=(3, 4))
    detector = nn.Sequential(features, SSDLiteHead(features.channels, num_classes=5)).eval()
    with pytest.raises(ValueError, match="SSDLiteHead export with fixed height and width"):
        export_onnx(detector, tmp_path / "dynamic.onnx", dynamic=True)
    out = export_onnx(detector, tmp_path / "det.onnx", input_size=(320, 320))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        expected = detector(x)
    for got, want in zip(session.run(None, {"images": x.numpy()}), expected):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_failed_writes_leave_an_earlier_export_whole_and_exports_leave_the_random_state_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MobileViT(mode="xxs").eval()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"an earlier export")

    class _Program:  # what torch.onnx.export returns, failing at its write as on a full disk
        model_proto = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))  # passes the checker

        def save(self, target: str) -> None:
            Path(target).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

    def fail_package(program, package_path: str, **kwargs):
        Path(package_path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: _Program())
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fail_package)
    state = torch.get_rng_state()
    with pytest.raises(OSError, match="No space left"):
        export_onnx(model, path, input_size=(64, 64))
    assert torch.equal(torch.get_rng_state(), state)  # the example input comes from a generator of its own
    package = tmp_path / "m.pt2"
    package.write_bytes(b"an earlier package")
    with pytest.raises(OSError, match="No space left"):
        export_aoti_package(model, package, input_size=(64, 64))
    assert path.read_bytes() == b"an earlier export" and package.read_bytes() == b"an earlier package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]


def test_cli_infers_pt2_from_the_output_name_refuses_unknown_opsets_and_takes_in_channels(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    from visionkit.contrib import export as export_module

    newest = onnx.defs.onnx_opset_version()
    argv = ["export", "mobilevit_xxs", "-o", str(tmp_path / "m.onnx"), "--size", "64", "64"]
    assert main([*argv, "--opset", str(newest + 1)]) == 2
    assert f"opset must be from 17 to {newest}" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    calls = []
    monkeypatch.setattr(export_module, "export_aoti_package",
                        lambda model, path, **kwargs: calls.append((model.in_channels, path)) or str(path))
    assert main(["export", "mobilevit_xxs", "-o", str(tmp_path / "m.pt2"), "--in-channels", "1"]) == 0
    assert calls == [(1, str(tmp_path / "m.pt2"))]  # an AOTInductor package, not an ONNX file named .pt2


def test_a_model_on_the_meta_device_exports() -> None:
    from visionkit.contrib import export_program

    with torch.device("meta"):
        model = MobileViT(mode="xxs").eval()
    program = export_program(model, dynamic=False, input_size=(64, 64))
    assert program.graph_signature.user_outputs


def test_aoti_package_compiles_a_frozen_channels_last_copy_or_the_model_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[dict, list[torch.Tensor]]] = []

    def record_package(program, package_path: str, inductor_configs: dict, **kwargs) -> str:
        weights = [value for value in program.state_dict.values() if value.dim() == 4]
        seen.append((inductor_configs, weights))
        Path(package_path).write_bytes(b"package")
        return package_path

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", record_package)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    export_aoti_package(model, tmp_path / "m.pt2", input_size=(8, 8))
    configs, weights = seen[-1]
    assert configs["freezing"] is True
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert model[0].weight.is_contiguous()  # the caller's model keeps its format
    model.lock = threading.Lock()  # cannot be deep-copied: the model itself is compiled, unchanged
    export_aoti_package(model, tmp_path / "m.pt2", input_size=(8, 8))
    assert seen[-1][0]["freezing"] is True and model[0].weight.is_contiguous()


def test_exports_refuse_before_tracing_what_they_could_only_fail_on_later(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionkit.contrib import export_program

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export ran")

    monkeypatch.setattr(torch.export, "export", no_export)
    model = MobileViT("xxs").eval()
    with pytest.raises(IsADirectoryError, match="ends with a path separator"):
        export_onnx(model, str(tmp_path / "new") + "/", input_size=(64, 64))
    with pytest.raises(ValueError, match="output path is empty"):
        export_onnx(model, "", input_size=(64, 64))
    with pytest.raises(ValueError, match="from 65 to 8192"):
        export_program(model, input_size=(9000, 128))
    with pytest.raises(ValueError, match="batch of at most 1024"):
        export_program(model, input_size=(128, 128), batch=2000)
    with torch.device("meta"):
        meta = MobileViT("xxs").eval()
    for export, name in ((export_onnx, "m.onnx"), (export_aoti_package, "m.pt2")):
        with pytest.raises(ValueError, match="meta device"):
            export(meta, tmp_path / name, input_size=(64, 64))
    argv = ["export", "mobilevit_xxs", "-o"]
    for args, message in (
        ([str(tmp_path / "m.pt2"), "--opset", "17"], "--opset is for --format onnx"),
        ([str(tmp_path / "m.onnx"), "--size", "0", "64"], "--size H W must be 1 or more"),
        ([str(tmp_path / "m.onnx"), "--dynamic", "--size", "64", "64"], "--size H W must be 65 to 8192"),
        ([str(tmp_path / "m.onnx"), "--dynamic", "--size", "9000", "128"], "--size H W must be 65 to 8192"),
    ):
        assert main([*argv, *args]) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_composite_with_a_layer_before_its_backbone_exports_with_its_own_channels() -> None:
    from visionkit.contrib import export_program

    grey = nn.Sequential(nn.Conv2d(1, 3, 1), MobileViT("xxs")).eval()
    grey.in_channels = 1
    program = export_program(grey, dynamic=False, input_size=(64, 64), batch=1)
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(program.module()(x), grey(x))
