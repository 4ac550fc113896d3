"""Transformer layers of the MobileViT families.

* v1 / v3-on-v1: pre-norm multi-head self-attention over patch tokens, :math:`(B \\cdot P, N, d)`, with a fused
  ``qkv_proj`` and per-token ``LayerNorm`` (:class:`TransformerEncoder`).
* v2 / v3-on-v2: separable (linear) self-attention on :math:`(B, d, P, N)` maps with 1x1 convolutions and
  ``GroupNorm(1, d)`` (:class:`LinearAttnFFN`).

Names follow the official checkpoints: ``pre_norm_mha``/``pre_norm_attn`` and ``pre_norm_ffn`` are
``nn.Sequential`` containers whose indices match the official state dict.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._checks import check_positive_int, check_probability
from .layers import ConvLayer, _runs_unobserved, in_function_transform
from .linear import _inductor_freezes, project

__all__ = ["LinearAttnFFN", "LinearSelfAttention", "MultiHeadAttention", "TransformerEncoder"]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv_proj`` (rows ordered ``[q | k | v]``).

    Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`, so fused kernels avoid
    materialising the :math:`N \\times N` matrix where the backend allows it.

    Args:
        dim: token width :math:`d`; must be divisible by ``num_heads``.
        num_heads: number of attention heads.
        attn_dropout: dropout on the attention weights during training.

    Shape:
        - Input: :math:`(B, N, d)`
        - Output: :math:`(B, N, d)`

    Example:
        >>> attn = MultiHeadAttention(64, num_heads=4)
        >>> attn(torch.rand(2, 16, 64)).shape
        torch.Size([2, 16, 64])
    """

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        check_probability("attn_dropout", attn_dropout)
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim} and num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # (B, N, 3 * heads, head_dim) -> (B, 3 * heads, N, head_dim), then [q | k | v] along the head axis: one
        # rank-4 transpose and a split of contiguous blocks (a rank-5 permute + unbind exports to a slower
        # Transpose/Split/Squeeze chain in ONNX Runtime). The split sizes are explicit: an even split (chunk) exports
        # as a Split with ``num_outputs``, an opset-18 attribute that the conversion to opset 17 keeps, and the file
        # is then invalid.
        # The projections go through visionkit.contrib.linear.project (oneDNN's product in CPU inference); TorchScript
        # compiles only the plain calls.
        qkv = self.qkv_proj(x) if torch.jit.is_scripting() else project(self.qkv_proj, x)
        qkv = qkv.reshape(batch, tokens, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_heads] * 3, dim=1)
        dropout_p = self.attn_dropout if self.training else 0.0
        if torch.jit.is_scripting():
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            out = _attention(q, k, v, dropout_p)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.out_proj(out) if torch.jit.is_scripting() else project(self.out_proj, out)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; under a function transform or forward-mode AD with its math kernel, since
    the CPU flash kernel has no forward-mode derivative (``torch.func.jvp`` and ``jacfwd`` failed on v1)."""
    if not in_function_transform():
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def _check_encoder_arguments(dim: int, ffn_dim: int, dropout: float, ffn_dropout: float) -> None:
    check_positive_int("dim", dim)
    check_positive_int("ffn_dim", ffn_dim)
    check_probability("dropout", dropout)
    check_probability("ffn_dropout", ffn_dropout)


class TransformerEncoder(nn.Module):
    """Pre-norm transformer layer of MobileViT v1: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))``.

    Args:
        dim: token width :math:`d`.
        ffn_dim: hidden width of the feed-forward network.
        num_heads: number of attention heads.
        dropout: dropout after the attention and after the feed-forward network.
        attn_dropout: dropout on the attention weights.
        ffn_dropout: dropout between the two feed-forward linears.

    Shape:
        - Input: :math:`(B, N, d)`
        - Output: :math:`(B, N, d)`

    Example:
        >>> layer = TransformerEncoder(64, 128, num_heads=4)
        >>> layer(torch.rand(2, 16, 64)).shape
        torch.Size([2, 16, 64])
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        *,
        num_heads: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_encoder_arguments(dim, ffn_dim, dropout, ffn_dropout)  # MultiHeadAttention checks the rest
        self.pre_norm_mha = nn.Sequential(
            nn.LayerNorm(dim, eps=1e-5),
            MultiHeadAttention(dim, num_heads, attn_dropout),
            nn.Dropout(dropout),
        )
        self.pre_norm_ffn = nn.Sequential(
            nn.LayerNorm(dim, eps=1e-5),
            nn.Linear(dim, ffn_dim),
            nn.SiLU(),
            nn.Dropout(ffn_dropout),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pre_norm_mha(x)
        if torch.jit.is_scripting():
            return x + self.pre_norm_ffn(x)
        return x + self._feed_forward(x)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``pre_norm_ffn(x)``, with its two linears through :func:`~visionkit.contrib.linear.project`."""
        ffn = self.pre_norm_ffn
        if type(ffn) is not nn.Sequential or len(ffn) != 6 or not _runs_unobserved(ffn):
            return ffn(x)  # a replaced or hooked container runs as itself
        norm, expand, act, hidden_dropout, reduce, out_dropout = ffn
        return out_dropout(project(reduce, hidden_dropout(act(project(expand, norm(x))))))


class LinearSelfAttention(nn.Module):
    """Separable self-attention of MobileViTv2, linear in the number of patches.

    ``qkv_proj`` maps :math:`d` channels to ``1 + 2d``: one context-score channel, then keys, then values. The
    scores are a softmax over the patch axis :math:`N`, separately for each of the :math:`P` pixel positions.

    The keys enter only through their score-weighted sum over :math:`N`, which is linear in the input, so under
    :func:`torch.compile` (not :func:`torch.export.export`, whose graphs keep the official operations) the layer
    weights the input first and projects the :math:`P` sums to keys afterwards:
    :math:`\\sum_n s_n (W_k x_n + b_k) = W_k \\sum_n s_n x_n + b_k \\sum_n s_n`. The key projection then costs
    :math:`d^2 P` rather than :math:`d^2 P N` multiply-adds, nearly half of ``qkv_proj``; results agree to float
    rounding. This needs ``qkv_proj`` as built (a :class:`~visionkit.contrib.layers.ConvLayer` holding only its
    1x1 convolution, without hooks); a replaced or hooked one runs as itself.

    Args:
        dim: channel width :math:`d`.
        attn_dropout: dropout on the context scores during training.

    Shape:
        - Input: :math:`(B, d, P, N)`
        - Output: :math:`(B, d, P, N)`

    Example:
        >>> attn = LinearSelfAttention(64)
        >>> attn(torch.rand(2, 64, 4, 16)).shape
        torch.Size([2, 64, 4, 16])
    """

    def __init__(self, dim: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_probability("attn_dropout", attn_dropout)
        self.dim = dim
        self.qkv_proj = ConvLayer(dim, 1 + 2 * dim, 1, bias=True, norm=False, act_layer=None)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out_proj = ConvLayer(dim, dim, 1, bias=True, norm=False, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv_conv = self._foldable_qkv_conv()
        if qkv_conv is not None:
            return self._attend_with_folded_keys(x, qkv_conv)
        query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)
        # Under bf16/fp16 autocast the softmax over all N tokens and the weighted sum run in fp32 (no-ops in fp32).
        accumulate = torch.promote_types(query.dtype, torch.float32)
        context_scores = self.attn_dropout(F.softmax(query, dim=-1, dtype=accumulate))
        context_vector = (key.to(accumulate) * context_scores).sum(dim=-1, keepdim=True)
        return self.out_proj(F.relu(value) * context_vector.to(value.dtype))

    def _foldable_qkv_conv(self) -> Optional[nn.Conv2d]:
        """``qkv_proj``'s convolution when :func:`torch.compile` traces and ``qkv_proj`` is as built, else None."""
        if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return None
        qkv_proj = self.qkv_proj
        if type(qkv_proj) is not ConvLayer or type(qkv_proj.block) is not nn.Sequential:
            return None
        conv = qkv_proj.block._modules.get("conv")
        if len(qkv_proj.block) != 1 or type(conv) is not nn.Conv2d:
            return None
        if not _runs_unobserved(qkv_proj, qkv_proj.block, conv):
            return None
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.weight.shape[:2] != (1 + 2 * self.dim, self.dim):
            return None
        return conv

    def _attend_with_folded_keys(self, x: torch.Tensor, qkv_conv: nn.Conv2d) -> torch.Tensor:
        """:meth:`forward` with the key projection applied to the score-weighted input (see the class docstring)."""
        dim = self.dim
        weight = qkv_conv.weight.flatten(1)  # (1 + 2d, d)
        bias = qkv_conv.bias if qkv_conv.bias is not None else weight.new_zeros(1 + 2 * dim)
        query_weight, key_weight, value_weight = weight.split([1, dim, dim])
        query_bias, key_bias, value_bias = bias.split([1, dim, dim])
        # One score channel: a sum over the channels, which Inductor fuses into the kernel of the preceding norm.
        query = (x * query_weight.reshape(1, dim, 1, 1)).sum(dim=1, keepdim=True) + query_bias
        value = F.conv2d(x, value_weight.reshape(dim, dim, 1, 1), value_bias)
        accumulate = torch.promote_types(query.dtype, torch.float32)
        context_scores = self.attn_dropout(F.softmax(query, dim=-1, dtype=accumulate))  # (B, 1, P, N)
        weighted_input = (x.to(accumulate) * context_scores).sum(dim=-1)  # (B, d, P)
        key_weight = key_weight.to(accumulate)
        if _inductor_freezes():
            # A copy, which freezing folds into a constant of its own: Inductor's C++ GEMM template (mode
            # "max-autotune", torch 2.13) misreads a frozen weight that starts inside a larger one, as this slice of
            # qkv_proj's weight does, and gave wrong outputs (pytorch/pytorch#143770 is the same bug for bmm).
            key_weight = key_weight.clone()
        # sum_n s_n (W_k x_n + b_k): the scores sum to one, except after dropout, so their sum is kept
        context_vector = torch.matmul(key_weight, weighted_input)
        context_vector = context_vector + key_bias.to(accumulate)[:, None] * context_scores.sum(dim=-1)
        return self.out_proj(F.relu(value) * context_vector.unsqueeze(-1).to(value.dtype))


class LinearAttnFFN(nn.Module):
    """Pre-norm layer of MobileViTv2: ``x + SepAttn(GN(x))`` then ``x + FFN(GN(x))``.

    The norm is ``GroupNorm(1, d)``, which normalises jointly over all :math:`d \\cdot P \\cdot N` values of a
    sample (the official "layer_norm_2d"), with a per-channel affine.

    Args:
        dim: channel width :math:`d`.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout after the attention and after the feed-forward network.
        attn_dropout: dropout on the context scores.
        ffn_dropout: dropout between the two feed-forward convolutions.

    Shape:
        - Input: :math:`(B, d, P, N)`
        - Output: :math:`(B, d, P, N)`

    Example:
        >>> layer = LinearAttnFFN(64, 128)
        >>> layer(torch.rand(2, 64, 4, 16)).shape
        torch.Size([2, 64, 4, 16])
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        *,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_encoder_arguments(dim, ffn_dim, dropout, ffn_dropout)  # LinearSelfAttention checks the rest
        self.pre_norm_attn = nn.Sequential(
            nn.GroupNorm(1, dim, eps=1e-5),
            LinearSelfAttention(dim, attn_dropout),
            nn.Dropout(dropout),
        )
        self.pre_norm_ffn = nn.Sequential(
            nn.GroupNorm(1, dim, eps=1e-5),
            ConvLayer(dim, ffn_dim, 1, bias=True, norm=False, act_layer=nn.SiLU),
            nn.Dropout(ffn_dropout),
            ConvLayer(ffn_dim, dim, 1, bias=True, norm=False, act_layer=None),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pre_norm_attn(x)
        return x + self.pre_norm_ffn(x)
