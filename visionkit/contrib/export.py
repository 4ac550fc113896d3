"""Export a backbone (or any model built from visionkit blocks) to ``torch.export``, ONNX and AOTInductor.

The paths trace the blocks' unconditional resize (see :mod:`visionkit.contrib.blocks`), so one graph serves
every input size when ``dynamic=True``. Patches are unfolded with reshape/permute only: the ONNX graph has no
``Im2Col``/``Col2Im`` and no tensor above rank 5 (Core ML's limit). An AOTInductor package is the exported
program compiled ahead of time into a shared library: it runs without dynamo's guards or Python per kernel,
from Python (:func:`load_aoti_package`) or from C++.

Command line::

    visionkit export mobilevit_xxs --format onnx -o mobilevit_xxs.onnx --dynamic --opset 18
    visionkit export mobilevit_xxs --format pt2 -o mobilevit_xxs.pt2 --fuse --dynamic-batch
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import torch
import torch._inductor
from torch import nn

from ._checks import check_choice, check_output_folder, check_positive_int, check_type
from ._files import replaced_on_success

__all__ = [
    "AOTIPackage",
    "MIN_DYNAMIC_SIZE",
    "export_aoti_package",
    "export_onnx",
    "export_program",
    "load_aoti_package",
    "register",
]

#: Smallest height and width a dynamic export accepts: below it the stride-32 stage has a single patch, a size
#: the symbolic tracer specialises on. Export statically (``dynamic=False``) at the size you need for smaller inputs.
MIN_DYNAMIC_SIZE = 65
_MAX_DYNAMIC_SIZE = 8192
_MAX_DYNAMIC_BATCH = 1024
# metadata keys of an AOTInductor package: the input it was compiled for (batch -1 when dynamic)
_INPUT_SPEC, _INPUT_DTYPE, _INPUT_DEVICE = "visionkit.input_shape", "visionkit.input_dtype", "visionkit.input_device"


def _example_input(model: nn.Module, batch: int, input_size: Sequence[int]) -> torch.Tensor:
    check_type("input_size", input_size, (tuple, list))
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {tuple(input_size)!r}")
    for value in input_size:
        check_positive_int("input_size[...]", value)
    from .backbone import MobileViTBackbone

    # the model's own in_channels first: a composite with a layer before its backbone (a grayscale adapter) sets it
    backbone = next((m for m in model.modules() if isinstance(m, MobileViTBackbone)), None)
    own = getattr(model, "in_channels", None)
    channels = own if isinstance(own, int) else backbone.in_channels if backbone is not None else 3
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    # a private generator: exporting leaves the global random state (dropout masks, data order) alone
    generator = torch.Generator().manual_seed(0)  # on the CPU: meta (and some other) devices have none
    return torch.rand(batch, channels, *input_size, dtype=dtype, generator=generator).to(device)


def _refuse_meta(model: nn.Module) -> None:
    """ONNX and AOTInductor write the weights' values, which a model on the meta device does not have."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "the model's parameters are on the meta device (no values to write): load weights first, e.g. with "
            "load_state_dict(..., assign=True); export_program traces a meta model"
        )


def _channels_last_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with channels-last weights, which compile to faster code; ``model`` itself where it cannot
    be copied (e.g. the old ``weight_norm`` or a lock attribute), so that the caller's model is never changed."""
    try:
        copied = copy.deepcopy(model)
    except Exception:  # deepcopy raises whatever an attribute's __deepcopy__ or __reduce__ raises
        return model
    return copied.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with every module of ``model`` in eval mode, then give each module back its own mode.

    The flags are set directly, as :meth:`torch.nn.Module.train` does, so a model that was in training mode is left
    exactly as it was, also when the block raises.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _dynamic_shapes(input_size: Sequence[int]) -> tuple[dict[int, Any]]:
    if not MIN_DYNAMIC_SIZE <= min(input_size) <= max(input_size) <= _MAX_DYNAMIC_SIZE:
        raise ValueError(
            f"a dynamic export traces at an input_size from {MIN_DYNAMIC_SIZE} to {_MAX_DYNAMIC_SIZE} on both sides, "
            f"got {tuple(input_size)}"
        )
    batch = torch.export.Dim("batch", min=1, max=_MAX_DYNAMIC_BATCH)
    height = torch.export.Dim("height", min=MIN_DYNAMIC_SIZE, max=_MAX_DYNAMIC_SIZE)
    width = torch.export.Dim("width", min=MIN_DYNAMIC_SIZE, max=_MAX_DYNAMIC_SIZE)
    return ({0: batch, 2: height, 3: width},)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=_MAX_DYNAMIC_BATCH)},)


def export_program(
    model: nn.Module, *, dynamic: bool = True, input_size: Sequence[int] = (256, 256), batch: int = 2
) -> torch.export.ExportedProgram:
    """Export ``model`` with :func:`torch.export.export`, with dynamic batch, height and width by default.

    Size-dependent checks the symbolic tracer cannot prove (for example that a size rounded up to a multiple of
    the patch is divisible by its patch count) become runtime assertions instead of export errors; they hold
    for every size.

    Args:
        model: a model taking images :math:`(B, C, H, W)`; put it in eval mode first for inference. :math:`C` of
            the example input is the model's own ``in_channels`` attribute where it has one, else that of the first
            MobileViT backbone inside it, else 3 (set ``in_channels`` on a composite with a layer before its
            backbone).
        dynamic: whether batch, height and width are symbolic (height and width from
            :data:`MIN_DYNAMIC_SIZE` to 8192).
        input_size: ``(height, width)`` of the example input used for tracing.
        batch: batch size of the example input (2 or more when ``dynamic``).

    Returns:
        The exported program; ``program.module()`` runs it.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``input_size`` is not two positive ints (from :data:`MIN_DYNAMIC_SIZE` to 8192 when dynamic),
            ``dynamic`` with ``batch`` 1 or above 1024, or ``dynamic`` with a detection head
            (:class:`~visionkit.contrib.SSDLiteHead`).

    Example:
        >>> from visionkit.contrib import MobileViTv2
        >>> model = MobileViTv2(0.5).eval()
        >>> program = export_program(model, dynamic=False, input_size=(64, 96), batch=1)
        >>> program.module()(torch.rand(1, 3, 64, 96)).shape
        torch.Size([1, 256, 2, 4])
    """
    check_type("model", model, nn.Module)
    check_type("dynamic", dynamic, bool)
    check_positive_int("batch", batch)
    if dynamic and batch > _MAX_DYNAMIC_BATCH:
        raise ValueError(
            f"a dynamic export traces with a batch of at most {_MAX_DYNAMIC_BATCH} (the range of its symbolic "
            f"batch), got batch={batch}"
        )
    if dynamic and batch == 1:
        raise ValueError(
            "a dynamic export traces with a batch of at least 2, got batch=1: torch.export fixes a dimension of "
            "size 1 to 1, so the batch could not stay symbolic; the program traced at batch=2 runs any batch from 1"
        )
    example = _example_input(model, batch, input_size)
    if dynamic:
        from .detection import SSDLiteHead

        if any(isinstance(m, SSDLiteHead) for m in model.modules()):
            raise ValueError(
                "models with an SSDLiteHead export with fixed height and width (dynamic=False; for pt2, "
                "dynamic_batch=True): the head's last map is 1x1 up to 256 pixels and larger above, two graphs "
                "that one symbolic export cannot hold (SSDLite's anchors also follow the map sizes)"
            )
    dynamic_shapes = _dynamic_shapes(input_size) if dynamic else None
    return torch.export.export(
        model, (example,), dynamic_shapes=dynamic_shapes, prefer_deferred_runtime_asserts_over_guards=True
    )


def _check_onnx_model(model_proto: Any, opset: int) -> None:
    """Refuse a graph that onnx's checker rejects, before anything is written.

    PyTorch's exporter writes opset 18 and converts the graph down for an older opset; the conversion can leave an
    operator in a form that opset does not have (an evenly split ``Split`` keeps its opset-18 ``num_outputs``
    attribute, for one), and ONNX Runtime then refuses to load the file.
    """
    import onnx

    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as error:
        reason = str(error).strip().splitlines()[0]
        advice = "; opset 18 (the exporter's own) may work" if opset < 18 else ""
        raise ValueError(f"the exported graph is not valid ONNX at opset {opset}: {reason}{advice}") from None


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    opset: int = 18,
    dynamic: bool = False,
    input_size: Sequence[int] = (256, 256),
    batch_size: int = 1,
) -> str:
    """Write ``model`` to an ONNX file that ONNX Runtime runs.

    The model is exported in eval mode through :func:`export_program` and ``torch.onnx.export(dynamo=True)``;
    afterwards every module of it is back in the mode it was in. The graph has one input ``images``
    :math:`(B, C, H, W)` and one output ``features``, or ``output_0``, ``output_1``, ... when the model returns
    several tensors (e.g. ``nn.Sequential(features, SSDLiteHead(...))``).

    Args:
        model: the model (a backbone, or a backbone with a head).
        path: file to write.
        opset: ONNX opset version, from 17 to the newest the installed onnx package knows.
        dynamic: symbolic batch, height and width (from :data:`MIN_DYNAMIC_SIZE` up); otherwise the graph is
            fixed to ``batch_size`` and ``input_size``.
        input_size: ``(height, width)`` to trace at (the fixed size when not ``dynamic``).
        batch_size: the fixed batch size when not ``dynamic``.

    Returns:
        The path written, as a string.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``opset`` below 17 or above the installed onnx's newest, an invalid ``input_size``,
            ``dynamic`` with a detection head (:class:`~visionkit.contrib.SSDLiteHead` exports with fixed height
            and width only), a graph that onnx's checker rejects (nothing is written then; the conversion to an
            opset below 18 can leave an operator in a form the older opset lacks), a model on the meta device, or
            an empty ``path``.
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder, or ends with a path separator.
    """
    check_type("model", model, nn.Module)
    check_type("path", path, (str, os.PathLike))
    check_type("opset", opset, int)
    check_type("dynamic", dynamic, bool)
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not 17 <= opset <= newest:
        # 17: LayerNormalization and GroupNorm as ops; above the installed onnx's newest the exporter writes a
        # graph that claims an older opset but holds newer operators
        raise ValueError(f"opset must be from 17 to {newest} (the newest the installed onnx knows), got {opset}")
    check_positive_int("batch_size", batch_size)
    path = os.fspath(path)
    _refuse_meta(model)
    check_output_folder(path)  # before exporting, which takes seconds to minutes
    with _eval_mode(model):
        program = export_program(model, dynamic=dynamic, input_size=input_size, batch=2 if dynamic else batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = len(program.graph_signature.user_outputs)
        onnx_program = torch.onnx.export(
            program,
            input_names=["images"],
            output_names=["features"] if outputs == 1 else [f"output_{i}" for i in range(outputs)],
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        if dynamic:  # the graph names its axes as the tracer's symbols (s77, s53, ...) unless told otherwise
            images = onnx_program.model.graph.inputs[0].shape
            onnx_program.rename_axes({images[0]: "batch", images[2]: "height", images[3]: "width"})
    _check_onnx_model(onnx_program.model_proto, opset)
    with replaced_on_success(path) as partial:  # a failed write leaves an earlier export whole
        onnx_program.save(partial)
    return path


def export_aoti_package(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    dynamic_batch: bool = False,
    input_size: Sequence[int] = (256, 256),
    batch_size: int = 1,
) -> str:
    """Compile ``model`` ahead of time with AOTInductor and write the package (a ``.pt2`` file).

    The model is exported in eval mode with :func:`torch.export.export` (afterwards every module of it is back in
    the mode it was in) and compiled by ``torch._inductor.aoti_compile_and_package`` for the device and dtype of
    its parameters, with Inductor's freezing (weights reordered once for oneDNN, BatchNorms folded, oneDNN's matrix
    product for the transformer projections) and from a channels-last copy of the model (the model itself is left
    as it is; a model that cannot be deep-copied is compiled as it is). The
    package holds the weights and a shared library; a call runs no dynamo guards and no Python between the kernels,
    as :func:`torch.compile`'s wrapper does. Compiling takes about 20-40 s per model on a
    2-core CPU and needs the C++ compiler that :func:`torch.compile` needs.

    Height and width are fixed to ``input_size``: with symbolic height and width (what :func:`export_program`
    gives) AOTInductor did not finish compiling MobileViTv2 0.5 in six minutes (torch 2.13, CPU), so that
    is not offered. Export one package per input size, or use :func:`export_onnx` with ``dynamic=True``.

    Args:
        model: the model (a backbone, or a backbone with a head); fuse it first for the fastest package.
        path: file to write; must end in ``.pt2``.
        dynamic_batch: a symbolic batch size (1 to 1024); otherwise the package is fixed to ``batch_size``.
        input_size: the fixed ``(height, width)``.
        batch_size: the fixed batch when not ``dynamic_batch``.

    Returns:
        The path written, as a string; :func:`load_aoti_package` loads it. The package records the input shape,
        dtype and device it was compiled for, and the loaded package checks every input against them.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``path`` does not end in ``.pt2``, an invalid ``input_size`` or ``batch_size``, or a model on
            the meta device.
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    check_type("model", model, nn.Module)
    check_type("path", path, (str, os.PathLike))
    check_type("dynamic_batch", dynamic_batch, bool)
    check_positive_int("batch_size", batch_size)
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"an AOTInductor package path must end in '.pt2', got {path!r}")
    _refuse_meta(model)
    check_output_folder(path)  # before exporting, which takes seconds to minutes
    batch = 2 if dynamic_batch else batch_size
    example = _example_input(model, batch, input_size)
    with _eval_mode(model):
        program = torch.export.export(
            _channels_last_copy(model),
            (example,),
            dynamic_shapes=_dynamic_batch() if dynamic_batch else None,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
    shape = (-1 if dynamic_batch else batch, *example.shape[1:])
    metadata = {
        _INPUT_SPEC: ",".join(str(size) for size in shape),
        _INPUT_DTYPE: str(example.dtype).removeprefix("torch."),
        _INPUT_DEVICE: str(example.device),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with replaced_on_success(path) as partial:  # a failed write leaves an earlier package whole
            torch._inductor.aoti_compile_and_package(
                program, package_path=partial, inductor_configs={"aot_inductor.metadata": metadata, "freezing": True}
            )
    return os.fspath(path)


class AOTIPackage:
    """A loaded AOTInductor package (see :func:`~visionkit.contrib.load_aoti_package`), called like its model.

    The compiled code reads its input as the exact shape, dtype and device it was compiled for and does not check
    them; a wrong input would be read as if it were right. Every call therefore checks the input against the
    specification :func:`~visionkit.contrib.export_aoti_package` stored in the package.

    Attributes:
        input_shape: ``(B, C, H, W)`` the package takes, with ``B`` ``None`` when the batch is dynamic.
        dtype: the input dtype.
        device: the input device (``"cpu"``, ``"cuda:0"``).
    """

    def __init__(self, path: str) -> None:
        try:
            self._compiled = torch._inductor.aoti_load_package(path)
        except RuntimeError as error:  # not a zip archive, or an archive without a compiled model
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"{path!r} is not an AOTInductor package that loads here ({reason}); "
                "write one with export_aoti_package"
            ) from error
        metadata = self._compiled.get_metadata()
        if _INPUT_SPEC not in metadata:
            raise ValueError(
                f"{path!r} holds no input specification: it was not written by export_aoti_package "
                "(load it with torch._inductor.aoti_load_package, which does not check inputs)"
            )
        batch, *rest = (int(size) for size in metadata[_INPUT_SPEC].split(","))
        self.input_shape: tuple[Optional[int], ...] = (None if batch < 0 else batch, *rest)
        self.dtype: torch.dtype = getattr(torch, metadata[_INPUT_DTYPE])
        self.device: str = metadata[_INPUT_DEVICE]

    def _shape_text(self) -> str:
        return "(" + ", ".join("B" if size is None else str(size) for size in self.input_shape) + ")"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_type("x", x, torch.Tensor)
        matches = x.dim() == len(self.input_shape) and all(
            size is None or size == actual for size, actual in zip(self.input_shape, x.shape)
        )
        if not matches:
            raise ValueError(f"this package takes input of shape {self._shape_text()}, got {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != torch.device(self.device):
            raise ValueError(f"this package takes {self.dtype} on {self.device}, got {x.dtype} on {x.device}")
        return self._compiled(x.contiguous())

    def __repr__(self) -> str:
        return f"AOTIPackage(input_shape={self._shape_text()}, dtype={self.dtype}, device={self.device!r})"


def load_aoti_package(path: Union[str, os.PathLike]) -> AOTIPackage:
    """Load a package written by :func:`export_aoti_package`; the result is called like the model.

    Args:
        path: the ``.pt2`` file.

    Returns:
        An :class:`~visionkit.contrib.export.AOTIPackage` taking images :math:`(B, C, H, W)` at the exported
        size, dtype and device (and batch, unless the batch is dynamic) and returning what the model returned.
        Other inputs raise a ``ValueError``.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError: there is no such file.
        ValueError: the file is not an AOTInductor package (a checkpoint or an ONNX file, say) or the package
            was not written by :func:`export_aoti_package`.

    Example:
        >>> import os, tempfile
        >>> from visionkit.contrib import MobileViTv2
        >>> model = MobileViTv2(0.5).eval().fuse()
        >>> with tempfile.TemporaryDirectory() as folder:  # compiles C++: about 20 s
        ...     package = load_aoti_package(export_aoti_package(
        ...         model, os.path.join(folder, "v2.pt2"), input_size=(64, 64)))
        >>> package
        AOTIPackage(input_shape=(1, 3, 64, 64), dtype=torch.float32, device='cpu')
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad():
        ...     torch.allclose(package(x), model(x), atol=1e-4)
        True
        >>> package(torch.rand(1, 3, 96, 64))
        Traceback (most recent call last):
        ...
        ValueError: this package takes input of shape (1, 3, 64, 64), got (1, 3, 96, 64)
    """
    check_type("path", path, (str, os.PathLike))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no AOTInductor package at {path!r}")
    return AOTIPackage(path)


def register(subparsers: Any) -> None:
    """Add the ``export`` command to the ``visionkit`` command line."""
    parser = subparsers.add_parser(
        "export",
        help="export a variant to ONNX or an AOTInductor package",
        description="Export a backbone variant (random weights unless --weights is given) to ONNX (--format onnx) "
        "or compile it ahead of time into an AOTInductor package (--format pt2, fixed height and width).",
    )
    parser.add_argument("model", help="variant short name, e.g. mobilevit_xxs or mobilevitv2_050")
    parser.add_argument("--format", default=None, choices=("onnx", "pt2"),
                        help="output format (default: pt2 for an output ending in .pt2, onnx otherwise)")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--dynamic", action="store_true", help="onnx: symbolic batch, height and width")
    parser.add_argument("--dynamic-batch", action="store_true", help="pt2: symbolic batch (height and width fixed)")
    parser.add_argument("--opset", type=int, default=None,
                        help="onnx: ONNX opset, from 17 to the newest the installed onnx knows (default: 18)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="trace size (default: 256 256)")
    parser.add_argument("--in-channels", type=int, default=3,
                        help="input channels of the backbone, e.g. 1 for grayscale (default: 3)")
    parser.add_argument(
        "--weights", default=None,
        help="checkpoint to load into the backbone first (any layout load_checkpoint reads; strict)",
    )
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions first")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .variants import VARIANTS, build_variant

    check_choice("model", args.model, [v.name for v in VARIANTS])
    if args.format is None:
        args.format = "pt2" if os.fspath(args.output).endswith(".pt2") else "onnx"
    if args.format == "pt2" and args.dynamic:
        raise ValueError("--dynamic (symbolic height and width) is for --format onnx; pt2 takes --dynamic-batch")
    if args.format == "onnx" and args.dynamic_batch:
        raise ValueError("--dynamic-batch is for --format pt2; onnx takes --dynamic (batch, height and width)")
    if args.format == "pt2" and args.opset is not None:
        raise ValueError("--opset is for --format onnx; a pt2 package has no opset")
    if min(args.size) < 1 or (args.dynamic and not MIN_DYNAMIC_SIZE <= min(args.size) <= max(args.size) <= 8192):
        low = MIN_DYNAMIC_SIZE if args.dynamic else 1
        high = " to 8192" if args.dynamic else " or more"
        raise ValueError(f"--size H W must be {low}{high} on both sides{' with --dynamic' if args.dynamic else ''}, "
                         f"got {args.size[0]} {args.size[1]}")
    opset = 18 if args.opset is None else args.opset
    model = build_variant(args.model, in_channels=args.in_channels).eval()
    if args.weights is not None:
        from .checkpoint import load_checkpoint

        report = load_checkpoint(model, args.weights, progress=False)
        print(report)  # what was loaded, and what (a classifier, say) the exported backbone left out
    if args.fuse:
        model.fuse()
    size = tuple(args.size)
    if args.format == "pt2":
        path = export_aoti_package(model, args.output, dynamic_batch=args.dynamic_batch, input_size=size)
        batch = "dynamic batch" if args.dynamic_batch else "batch 1"
        print(f"wrote {path} ({args.model}, AOTInductor package, {batch}, {size[0]}x{size[1]})")
        return 0
    path = export_onnx(model, args.output, opset=opset, dynamic=args.dynamic, input_size=size)
    print(f"wrote {path} ({args.model}, opset {opset}, {'dynamic' if args.dynamic else 'static'})")
    return 0
