"""Argument and input validation on top of :mod:`kornia.core.check`.

kornia's check helpers raise :class:`kornia.core.exceptions.ShapeError` / ``TypeCheckError`` /
``ValueCheckError``, which subclass :class:`ValueError` / :class:`TypeError`, so callers can catch the built-ins.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import tempfile
from collections.abc import Collection
from typing import Any, Optional

import torch
from kornia.core.check import KORNIA_CHECK_IS_TENSOR, KORNIA_CHECK_SHAPE, KORNIA_CHECK_TYPE
from kornia.core.exceptions import TypeCheckError, ValueCheckError

__all__ = [
    "check_choice", "check_image", "check_int", "check_output_folder", "check_positive_int",
    "check_positive_int_or_pair", "check_real", "check_same_place", "check_type",
]


def check_type(name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    """Raise ``TypeError`` naming ``name`` when ``value`` is not an instance of ``expected``."""
    if isinstance(value, bool) and expected in (int, float, (int, float)):
        raise TypeCheckError(f"{name} must be a number, got a bool ({value!r})", actual_type=bool)
    KORNIA_CHECK_TYPE(value, expected, f"argument {name!r}")


def check_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int``, or raise ``TypeError`` unless it is an integer: an ``int`` or what converts
    to one exactly (``operator.index``: numpy integers, integer 0-d tensors); not ``bool``, not floats."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeCheckError(f"{name} must be an int, got {value!r}", actual_type=type(value))
    return operator.index(value)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int``, or raise ``TypeError``/``ValueError`` unless it is an integer above zero.

    Integers are ``int`` and what converts to one exactly (``operator.index``: numpy integers, integer 0-d
    tensors); not ``bool``, not floats.
    """
    number = check_int(name, value)
    if number <= 0:
        raise ValueCheckError(f"{name} must be a positive integer, got {value}", actual_value=value)
    return number


def check_positive_int_or_pair(name: str, value: Any) -> int | tuple[int, int]:
    """Return ``value`` as an ``int`` or a pair of them (the forms ``nn.Conv2d`` takes for a stride), or raise
    ``TypeError``/``ValueError`` unless it is a positive integer (:func:`check_positive_int`) or a tuple or list of
    two."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueCheckError(f"{name} must be an int or a pair of ints, got {value!r}", actual_value=value)
        first, second = (check_positive_int(f"{name}[...]", item) for item in value)
        return first, second
    return check_positive_int(name, value)


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` unless it is a real number.

    Real numbers are ``int`` and ``float``, numpy scalars and one-element tensors; not ``bool``.
    """
    if isinstance(value, bool):
        raise TypeCheckError(f"{name} must be a number, got a bool ({value!r})", actual_type=bool)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return float(value)
    raise TypeCheckError(f"{name} must be a real number, got {type(value).__name__} ({value!r})",
                         actual_type=type(value))


def check_positive_finite(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` unless it is a real number (:func:`check_real`) and
    ``ValueError`` unless it is above zero and finite."""
    number = check_real(name, value)
    if not 0 < number < math.inf:  # NaN fails both comparisons
        raise ValueCheckError(f"{name} must be positive and finite, got {value!r}", actual_value=value)
    return number


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` unless it is a real number (:func:`check_real`) and
    ``ValueError`` unless it is in ``[0, 1)`` (a dropout probability)."""
    number = check_real(name, value)
    if not 0.0 <= number < 1.0:  # NaN fails too
        raise ValueCheckError(f"{name} must be in [0, 1), got {value!r}", actual_value=value)
    return number


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` listing the valid ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueCheckError(f"{name} must be one of {valid}; got {value!r}", actual_value=value)


def check_image(x: Any, channels: int) -> None:
    """Validate a batch of images :math:`(B, C, H, W)` with ``C == channels`` and a floating dtype.

    Raises:
        TypeError: ``x`` is not a tensor, or its dtype is not floating point.
        ValueError: ``x`` is not 4-D, its channel count differs from ``channels``, or its height or width is 0.
    """
    KORNIA_CHECK_IS_TENSOR(x, "the input must be a batch of images of shape (B, C, H, W)")
    KORNIA_CHECK_SHAPE(x, ["B", str(channels), "H", "W"])
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueCheckError(f"the input's height and width must be at least 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeCheckError(
            f"the input must be a floating-point tensor (e.g. torch.float32), got dtype {x.dtype}; "
            "convert integer images with x.float() / 255",
            actual_type=x.dtype,
        )


def check_same_place(x: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    """Raise unless ``x`` is on ``weight``'s device and of its dtype, or of a dtype :func:`torch.autocast` casts.

    ``weight`` is a module's first parameter (``next(module.parameters(), None)``), so that the check holds whatever
    layers the module holds now; ``None`` (a module without parameters, e.g. one whose layers were quantized) checks
    nothing and leaves the layers to take or refuse the input.

    Raises:
        ValueError: the devices differ.
        TypeError: the dtypes differ and autocast is off, or the input is float64 (autocast leaves float64 alone).
    """
    if weight is None:
        return
    if x.device != weight.device:
        raise ValueCheckError(
            f"the input is on {x.device} but the model is on {weight.device}; move one with .to()",
            actual_value=x.device,
        )
    if x.dtype != weight.dtype and (x.dtype == torch.float64 or not torch.is_autocast_enabled(x.device.type)):
        # a model can only be converted to a floating-point dtype
        model_advice = f" or the model with model.to({x.dtype})" if x.is_floating_point() else ""
        raise TypeCheckError(
            f"the input has dtype {x.dtype} but the model has dtype {weight.dtype}; convert the input with "
            f"x.to({weight.dtype}){model_advice}",
            actual_type=x.dtype,
        )


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """Raise before slow work (an export, a benchmark run, a conversion) when ``path`` cannot be written as a file.

    Raises:
        ValueError: ``path`` is empty.
        FileNotFoundError: the folder ``path`` would be written into does not exist (for a symbolic link, the folder
            of its target).
        IsADirectoryError: ``path`` itself is an existing folder, or ends with a path separator (names a folder).
        OSError: no file can be created in that folder (``PermissionError`` when it is not writable).
    """
    text = os.fspath(path)
    if not text:
        raise ValueCheckError("the output path is empty; give the path of the file to write", actual_value=text)
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)) and not os.path.isdir(text):
        raise IsADirectoryError(f"{text!r} ends with a path separator, so it names a folder; give the path of the file")
    folder = os.path.dirname(os.path.realpath(path))  # a link is written through, into its target's folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder to write {os.fspath(path)!r} into does not exist: {folder!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)!r} is a folder; give the path of the file to write")
    try:  # a file created and removed at once: the folder's mode alone does not say (root, read-only mounts, /proc)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".", suffix=".probe")
    except OSError as error:
        raise OSError(error.errno, f"cannot create a file in {folder!r} to write {text!r}: {error.strerror}") from error
    os.close(handle)
    os.remove(probe)
