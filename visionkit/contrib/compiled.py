"""Compile a model for inference: :func:`torch.compile` with frozen parameters and channels-last weights."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch import nn

from ._checks import check_type

__all__ = ["CompiledInference", "compile_for_inference"]


@contextlib.contextmanager
def _frozen_parameters() -> Iterator[None]:
    """Turn on Inductor's freezing for the duration of a call (dynamo reads it while tracing, Inductor compiling)."""
    from torch._inductor import config

    previous = config.freezing
    config.freezing = True
    try:
        yield
    finally:
        config.freezing = previous


def _own_entry_point(model: nn.Module) -> Callable[..., Any]:
    """A function that calls ``model``, with a code object of its own for :func:`torch.compile` to start from.

    Dynamo keeps its compiled graphs, and counts recompilations against ``torch._dynamo.config.recompile_limit``,
    per code object of the frame it starts tracing at. A compiled module starts at its class's ``forward``, which
    every model of the class shares, so with ``fullgraph=True`` the ninth model compiled in a process (or the ninth
    input shape over all of them) failed. A copy of the code object per compilation gives each compiled model its own
    graphs and its own limit.
    """

    def call_model(*args: Any, **kwargs: Any) -> Any:
        return model(*args, **kwargs)

    code = call_model.__code__.replace()
    return types.FunctionType(code, call_model.__globals__, call_model.__name__, None, call_model.__closure__)


class CompiledInference:
    """A model compiled by :func:`compile_for_inference`; call it as the model, without gradients.

    An input the model rejects raises the model's own error (the model is run eagerly to get it: with
    ``fullgraph=True`` dynamo reports any ``raise`` as an unsupported construct). Each compiled model keeps its own
    compiled graphs: with ``dynamic=False`` one per input shape, up to ``torch._dynamo.config.recompile_limit``
    shapes (8 by default). Past them, a call raises a ``RuntimeError`` that says so (with the default
    ``fullgraph=True``; with ``fullgraph=False`` dynamo warns and runs the model eagerly). It is a callable, not an
    ``nn.Module``: the compiled code holds the weights of its first call, so moving the model, changing its mode or
    loading a state dict are done on :attr:`model`, followed by a new :func:`compile_for_inference`.

    Attributes:
        model: the model that was compiled (its weights converted to channels-last memory format).
    """

    def __init__(self, model: nn.Module, compiled: Any) -> None:
        self.model = model
        self._compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            try:
                with _frozen_parameters():
                    return self._compiled(*args, **kwargs)
            except torch._dynamo.exc.Unsupported as unsupported:
                # With fullgraph=True dynamo refuses to trace any ``raise``, so an input the model rejects surfaces
                # as "Observed exception". The model run eagerly raises its own TypeError/ValueError instead.
                try:
                    self.model(*args, **kwargs)
                except Exception as error:
                    raise error from None
                raise unsupported
            except torch._dynamo.exc.FailOnRecompileLimitHit as limit:
                shapes = [tuple(arg.shape) for arg in args if isinstance(arg, torch.Tensor)]
                raise RuntimeError(
                    f"this compiled model already holds graphs for torch._dynamo.config.recompile_limit = "
                    f"{torch._dynamo.config.recompile_limit} input shapes and would need another for {shapes}: "
                    "bring inputs to fewer sizes (resize or pad them) or raise that limit"
                ) from limit

    def __repr__(self) -> str:
        return f"CompiledInference({type(self.model).__name__})"


def compile_for_inference(
    model: nn.Module,
    *,
    dynamic: Optional[bool] = False,
    mode: Optional[str] = None,
    fullgraph: bool = True,
    cpp_wrapper: Optional[bool] = None,
    model_guards: bool = False,
) -> CompiledInference:
    """Compile ``model`` with :func:`torch.compile` for inference, with its parameters frozen into the code.

    Five things beyond a plain ``torch.compile(model)``, which together made batch-1 calls faster on the benchmark's
    machine:

    * Inductor's freezing (``torch._inductor.config.freezing``, turned on around every call of the result, since
      dynamo reads it while tracing): parameters become constants, so convolution and matrix-product weights are
      reordered once for oneDNN and BatchNorms folded at compile time, and a backbone's consecutive 1x1
      convolutions are composed into one where that saves work (:mod:`~visionkit.contrib.composition`);
    * the model's 4-D weights are converted to channels-last memory format (in place, as
      :meth:`~torch.nn.Module.to` does);
    * with frozen parameters the transformer projections (:func:`~visionkit.contrib.linear.project`) are compiled to
      oneDNN's matrix product rather than the BLAS one;
    * for a model on the CPU, Inductor's C++ wrapper (``torch._inductor.config.cpp_wrapper``): the compiled graph
      calls its kernels and oneDNN operations from C++ rather than one Python call per operation;
    * dynamo does not check the model's attributes at each call: its guards on modules are dropped with
      ``torch.compiler.skip_guard_on_all_nn_modules_unsafe``. A compiled MobileViT-XXS has about 2,100 such checks
      (118 others remain), which cost a few percent of a batch-1 call. The guards on the inputs (shape, strides,
      dtype, device) and on global state (grad mode, autocast) stay, so a new input shape still compiles a new graph.

    Calls run without gradients (``torch.no_grad``). The compiled code is a snapshot of the model at the first call
    (and at any recompilation): changing its weights, mode or other attributes afterwards does not change the
    results, so compile again after loading other weights or changing the model. Fuse the model first
    (:meth:`~visionkit.contrib.MobileViTBackbone.fuse`) for the same graph without BatchNorms. Compiling needs the
    C++ compiler that :func:`torch.compile` needs on CPU.

    Args:
        model: the model, in eval mode.
        dynamic: passed to :func:`torch.compile`; ``False`` compiles for the exact input shape (and again for each
            new shape). ``True`` is slow to compile with torch 2.13: for MobileViTv2 0.5 the first compilation had
            not finished after 8 minutes, Inductor's C++ code generation simplifying the symbolic strides of the
            downsampled sizes.
        mode: a :func:`torch.compile` mode (``None`` is its default mode); its Inductor options
            (``torch._inductor.list_mode_options``) are merged with freezing into ``torch.compile``'s ``options``,
            since it takes a mode or options, not both. ``"max-autotune"`` compiles for about a minute per backbone
            and took 0.96-1.01x of the default mode's time on the benchmark's machine (batch 1, 256x256; ``python
            benchmarks/compile_options.py --option max_autotune``).
        fullgraph: passed to :func:`torch.compile`; every visionkit backbone compiles as one graph.
        cpp_wrapper: whether to use Inductor's C++ wrapper; ``None`` uses it when every parameter and buffer of
            ``model`` is on the CPU (where it was measured) and otherwise leaves Inductor's own setting.
        model_guards: keep dynamo's guards on the model's modules, so that a call after a change of a module
            attribute (its mode, a setting read in ``forward``) compiles again rather than running the snapshot.
            Weights are constants of the compiled code either way.

    Returns:
        The compiled model, called like ``model``; compilation happens at the first call.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or another argument has the wrong type.
        ValueError: ``model`` or one of its submodules is in training mode, or ``mode`` is not a mode of
            :func:`torch.compile`.

    Example:
        >>> from visionkit.contrib import MobileViT, compile_for_inference
        >>> model = MobileViT(mode="xxs").eval().fuse()
        >>> compiled = compile_for_inference(model)
        >>> compiled
        CompiledInference(MobileViT)
    """
    check_type("model", model, nn.Module)
    check_type("dynamic", dynamic, (bool, type(None)))
    check_type("mode", mode, (str, type(None)))
    check_type("fullgraph", fullgraph, bool)
    check_type("cpp_wrapper", cpp_wrapper, (bool, type(None)))
    check_type("model_guards", model_guards, bool)
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        listed = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise ValueError(
            f"compile_for_inference needs a model in eval mode: call model.eval() first (in training mode: {listed})"
        )
    # The "freezing" option does not turn freezing on by itself (dynamo reads the global flag, which every call sets),
    # but it gives this compilation a backend of its own: a plain torch.compile of the same module never shares its
    # cached graphs. torch.compile takes a mode or options, not both, so the mode's options are merged in (and an
    # unknown mode raises here, before the model is touched).
    from torch._inductor import list_mode_options

    modes = list(list_mode_options())
    if mode is not None and mode not in modes:
        raise ValueError(f"mode must be None or one of torch.compile's modes {modes}, got {mode!r}")
    options = {**list_mode_options(mode or "default", dynamic), "freezing": True}
    if cpp_wrapper is None and all(tensor.device.type == "cpu" for tensor in (*model.parameters(), *model.buffers())):
        cpp_wrapper = True
    if cpp_wrapper is not None:
        options["cpp_wrapper"] = cpp_wrapper
    if not model_guards:
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    compiled = torch.compile(_own_entry_point(model), fullgraph=fullgraph, dynamic=dynamic, options=options)
    model.to(memory_format=torch.channels_last)
    return CompiledInference(model, compiled)
