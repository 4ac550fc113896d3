"""SSD box decoding and post-processing: offsets to boxes, softmax, threshold, per-class NMS, top-k.

Decoding is the standard SSD one with the official variances (centre 0.1, size 0.2); post-processing follows the
official cvnets v0.2+ inference (confidence threshold, ``top_k`` per class before NMS, per-class NMS, at most
``max_detections`` per image). NMS is :func:`kornia.geometry.bbox.nms`; per-class NMS runs it once per image on
boxes shifted apart by class. This file is an independent implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.core.exceptions import TypeCheckError, ValueCheckError
from kornia.geometry.bbox import nms
from torch import nn

from ._checks import check_positive_finite, check_positive_int, check_real, check_type

__all__ = ["SSDLitePostProcess", "batched_nms", "decode_ssd_boxes"]


def decode_ssd_boxes(
    offsets: torch.Tensor,
    anchors: torch.Tensor,
    center_variance: float = 0.1,
    size_variance: float = 0.2,
) -> torch.Tensor:
    """Decode SSD box offsets against anchors into corner-form boxes ``(x1, y1, x2, y2)``.

    ``cx = dx * cv * wa + cxa``, ``cy = dy * cv * ha + cya``, ``w = exp(dw * sv) * wa``, ``h = exp(dh * sv) * ha``.
    Boxes are in the anchors' units (normalised to ``[0, 1]`` for :class:`SSDAnchorGenerator` anchors).

    Args:
        offsets: :math:`(..., N, 4)` predicted ``(dx, dy, dw, dh)``.
        anchors: :math:`(N, 4)` anchors ``(cx, cy, w, h)``.
        center_variance: centre variance (official 0.1).
        size_variance: size variance (official 0.2).

    Returns:
        :math:`(..., N, 4)` boxes ``(x1, y1, x2, y2)``.

    Raises:
        TypeError: ``offsets`` or ``anchors`` is not a tensor, or a variance is not a number.
        ValueError: the last dimension is not 4, the anchor count differs, or a variance is not positive.

    Example:
        >>> anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
        >>> decode_ssd_boxes(torch.zeros(1, 1, 4), anchors)
        tensor([[[0.4000, 0.3000, 0.6000, 0.7000]]])
    """
    check_type("offsets", offsets, torch.Tensor)
    check_type("anchors", anchors, torch.Tensor)
    center_variance = check_positive_finite("center_variance", center_variance)
    size_variance = check_positive_finite("size_variance", size_variance)
    if offsets.shape[-1] != 4 or offsets.dim() < 2:
        raise ValueCheckError(f"offsets must be (..., N, 4), got shape {tuple(offsets.shape)}")
    if anchors.dim() != 2 or anchors.shape[-1] != 4 or anchors.shape[0] != offsets.shape[-2]:
        raise ValueCheckError(
            f"anchors must be (N, 4) with N = {offsets.shape[-2]} (the offsets' anchor count), "
            f"got shape {tuple(anchors.shape)}"
        )
    size = torch.exp(offsets[..., 2:] * size_variance) * anchors[..., 2:]
    centre = offsets[..., :2] * center_variance * anchors[..., 2:] + anchors[..., :2]
    return torch.cat((centre - size * 0.5, centre + size * 0.5), dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression within each label, with :func:`kornia.geometry.bbox.nms`.

    Boxes of different labels are shifted apart by more than the coordinate span so that they never overlap, then
    one NMS runs over all of them, in float64 whatever the boxes' dtype (the shift reaches tens of thousands, where
    half precision rounds coordinates to multiples of 16 or more). A box without area, or with a coordinate that is
    not finite (an overflowed size offset, for example), overlaps nothing: it is kept and suppresses nothing.

    Args:
        boxes: :math:`(N, 4)` boxes ``(x1, y1, x2, y2)``.
        scores: :math:`(N,)` scores.
        labels: :math:`(N,)` integer labels.
        iou_threshold: boxes of the same label overlapping a better one by IoU above this are dropped.

    Returns:
        Indices of the kept boxes, by decreasing score.

    Raises:
        TypeError: an input is not a tensor, ``labels`` is not an integer tensor, or ``iou_threshold`` is not a
            number.
        ValueError: the shapes do not agree or ``iou_threshold`` is outside ``[0, 1]``.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [1., 1., 10., 10.]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2]), 0.5)
        tensor([0, 2])
    """
    for name, value in (("boxes", boxes), ("scores", scores), ("labels", labels)):
        check_type(name, value, torch.Tensor)
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise ValueCheckError(
            f"boxes must be (N, 4), scores (N,) and labels (N,) with the same N, got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeCheckError(f"labels must be an integer tensor, got dtype {labels.dtype}", actual_type=labels.dtype)
    iou_threshold = _check_fraction("iou_threshold", iou_threshold)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    exact = boxes.double()
    takes_part = (exact[:, 2] > exact[:, 0]) & (exact[:, 3] > exact[:, 1]) & torch.isfinite(exact).all(dim=1)
    # kornia's IoU of two empty boxes is 0/0, and one infinite coordinate would make the shift below infinite for
    # every box: such boxes take no part in the suppression.
    part = torch.nonzero(takes_part).flatten()
    if part.numel() == 0:
        return torch.argsort(scores, descending=True, stable=True)
    within = exact[part]
    span = within.max() - within.min() + 1
    shifted = within + (labels[part].double() * span)[:, None]
    kept = part[nms(shifted, scores[part].double(), float(iou_threshold))]
    if part.numel() == boxes.shape[0]:
        return kept
    kept = torch.cat((kept, torch.nonzero(~takes_part).flatten()))
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    # a sequence, torch.Size, or a tensor / array of two integers
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__"):
        raise TypeCheckError(
            f"image_size must be the (H, W) of the network input, e.g. images.shape[-2:], got {image_size!r}",
            actual_type=type(image_size),
        )
    if len(image_size) != 2:
        raise ValueCheckError(f"image_size must be (H, W), got {image_size!r}", actual_value=image_size)
    return check_positive_int("image height", image_size[0]), check_positive_int("image width", image_size[1])


def _check_fraction(name: str, value: float) -> float:
    number = check_real(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueCheckError(f"{name} must be in [0, 1], got {value!r}", actual_value=value)
    return number


class SSDLitePostProcess(nn.Module):
    """Turn raw SSD outputs into per-image detections in pixel coordinates.

    Per image: decode the boxes, scale them to pixels, softmax over classes, drop the background (class 0), keep
    scores above ``conf_threshold``, keep the ``top_k`` best per class, run per-class NMS, keep the
    ``max_detections`` best. Defaults are the official v0.2+ values. (v0.1 used ``conf_threshold=0.05`` and kept 200
    boxes per class after NMS with no per-image cap; that variant is not reproduced.) Boxes are not clipped to the
    image, as in the official code. Tied scores may be ordered differently from the official code.

    Args:
        conf_threshold: minimum class probability (strictly greater is kept).
        nms_threshold: IoU above which a lower-scored box of the same class is suppressed.
        top_k: candidates per class kept before NMS.
        max_detections: detections kept per image after NMS.
        center_variance: box-coder centre variance.
        size_variance: box-coder size variance.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a threshold outside ``[0, 1]``, or ``top_k`` / ``max_detections`` not a positive int.

    Example:
        >>> post = SSDLitePostProcess(conf_threshold=0.5)
        >>> anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1]])
        >>> logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])  # anchor 0: class 1; anchor 1: background
        >>> out = post(torch.zeros(1, 2, 4), logits, anchors, image_size=(100, 200))
        >>> out[0]["boxes"].round().tolist(), out[0]["labels"].tolist()
        ([[80.0, 30.0, 120.0, 70.0]], [1])
    """

    def __init__(
        self,
        *,
        conf_threshold: float = 0.01,
        nms_threshold: float = 0.5,
        top_k: int = 400,
        max_detections: int = 200,
        center_variance: float = 0.1,
        size_variance: float = 0.2,
    ) -> None:
        super().__init__()
        _check_fraction("conf_threshold", conf_threshold)
        _check_fraction("nms_threshold", nms_threshold)
        check_positive_finite("center_variance", center_variance)
        check_positive_finite("size_variance", size_variance)
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = check_positive_int("top_k", top_k)
        self.max_detections = check_positive_int("max_detections", max_detections)
        self.center_variance = float(center_variance)
        self.size_variance = float(size_variance)

    def _select(self, boxes: torch.Tensor, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        # probs: (N, K) with background at column 0
        anchor_idx, class_idx = torch.nonzero(probs[:, 1:] > self.conf_threshold, as_tuple=True)
        labels = class_idx + 1
        scores = probs[anchor_idx, labels]
        # top_k per class: order by score, then (stably) by class, and rank within each class
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(labels[order], stable=True)]
        sorted_labels = labels[order]
        counts = torch.bincount(sorted_labels, minlength=probs.shape[1])
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=order.device) - first[sorted_labels]
        order = order[rank < self.top_k]
        order = order[torch.argsort(scores[order], descending=True, stable=True)]
        cand_boxes, cand_scores, cand_labels = boxes[anchor_idx[order]], scores[order], labels[order]
        # Greedy NMS decides a box from the better-scored boxes only, so NMS over the best ``m`` candidates gives
        # the first kept boxes exactly; grow ``m`` until ``max_detections`` are kept or every candidate is in.
        total = cand_scores.numel()
        prefix = min(total, 4 * self.max_detections)
        while True:
            keep = batched_nms(
                cand_boxes[:prefix], cand_scores[:prefix], cand_labels[:prefix], self.nms_threshold
            )
            if keep.numel() >= self.max_detections or prefix == total:
                break
            prefix = min(total, 2 * prefix)
        keep = keep[: self.max_detections]
        return {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": cand_labels[keep]}

    def forward(
        self,
        offsets: torch.Tensor,
        logits: torch.Tensor,
        anchors: torch.Tensor,
        image_size: Sequence[int],
    ) -> list[dict[str, torch.Tensor]]:
        """Return one dict per image with ``boxes`` :math:`(M, 4)` ``xyxy`` pixels, ``scores`` :math:`(M,)` and
        ``labels`` :math:`(M,)` (int64, 1 .. K-1), by decreasing score; :math:`M = 0` gives empty tensors. Boxes
        and scores are float32 for float16 or bfloat16 outputs (decoding, softmax and NMS run in float32 or wider).

        Args:
            offsets: :math:`(B, N, 4)` raw box offsets.
            logits: :math:`(B, N, K)` raw class logits, class 0 = background.
            anchors: :math:`(N, 4)` normalised ``(cx, cy, w, h)`` anchors.
            image_size: ``(H, W)`` of the network input, to scale boxes to pixels.

        Raises:
            TypeError: ``offsets``, ``logits`` or ``anchors`` is not a floating-point tensor, or ``image_size`` is
                not a sequence of ints.
            ValueError: the shapes do not agree or ``image_size`` is not two positive ints.
        """
        for name, value in (("offsets", offsets), ("logits", logits), ("anchors", anchors)):
            check_type(name, value, torch.Tensor)
            if not value.is_floating_point():
                raise TypeCheckError(f"{name} must be a floating-point tensor, got dtype {value.dtype}",
                                     actual_type=value.dtype)
        if offsets.dim() != 3 or logits.dim() != 3 or offsets.shape[:2] != logits.shape[:2]:
            raise ValueCheckError(
                f"offsets must be (B, N, 4) and logits (B, N, K) with the same B and N, got "
                f"{tuple(offsets.shape)} and {tuple(logits.shape)}"
            )
        if logits.shape[-1] < 2:
            raise ValueCheckError(f"logits need a background class and at least one class, got {logits.shape[-1]}")
        height, width = _check_image_size(image_size)
        # Half-precision outputs are decoded in float32: bfloat16 would round box corners by pixels and give many
        # tied scores, which change the top-k and NMS order.
        dtype = torch.promote_types(torch.promote_types(offsets.dtype, logits.dtype), torch.float32)
        boxes = decode_ssd_boxes(offsets.to(dtype), anchors.to(dtype), self.center_variance, self.size_variance)
        boxes = boxes * boxes.new_tensor([width, height, width, height])
        probs = torch.softmax(logits.to(dtype), dim=-1)
        return [self._select(boxes[b], probs[b]) for b in range(boxes.shape[0])]
