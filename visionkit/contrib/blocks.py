"""MobileViT blocks: local convolutions, a transformer over patches, and a fusion.

Patches are unfolded and folded with ``reshape``/``permute`` only (no ``F.unfold``/``F.fold``). In graphs that are
recorded to leave the process (tracing, scripting, ``torch.fx``, :func:`torch.export.export` and so ONNX and
AOTInductor) no tensor is above rank 5, which keeps every exporter (ONNX without Col2Im/Im2Col, Core ML's rank-5
limit) happy. In eager mode and under :func:`torch.compile` the move is one permutation of a rank-6 view: one copy
instead of two, and under Inductor a kernel vectorised along the channels (the rank-5 moves gave a scalar loop).

Sizes that do not divide by the patch follow the official rules:

* :class:`MobileViTBlock` (v1, v3-on-v1) resizes the local features bilinearly (``align_corners=False``) up to a
  multiple of the patch before unfolding, and back to the original size after folding.
* :class:`MobileViTBlockV2` (v2, v3-on-v2) resizes the block *input* bilinearly (``align_corners=True``) up to a
  multiple of the patch and keeps that size: its output is :math:`\\lceil H / p \\rceil \\cdot p`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from kornia.core.exceptions import ValueCheckError
from torch import nn

from ._checks import check_positive_int, check_type
from .attention import LinearAttnFFN, TransformerEncoder
from .layers import ConvLayer, in_function_transform, is_recording

__all__ = ["MobileViTBlock", "MobileViTBlockV2", "fold_patches", "fold_tokens", "unfold_patches", "unfold_tokens"]

Fusion = Literal["input", "local", "none"]


def unfold_tokens(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split a map into non-overlapping patches, channels last: :math:`(B, C, H, W) \\to (B, P, N, C)`.

    :math:`P = p^2` indexes the pixel inside a patch and :math:`N = (H / p)(W / p)` the patch, both row-major,
    exactly as ``F.unfold(x, p, stride=p)`` would order them. ``H`` and ``W`` must be multiples of ``p``. The
    result is contiguous, so ``.reshape(B * P, N, C)`` gives transformer tokens without another copy.

    The channels move last first (a view for a ``channels_last`` input, and a transpose that moves a single axis,
    which ONNX Runtime has a fast kernel for, in an exported graph). In a recorded graph (see the module's
    docstring) the patch pixels then move ahead of the patch grid in two transposes that each keep whole rows of
    channels together, and no intermediate tensor is above rank 5. Otherwise one permutation of the
    :math:`(B, H / p, p, W / p, p, C)` view does the same copy.

    Raises:
        TypeError: ``x`` is not a tensor or ``patch_size`` not an int.
        ValueError: ``x`` is not 4-D, ``H`` or ``W`` is not a multiple of ``patch_size``, or ``patch_size < 1``.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> unfold_tokens(x, 2)[0, :, :, 0]
        tensor([[ 0.,  2.,  8., 10.],
                [ 1.,  3.,  9., 11.],
                [ 4.,  6., 12., 14.],
                [ 5.,  7., 13., 15.]])
    """
    _check_patch_grid(x, patch_size)
    x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    move = _patches_to_front_rank5 if _keeps_rank_five(x) else _patches_to_front
    # Already contiguous unless the grid is degenerate (one patch per row, for example), where a view remains.
    return move(x, patch_size).contiguous()


def _patches_to_front(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """:math:`(B, H, W, C) \\to (B, P, N, C)` as one permutation of the :math:`(B, H / p, p, W / p, p, C)` view."""
    batch, height, width, channels = x.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = x.reshape(batch, grid_h, patch_size, grid_w, patch_size, channels).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, patch_size * patch_size, grid_h * grid_w, channels)


def _patches_to_front_rank5(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """:func:`_patches_to_front` in two moves that keep every tensor at rank 5 or below."""
    batch, height, width, channels = x.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    # (B * H / p, p, W / p, p, C) -> (B * H / p, p, p, W / p, C): the pixel column moves ahead of the patch column.
    x = x.reshape(batch * grid_h, patch_size, grid_w, patch_size, channels).permute(0, 1, 3, 2, 4)
    # (B, H / p, P, W / p * C) -> (B, P, H / p, W / p * C): the pixel moves ahead of the patch row.
    x = x.reshape(batch, grid_h, patch_size * patch_size, grid_w * channels).permute(0, 2, 1, 3)
    return x.reshape(batch, patch_size * patch_size, grid_h * grid_w, channels)


def _patches_to_grid(x: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`_patches_to_front`: :math:`(B, P, N, C) \\to (B, H, W, C)`, one permutation."""
    batch, _, _, channels = x.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = x.reshape(batch, patch_size, patch_size, grid_h, grid_w, channels).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, height, width, channels)


def _patches_to_grid_rank5(x: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`_patches_to_front_rank5`, every tensor at rank 5 or below."""
    batch, _, _, channels = x.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = x.reshape(batch, patch_size * patch_size, grid_h, grid_w * channels).permute(0, 2, 1, 3)
    x = x.reshape(batch * grid_h, patch_size, patch_size, grid_w, channels).permute(0, 1, 3, 2, 4)
    return x.reshape(batch, height, width, channels)


def fold_tokens(x: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`unfold_tokens`: :math:`(B, P, N, C) \\to (B, C, H, W)`.

    The result is a ``channels_last`` view (the memory order of a permuted :math:`(B, H, W, C)` tensor).

    Raises:
        ValueError: the shape of ``x`` does not match ``height``, ``width`` and ``patch_size``.

    Example:
        >>> x = torch.rand(2, 3, 8, 6)
        >>> torch.equal(fold_tokens(unfold_tokens(x, 2), 8, 6, 2), x)
        True
    """
    if _checks_apply(x):
        check_type("x", x, torch.Tensor)
        check_positive_int("patch_size", patch_size)
        if height % patch_size or width % patch_size or x.dim() != 4 or x.shape[1:3] != (
            patch_size * patch_size, (height // patch_size) * (width // patch_size)
        ):
            raise ValueCheckError(
                f"x must be (B, P, N, C) tokens of a {height}x{width} map with patch_size={patch_size} (P = "
                f"patch_size ** 2, N = the number of patches), got shape {tuple(x.shape)}"
            )
    move = _patches_to_grid_rank5 if _keeps_rank_five(x) else _patches_to_grid
    return move(x, height, width, patch_size).permute(0, 3, 1, 2)


def unfold_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split a map into non-overlapping patches: :math:`(B, C, H, W) \\to (B, C, P, N)`.

    The same patches as :func:`unfold_tokens`, channels first; the result is a ``channels_last`` view, which is
    what the 1x1 convolutions of the v2 attention read fastest.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> unfold_patches(x, 2)[0, 0]
        tensor([[ 0.,  2.,  8., 10.],
                [ 1.,  3.,  9., 11.],
                [ 4.,  6., 12., 14.],
                [ 5.,  7., 13., 15.]])
    """
    patches = unfold_tokens(x, patch_size).permute(0, 3, 1, 2)
    if in_function_transform():
        # GroupNorm's vmap rule and its forward-mode derivative refuse this layout (PyTorch limits).
        return patches.contiguous()
    return patches


def fold_patches(x: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: :math:`(B, C, P, N) \\to (B, C, H, W)`.

    Example:
        >>> x = torch.rand(2, 3, 8, 6)
        >>> torch.equal(fold_patches(unfold_patches(x, 2), 8, 6, 2), x)
        True
    """
    if _checks_apply(x):
        check_type("x", x, torch.Tensor)
        if x.dim() != 4:
            raise ValueCheckError(f"x must be (B, C, P, N) patches, got shape {tuple(x.shape)}")
    return fold_tokens(x.permute(0, 2, 3, 1), height, width, patch_size)


def _check_block_sizes(in_channels: int, attn_dim: int, ffn_dim: int, num_layers: int, patch_size: int) -> None:
    for name, value in (
        ("in_channels", in_channels), ("attn_dim", attn_dim), ("ffn_dim", ffn_dim), ("num_layers", num_layers),
        ("patch_size", patch_size),
    ):
        check_positive_int(name, value)


def _keeps_rank_five(x: torch.Tensor) -> bool:
    """Whether the forward is recorded into a graph that may leave the process, whose tensors the patch helpers keep
    at rank 5 or below: TorchScript, ``torch.jit.trace``, :func:`torch.export.export` (hence ONNX, AOTInductor and
    Core ML's converters) or ``torch.fx`` symbolic tracing (``x`` is then a proxy)."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_exporting()
        or isinstance(x, torch.fx.Proxy)
    )


def _checks_apply(x: torch.Tensor) -> bool:
    """Whether the patch helpers check their arguments: in eager mode only (recorded graphs, and FX's symbolic
    proxies, get sizes the blocks already rounded)."""
    return not (is_recording() or isinstance(x, torch.fx.Proxy))


def _check_patch_grid(x: torch.Tensor, patch_size: int) -> None:
    if not _checks_apply(x):
        return
    check_type("x", x, torch.Tensor)
    check_positive_int("patch_size", patch_size)
    if x.dim() != 4 or x.shape[-2] % patch_size or x.shape[-1] % patch_size:
        raise ValueCheckError(
            f"x must be (B, C, H, W) with H and W multiples of patch_size={patch_size}, got shape {tuple(x.shape)}"
        )


def _always_resize(*sizes: int) -> bool:
    # While tracing, or exporting/compiling with symbolic (dynamic) sizes, resize unconditionally (a same-size
    # bilinear resize is an exact identity) rather than branch on the size, so one graph serves every input size.
    # Static exports and compiles see plain ints and keep the cheaper graph without the identity resize.
    if torch.jit.is_tracing():
        return True
    return torch.compiler.is_exporting() and any(isinstance(s, torch.SymInt) for s in sizes)


def _resize_to_multiple(x: torch.Tensor, multiple: int, align_corners: bool) -> torch.Tensor:
    height, width = x.shape[-2:]
    new_height = (height + multiple - 1) // multiple * multiple
    new_width = (width + multiple - 1) // multiple * multiple
    if not _always_resize(height, width) and new_height == height and new_width == width:
        return x
    return F.interpolate(x, size=(new_height, new_width), mode="bilinear", align_corners=align_corners)


class MobileViTBlock(nn.Module):
    """MobileViT block of v1 (``fusion="input"``) and of v3-on-v1 (``fusion="local"``).

    Local representation (``local_rep``): 3x3 conv + BN + SiLU (full in v1, depthwise in v3), then a bias-free
    1x1 conv to the transformer width :math:`d`. Global representation (``global_rep``): ``num_layers``
    :class:`TransformerEncoder` over :math:`(B \\cdot P, N, d)` tokens, then ``LayerNorm(d)``. Projection
    (``conv_proj``): 1x1 conv + BN + SiLU back to :math:`C`. Fusion:

    * ``"input"`` (v1): 3x3 conv + BN + SiLU over ``[x, projected]``; no residual.
    * ``"local"`` (v3): 1x1 conv + BN + SiLU over ``[local, projected]``, plus a residual of ``x``.

    Args:
        in_channels: block channels :math:`C`.
        attn_dim: transformer width :math:`d`.
        ffn_dim: feed-forward hidden width.
        num_layers: number of transformer layers.
        num_heads: attention heads.
        patch_size: patch side :math:`p`.
        dropout: transformer dropout.
        attn_dropout: attention-weight dropout.
        ffn_dropout: dropout inside the feed-forward network.
        local_depthwise: whether the local 3x3 convolution is depthwise.
        fusion: ``"input"`` or ``"local"``, see above.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`

    Example:
        >>> block = MobileViTBlock(48, 64, 128, num_layers=2)
        >>> block(torch.rand(1, 48, 15, 9)).shape
        torch.Size([1, 48, 15, 9])
    """

    def __init__(
        self,
        in_channels: int,
        attn_dim: int,
        ffn_dim: int,
        *,
        num_layers: int,
        num_heads: int = 4,
        patch_size: int = 2,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        local_depthwise: bool = False,
        fusion: Fusion = "input",
    ) -> None:
        super().__init__()
        _check_block_sizes(in_channels, attn_dim, ffn_dim, num_layers, patch_size)
        check_type("local_depthwise", local_depthwise, bool)
        if fusion not in ("input", "local"):
            raise ValueError(f"fusion must be 'input' or 'local', got {fusion!r}")
        self.patch_size = patch_size
        self.fusion_input = fusion
        self.local_rep = nn.Sequential(
            OrderedDict(
                conv_3x3=ConvLayer(in_channels, in_channels, 3, groups=in_channels if local_depthwise else 1),
                conv_1x1=ConvLayer(in_channels, attn_dim, 1, norm=False, act_layer=None),
            )
        )
        layers: list[nn.Module] = [
            TransformerEncoder(
                attn_dim,
                ffn_dim,
                num_heads=num_heads,
                dropout=dropout,
                attn_dropout=attn_dropout,
                ffn_dropout=ffn_dropout,
            )
            for _ in range(num_layers)
        ]
        layers.append(nn.LayerNorm(attn_dim, eps=1e-5))
        self.global_rep = nn.Sequential(*layers)
        self.conv_proj = ConvLayer(attn_dim, in_channels, 1)
        if fusion == "input":
            self.fusion = ConvLayer(2 * in_channels, in_channels, 3)
        else:
            self.fusion = ConvLayer(attn_dim + in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_rep(x)
        height, width = local.shape[-2:]
        patches = _resize_to_multiple(local, self.patch_size, align_corners=False)
        grid_h, grid_w = patches.shape[-2:]
        patches = unfold_tokens(patches, self.patch_size)  # (B, P, N, d)
        batch, pixels, num_patches, dim = patches.shape
        tokens = self.global_rep(patches.reshape(batch * pixels, num_patches, dim))
        global_map = fold_tokens(tokens.reshape(batch, pixels, num_patches, dim), grid_h, grid_w, self.patch_size)
        if _always_resize(height, width) or grid_h != height or grid_w != width:
            global_map = F.interpolate(global_map, size=(height, width), mode="bilinear", align_corners=False)
        projected = self.conv_proj(global_map)
        if self.fusion_input == "input":
            return self.fusion(torch.cat((x, projected), dim=1))
        return x + self.fusion(torch.cat((local, projected), dim=1))


class MobileViTBlockV2(nn.Module):
    """MobileViTv2 block (``fusion="none"``) and the v3-on-v2 block (``fusion="local"``).

    The input is first resized up to a multiple of the patch (bilinear, ``align_corners=True``) and keeps that
    size. Local representation (``local_rep``): depthwise 3x3 conv + BN + SiLU (dilated for dense prediction),
    then a bias-free 1x1 conv to :math:`d`. Global representation (``global_rep``): ``num_layers``
    :class:`LinearAttnFFN` on :math:`(B, d, P, N)`, then ``GroupNorm(1, d)``. Projection (``conv_proj``):

    * ``"none"`` (v2): 1x1 conv + BN, :math:`d \\to C`, no activation, no residual.
    * ``"local"`` (v3): 1x1 conv + BN over ``[global, local]`` (:math:`2d \\to C`), plus a residual of the
      (resized) input.

    Args:
        in_channels: block channels :math:`C`.
        attn_dim: attention width :math:`d`.
        ffn_dim: feed-forward hidden width.
        num_layers: number of attention layers.
        patch_size: patch side :math:`p`.
        dilation: dilation of the local depthwise convolution.
        dropout: dropout after attention and feed-forward.
        attn_dropout: dropout on the context scores.
        ffn_dropout: dropout inside the feed-forward network.
        fusion: ``"none"`` or ``"local"``, see above.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, \\lceil H / p \\rceil p, \\lceil W / p \\rceil p)`

    Example:
        >>> block = MobileViTBlockV2(128, 64, 128, num_layers=2)
        >>> block(torch.rand(1, 128, 15, 9)).shape
        torch.Size([1, 128, 16, 10])
    """

    def __init__(
        self,
        in_channels: int,
        attn_dim: int,
        ffn_dim: int,
        *,
        num_layers: int,
        patch_size: int = 2,
        dilation: int = 1,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        fusion: Fusion = "none",
    ) -> None:
        super().__init__()
        _check_block_sizes(in_channels, attn_dim, ffn_dim, num_layers, patch_size)
        check_positive_int("dilation", dilation)
        if fusion not in ("none", "local"):
            raise ValueError(f"fusion must be 'none' or 'local', got {fusion!r}")
        self.patch_size = patch_size
        self.fuse_local = fusion == "local"
        self.local_rep = nn.Sequential(
            ConvLayer(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvLayer(in_channels, attn_dim, 1, norm=False, act_layer=None),
        )
        layers: list[nn.Module] = [
            LinearAttnFFN(attn_dim, ffn_dim, dropout=dropout, attn_dropout=attn_dropout, ffn_dropout=ffn_dropout)
            for _ in range(num_layers)
        ]
        layers.append(nn.GroupNorm(1, attn_dim, eps=1e-5))
        self.global_rep = nn.Sequential(*layers)
        proj_in = 2 * attn_dim if self.fuse_local else attn_dim
        self.conv_proj = ConvLayer(proj_in, in_channels, 1, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, unprojected = self.forward_before_projection(x)
        if self.fuse_local:
            return x + self.conv_proj(unprojected)
        return self.conv_proj(unprojected)

    def forward_before_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block up to ``conv_proj``: the resized input and the map that ``conv_proj`` takes.

        Args:
            x: the block input :math:`(B, C, H, W)`.

        Returns:
            The input resized to :math:`(B, C, H', W')` (:math:`H', W'` multiples of the patch) and the global map
            :math:`(B, d, H', W')`, or with ``fusion="local"`` the global and local maps stacked,
            :math:`(B, 2d, H', W')`.
        """
        x = _resize_to_multiple(x, self.patch_size, align_corners=True)
        height, width = x.shape[-2:]
        local = self.local_rep(x)
        patches = self.global_rep(unfold_patches(local, self.patch_size))
        global_map = fold_patches(patches, height, width, self.patch_size)
        if self.fuse_local:
            return x, torch.cat((global_map, local), dim=1)
        return x, global_map
