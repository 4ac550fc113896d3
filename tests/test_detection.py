"""SSDLite: official goldens, anchors, decoding, post-processing, every family, gradients, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _cvnets_golden import load_golden, load_official
from kornia.geometry.bbox import nms
from torch import nn

from visionkit.contrib import (
    FeatureExtractor,
    MobileViT,
    MobileViTv2,
    MobileViTv3,
    SSDAnchorGenerator,
    SSDLite,
    SSDLiteHead,
    SSDLitePostProcess,
    batched_nms,
    decode_ssd_boxes,
)

GOLDEN_BACKBONES = {
    "v1_xxs_ssdlite": lambda: MobileViT("xxs", expand_output=False),
    "v2_050_ssdlite": lambda: MobileViTv2(0.5),
}

FAMILIES = {
    "v1_xxs": lambda: MobileViT("xxs", expand_output=False),
    "v2_050": lambda: MobileViTv2(0.5),
    "v3_xxs": lambda: MobileViTv3(mode="xxs", expand_output=False),
    "v3_050": lambda: MobileViTv3(width_multiplier=0.5),
}

OFFICIAL_SIZES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def _detector(make_backbone, num_classes: int = 81, **post) -> SSDLite:
    features = FeatureExtractor(make_backbone(), indices=(3, 4))
    head = SSDLiteHead(features.channels, num_classes=num_classes)
    return SSDLite(features, head, postprocess=SSDLitePostProcess(**post) if post else None)


@pytest.mark.parametrize("name", sorted(GOLDEN_BACKBONES))
def test_official_golden(name: str) -> None:
    blob = load_golden(name)
    detector = _detector(GOLDEN_BACKBONES[name])
    assert detector.backbone is detector.features.backbone
    assert load_official(detector.backbone, detector.head, blob["state_dict"]) == []
    detector.eval()
    images = blob["inputs"]["x_320"].float()
    outputs = blob["outputs"]
    with torch.no_grad():
        features = detector.features(images)
        levels = detector.head.pyramid(features)
        offsets, logits = detector.head.predict(levels)
        _, _, anchors = detector(images)
    # the six pyramid levels (per-channel means, as stored) locate a mismatch before the outputs do
    for i, level in enumerate(levels):
        torch.testing.assert_close(
            level[0].mean(dim=(1, 2)), blob["intermediates"][f"x_320/ssd_head_{i}_input"], atol=3e-4, rtol=1e-4
        )
    assert offsets.shape == (1, 3232, 4) and logits.shape == (1, 3232, 81)
    torch.testing.assert_close(offsets, outputs["box_offsets"], atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(logits, outputs["class_logits"], atol=3e-4, rtol=1e-4)
    assert torch.equal(anchors, outputs["anchors_cxcywh"])
    torch.testing.assert_close(decode_ssd_boxes(offsets, anchors), outputs["boxes_xyxy_decoded"], atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(
        decode_ssd_boxes(outputs["box_offsets"], outputs["anchors_cxcywh"]),
        outputs["boxes_xyxy_decoded"],
        atol=1e-6,
        rtol=0,
    )


def test_sequential_returns_the_raw_outputs() -> None:
    torch.manual_seed(0)
    detector = _detector(FAMILIES["v1_xxs"]).eval()
    model = nn.Sequential(detector.features, detector.head).eval()
    images = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        offsets, logits = model(images)
        ref_offsets, ref_logits, anchors = detector(images)
    torch.testing.assert_close(offsets, ref_offsets)
    torch.testing.assert_close(logits, ref_logits)
    assert anchors.shape[0] == offsets.shape[1]


def test_official_anchors_exact_and_generator_settings() -> None:
    generator = SSDAnchorGenerator()
    anchors = generator(OFFICIAL_SIZES_320)
    assert torch.equal(anchors, load_golden("v1_xxs_ssdlite")["outputs"]["anchors_cxcywh"])
    assert generator.num_anchors_per_location == (6, 6, 6, 6, 6, 4)
    # golden JSON: anchor_sizes_per_os (official float64 values)
    assert generator.sizes[0] == (0.1, 0.16072751268321592)
    assert generator.sizes[5] == (0.8916666666666667, 0.9676001240181814)
    # first location of level 0: min square, max square, then (2, 3) ratio pairs
    first = anchors[:6]
    torch.testing.assert_close(first[:, :2], torch.full((6, 2), 0.025))
    w, h = first[:, 2], first[:, 3]
    torch.testing.assert_close(w * h, torch.tensor([0.01, 0.1607275**2, 0.01, 0.01, 0.01, 0.01]), rtol=1e-5, atol=0)
    torch.testing.assert_close(w[2:] / h[2:], torch.tensor([2.0, 0.5, 3.0, 1 / 3]), rtol=1e-5, atol=0)
    # row-major: the second location of level 0 moves along x
    torch.testing.assert_close(anchors[6, :2], torch.tensor([0.075, 0.025]))
    assert anchors.min() >= 0 and anchors.max() <= 1
    unclipped = SSDAnchorGenerator(clip=False)(OFFICIAL_SIZES_320)
    assert unclipped.max() > 1


def test_feature_sizes_match_the_pyramid() -> None:
    head = SSDLiteHead((64, 80)).eval()
    features = [torch.rand(1, 64, 7, 5), torch.rand(1, 80, 4, 3)]
    with torch.no_grad():
        levels = head.pyramid(features)
    assert [tuple(level.shape[-2:]) for level in levels] == SSDLiteHead.feature_sizes(features)
    assert SSDLiteHead.feature_sizes(features) == [(7, 5), (4, 3), (2, 2), (1, 1), (1, 1), (1, 1)]


def test_decoding_formula() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    offsets = torch.tensor([[[1.0, -2.0, 0.0, 5.0]]])
    # cx = 0.5 + 1 * 0.1 * 0.2, cy = 0.5 - 2 * 0.1 * 0.4, w = 0.2, h = 0.4 * e
    cx, cy, w, h = 0.52, 0.42, 0.2, 0.4 * torch.e
    expected = torch.tensor([[[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]])
    torch.testing.assert_close(decode_ssd_boxes(offsets, anchors), expected)
    with pytest.raises(ValueError, match="anchors"):
        decode_ssd_boxes(offsets, torch.rand(2, 4))


def _logits_for(probabilities: torch.Tensor) -> torch.Tensor:
    return probabilities.log()


def test_postprocess_empty_image_gives_empty_tensors() -> None:
    anchors = SSDAnchorGenerator()(OFFICIAL_SIZES_320)
    logits = torch.zeros(2, 3232, 81)
    logits[..., 0] = 20.0  # background everywhere
    result = SSDLitePostProcess()(torch.zeros(2, 3232, 4), logits, anchors, image_size=(320, 320))
    assert len(result) == 2
    for detections in result:
        assert detections["boxes"].shape == (0, 4) and detections["boxes"].dtype == torch.float32
        assert detections["scores"].shape == (0,)
        assert detections["labels"].shape == (0,) and detections["labels"].dtype == torch.int64
    assert SSDLitePostProcess()(torch.zeros(0, 3232, 4), logits[:0], anchors, (320, 320)) == []


def test_postprocess_threshold_pixels_and_labels() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])
    probs = torch.tensor(
        [
            [0.2, 0.7, 0.1],  # class 1 at 0.7
            [0.5, 0.1, 0.4],  # class 2 at 0.4
            [0.7, 0.15, 0.15],  # nothing above 0.3
        ]
    )
    post = SSDLitePostProcess(conf_threshold=0.3)
    (result,) = post(torch.zeros(1, 3, 4), _logits_for(probs)[None], anchors, image_size=(100, 200))
    assert result["labels"].tolist() == [1, 2]
    torch.testing.assert_close(result["scores"], torch.tensor([0.7, 0.4]))
    torch.testing.assert_close(result["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [10.0, 5.0, 30.0, 15.0]]))
    (strict,) = SSDLitePostProcess(conf_threshold=0.5)(torch.zeros(1, 3, 4), _logits_for(probs)[None], anchors, (1, 1))
    assert strict["labels"].tolist() == [1]


def test_postprocess_nms_is_per_class() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]])
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.1, 0.0, 0.9]]) + 1e-6
    (result,) = SSDLitePostProcess(conf_threshold=0.5)(torch.zeros(1, 3, 4), probs.log()[None], anchors, (10, 10))
    # anchors 0 and 1 overlap (IoU ~0.95) in class 1: one survives; anchor 2 is class 2 and stays
    assert sorted(result["labels"].tolist()) == [1, 2]
    assert result["scores"].min() > 0.85
    (loose,) = SSDLitePostProcess(conf_threshold=0.5, nms_threshold=0.99)(
        torch.zeros(1, 3, 4), probs.log()[None], anchors, (10, 10)
    )
    assert sorted(loose["labels"].tolist()) == [1, 1, 2]


def test_postprocess_top_k_and_max_detections() -> None:
    # 10 disjoint anchors, all class 1 with decreasing probability, plus class 2 on the first one
    centres = torch.arange(10, dtype=torch.float32) / 10 + 0.05
    anchors = torch.stack([centres, torch.full((10,), 0.5), torch.full((10,), 0.05), torch.full((10,), 0.05)], -1)
    probs = torch.zeros(10, 3)
    probs[:, 1] = torch.linspace(0.9, 0.45, 10)
    probs[0, 2] = 0.05
    probs[:, 0] = 1 - probs.sum(-1)
    logits = probs.clamp_min(1e-9).log()[None]
    (top3,) = SSDLitePostProcess(conf_threshold=0.01, top_k=3)(torch.zeros(1, 10, 4), logits, anchors, (1, 1))
    assert top3["labels"].tolist() == [1, 1, 1, 2]
    torch.testing.assert_close(top3["scores"][:3], probs[:3, 1])
    (best2,) = SSDLitePostProcess(conf_threshold=0.01, max_detections=2)(torch.zeros(1, 10, 4), logits, anchors, (1, 1))
    torch.testing.assert_close(best2["scores"], probs[:2, 1])


def _reference_per_class_nms(boxes, probs, conf, iou, top_k):
    """Independent reference: one kornia NMS call per class, as the official loop over classes does."""
    out_boxes, out_scores, out_labels = [], [], []
    for label in range(1, probs.shape[1]):
        mask = probs[:, label] > conf
        scores, idx = probs[mask, label].sort(descending=True)
        scores, cand = scores[:top_k], boxes[mask][idx[:top_k]]
        keep = nms(cand, scores, iou)
        out_boxes.append(cand[keep])
        out_scores.append(scores[keep])
        out_labels.append(torch.full((keep.numel(),), label))
    scores = torch.cat(out_scores)
    order = scores.argsort(descending=True)
    return torch.cat(out_boxes)[order], scores[order], torch.cat(out_labels)[order]


@pytest.mark.parametrize("max_detections", [10, 5000])
def test_postprocess_matches_a_per_class_reference(max_detections: int) -> None:
    torch.manual_seed(0)
    anchors = SSDAnchorGenerator()([(6, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)])
    offsets = torch.randn(1, anchors.shape[0], 4) * 0.5
    logits = torch.randn(1, anchors.shape[0], 6) * 2
    post = SSDLitePostProcess(conf_threshold=0.1, nms_threshold=0.45, top_k=30, max_detections=max_detections)
    (result,) = post(offsets, logits, anchors, (64, 48))
    boxes = decode_ssd_boxes(offsets[0], anchors) * torch.tensor([48.0, 64.0, 48.0, 64.0])
    ref_boxes, ref_scores, ref_labels = _reference_per_class_nms(boxes, logits[0].softmax(-1), 0.1, 0.45, 30)
    assert ref_scores.numel() > 10  # the case exercises NMS, top-k and the cap
    count = min(max_detections, ref_scores.numel())
    torch.testing.assert_close(result["scores"], ref_scores[:count])
    torch.testing.assert_close(result["boxes"], ref_boxes[:count])
    assert torch.equal(result["labels"], ref_labels[:count])


def test_batched_nms_separates_labels_with_negative_coordinates() -> None:
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [-50.0, -50.0, -10.0, -10.0], [-49.0, -50.0, -10.0, -10.0]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 1]), 0.3)
    assert keep.tolist() == [0, 1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch", [0, 1])
def test_every_family_non_square_and_small_batches(family: str, batch: int) -> None:
    # 0.15 lies below every family's largest class probability here (random weights: 0.25-0.3 for v1 and v3), so
    # the per-detection checks below run on detections, not on empty tensors
    detector = _detector(FAMILIES[family], num_classes=5, conf_threshold=0.15).eval()
    images = torch.rand(batch, 3, 128, 96)
    with torch.no_grad():
        offsets, logits, anchors = detector(images)
        sizes = SSDLiteHead.feature_sizes(detector.features(torch.rand(1, 3, 128, 96)))
        detections = detector.detect(images)
    assert anchors.shape == (SSDAnchorGenerator()(sizes).shape[0], 4)
    assert offsets.shape == (batch, anchors.shape[0], 4)
    assert logits.shape == (batch, anchors.shape[0], 5)
    assert torch.isfinite(offsets).all() and torch.isfinite(logits).all()
    assert len(detections) == batch
    for result in detections:
        assert result["scores"].numel() > 0
        assert result["boxes"].shape == (result["scores"].numel(), 4)
        assert ((result["labels"] >= 1) & (result["labels"] < 5)).all()
        assert (result["scores"] > 0.15).all()


@pytest.mark.parametrize("family", ["v1_xxs", "v2_050"])
def test_every_parameter_gets_a_gradient(family: str) -> None:
    torch.manual_seed(0)
    detector = _detector(FAMILIES[family], num_classes=4)
    images = torch.rand(2, 3, 96, 64)

    def backward() -> None:
        detector.zero_grad(set_to_none=True)
        offsets, logits, _ = detector(images)
        targets = torch.randint(0, 4, logits.shape[:2])
        box_loss = F.smooth_l1_loss(offsets, torch.zeros_like(offsets))
        (box_loss + F.cross_entropy(logits.flatten(0, 1), targets.flatten())).backward()

    detector.train()
    backward()
    missing = [n for n, p in detector.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    # In training mode the bias of a depthwise BN that feeds a 1x1 conv and a batch-statistics BN has an exactly
    # zero gradient (the next BN removes any constant shift), as in the official model. With frozen BN
    # statistics (eval mode, the usual detection fine-tuning setup) every head parameter moves.
    detector.eval()
    backward()
    assert [n for n, p in detector.head.named_parameters() if not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize(
    ("make_backbone", "expected"),
    [
        (lambda: MobileViT("xxs", expand_output=False), 1_755_050),
        (lambda: MobileViT("xs", expand_output=False), 2_742_042),
        (lambda: MobileViT("s", expand_output=False), 5_738_826),
        (lambda: MobileViTv2(0.5), 2_035_395),  # golden meta num_params
    ],
    ids=["v1_xxs", "v1_xs", "v1_s", "v2_050"],
)
def test_parameter_counts_match_spec(make_backbone, expected: int) -> None:
    assert sum(p.numel() for p in _detector(make_backbone).parameters()) == expected


def test_projection_layers_only_where_official() -> None:
    # golden JSON proj_layers: v1-XXS heads 0 and 1 (64->512, 80->256); v2-0.5 head 0 only (192->512)
    v1 = SSDLiteHead((64, 80))
    v2 = SSDLiteHead((192, 256))
    shapes_v1 = [None if h.proj_layer is None else tuple(h.proj_layer.block.conv.weight.shape) for h in v1.ssd_heads]
    shapes_v2 = [None if h.proj_layer is None else tuple(h.proj_layer.block.conv.weight.shape) for h in v2.ssd_heads]
    assert shapes_v1 == [(512, 64, 1, 1), (256, 80, 1, 1), None, None, None, None]
    assert shapes_v2 == [(512, 192, 1, 1), None, None, None, None, None]
    assert v1.ssd_heads[0].loc_cls_layer.pw_conv.block.conv.out_channels == 6 * 85
    assert v1.ssd_heads[5].loc_cls_layer.block.conv.out_channels == 4 * 85
    activations = {type(m) for m in v1.modules() if isinstance(m, (nn.ReLU, nn.SiLU))}
    assert activations == {nn.ReLU}


def test_cvnets_keys() -> None:
    head = SSDLiteHead((64, 80))
    assert head.cvnets_prefixes == ("extra_layers.", "ssd_heads.")
    own = set(head.state_dict())
    for key in ("extra_layers.os_-1.1.block.conv.weight", "ssd_heads.5.loc_cls_layer.block.conv.bias"):
        assert head.cvnets_key(key) == key and key in own
    assert head.cvnets_key("encoder.conv_1.block.conv.weight") is None


def test_feature_extractor() -> None:
    extractor = FeatureExtractor(MobileViTv2(0.5), indices=(-2, -1))
    assert extractor.indices == (3, 4) and extractor.channels == (192, 256) and extractor.reductions == (16, 32)
    assert isinstance(extractor.backbone, MobileViTv2)
    with pytest.raises(TypeError, match="forward_intermediates"):
        FeatureExtractor(nn.Conv2d(3, 8, 3), indices=(0,))
    with pytest.raises(ValueError, match="index"):
        FeatureExtractor(MobileViTv2(0.5), indices=(3, 5))
    with pytest.raises(ValueError, match="at least one"):
        FeatureExtractor(MobileViTv2(0.5), indices=())
    with pytest.raises(TypeError, match="indices must be a sequence of ints"):
        FeatureExtractor(MobileViTv2(0.5), indices=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(in_channels=(64,)), ValueError, "2 feature maps"),
        (dict(in_channels=(32, 64, 80)), ValueError, "2 feature maps"),
        (dict(in_channels=(64, 80), num_classes=0), ValueError, "num_classes"),
        (dict(in_channels=(64, 80), num_classes=2.5), TypeError, "num_classes"),
        (dict(in_channels=(64, 80), proj_channels=(512, 256)), ValueError, "proj_channels"),
        (dict(in_channels=(64, 80), aspect_ratios=((2, 3),)), ValueError, "aspect_ratios"),
        (dict(in_channels=(64, 80), aspect_ratios=((2, -3),) * 6), ValueError, "positive"),
    ],
)
def test_head_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        SSDLiteHead(**kwargs)


def test_wrong_inputs_are_clear_errors() -> None:
    head = SSDLiteHead((64, 80)).eval()
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        head([torch.rand(1, 64, 4, 4)])
    with pytest.raises(ValueError, match="80"):
        head([torch.rand(1, 64, 4, 4), torch.rand(1, 96, 2, 2)])
    with pytest.raises(TypeError, match="list of feature maps"):
        head(torch.rand(1, 64, 4, 4))
    # channel mismatch between backbone and head is caught at construction
    features = FeatureExtractor(MobileViTv2(0.5), indices=(3, 4))
    with pytest.raises(ValueError, match="channel mismatch"):
        SSDLite(features, SSDLiteHead((64, 80)))
    with pytest.raises(ValueError, match="feature-map sizes"):
        SSDAnchorGenerator()(OFFICIAL_SIZES_320[:5])
    with pytest.raises(ValueError, match="conf_threshold"):
        SSDLitePostProcess(conf_threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        SSDLitePostProcess(top_k=0)


def test_postprocess_looks_past_suppressed_candidates() -> None:
    # 30 identical class-1 boxes outscore 5 disjoint class-2 boxes: with max_detections=3 the best-scored
    # candidates (the first 4 * 3 = 12) hold only one survivor, so NMS must look further down the list
    same = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).expand(30, 4)
    spread = torch.stack([torch.arange(5) / 5 + 0.1] + [torch.full((5,), 0.1)] * 3, -1)
    anchors = torch.cat([same, spread])
    probs = torch.full((35, 3), 0.01)
    probs[:30, 1] = torch.linspace(0.95, 0.9, 30)
    probs[30:, 2] = torch.linspace(0.8, 0.6, 5)
    probs[:, 0] = 1 - probs[:, 1:].sum(-1)
    post = SSDLitePostProcess(conf_threshold=0.5, max_detections=3)
    (result,) = post(torch.zeros(1, 35, 4), probs.log()[None], anchors, (1, 1))
    assert result["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(result["scores"], torch.stack([probs[0, 1], probs[30, 2], probs[31, 2]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_batched_nms_stays_per_class_in_half_precision_at_high_labels(dtype) -> None:
    # At label 80 the class shift puts coordinates near 26,000, where fp16 steps by 16 and bf16 by 128.
    overlapping = torch.tensor([[100.0, 100.0, 150.0, 150.0], [108.0, 100.0, 158.0, 150.0], [0.0, 0.0, 320.0, 320.0]])
    disjoint = torch.tensor([[100.0, 100.0, 150.0, 150.0], [200.0, 100.0, 250.0, 150.0], [0.0, 0.0, 320.0, 320.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7], dtype=dtype), torch.tensor([80, 80, 1])
    assert batched_nms(overlapping.to(dtype), scores, labels, 0.5).tolist() == [0, 2]  # IoU 0.72 within label 80
    assert batched_nms(disjoint.to(dtype), scores, labels, 0.5).tolist() == [0, 1, 2]


def test_batched_nms_keeps_boxes_without_area_and_lets_them_suppress_nothing() -> None:
    boxes = torch.tensor(
        [[10.0, 10.0, 10.0, 50.0], [0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 20.0, 20.0], [5.0, 5.0, 5.0, 5.0]]
    )
    scores = torch.tensor([0.95, 0.9, 0.8, 0.85])
    keep = batched_nms(boxes, scores, torch.tensor([1, 1, 1, 1]), 0.5)
    assert keep.tolist() == [0, 1, 3]  # box 2 overlaps box 1 (IoU 0.90); the empty boxes 0 and 3 stay


def test_batched_nms_equals_nms_run_label_by_label() -> None:
    torch.manual_seed(0)
    corners = torch.rand(300, 2) * 300
    boxes = torch.cat((corners, corners + 5 + torch.rand(300, 2) * 60), dim=1)
    scores, labels = torch.rand(300), torch.randint(0, 81, (300,))
    expected = []
    for label in labels.unique():
        index = torch.nonzero(labels == label).flatten()
        expected.extend(index[nms(boxes[index], scores[index], 0.45)].tolist())
    expected.sort(key=lambda i: -scores[i].item())
    assert batched_nms(boxes, scores, labels, 0.45).tolist() == expected


def test_a_box_with_an_infinite_coordinate_suppresses_nothing() -> None:
    # One overflowing size offset used to make the class shift infinite and wipe out every other detection.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0], [0.0, 0.0, 1.0, 1.0]])
    boxes[3, 2] = float("inf")
    assert batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.95]), torch.tensor([1, 2, 3, 1]), 0.5).tolist() == [
        3, 0, 1, 2]
    anchors = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])
    logits = torch.tensor([[[-5.0, 5.0, -5.0]] * 3])
    for dtype in (torch.float16, torch.float32):  # both decoded in float32, where exp(500 * 0.2) overflows
        offsets = torch.zeros(1, 3, 4)
        offsets[0, 2, 2] = 500.0
        (result,) = SSDLitePostProcess()(offsets.to(dtype), logits.to(dtype), anchors.to(dtype), (320, 320))
        assert result["boxes"].shape[0] == 3, dtype


def test_half_precision_outputs_are_post_processed_in_float32() -> None:
    torch.manual_seed(0)
    detector = _detector(lambda: MobileViTv2(0.5), num_classes=3, conf_threshold=0.05).eval().to(torch.bfloat16)
    images = torch.rand(1, 3, 128, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        offsets, logits, anchors = detector(images)
    assert offsets.dtype == torch.bfloat16 and anchors.dtype == torch.float32
    with torch.no_grad():
        expected_anchors = detector.anchor_generator(SSDLiteHead.feature_sizes(detector.features(images)))
    assert torch.equal(anchors, expected_anchors)
    (result,) = detector.postprocess(offsets, logits, anchors, (128, 128))
    (expected,) = detector.postprocess(offsets.float(), logits.float(), anchors, (128, 128))
    assert result["boxes"].dtype == torch.float32 and result["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(result[key], expected[key]), key


def test_post_processing_and_nms_check_their_inputs() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    offsets, logits = torch.zeros(1, 1, 4), torch.zeros(1, 1, 3)
    post = SSDLitePostProcess()
    for image_size, error, message in (
        (320, TypeError, "image_size must be the"),
        (None, TypeError, "image_size must be the"),
        (("a", "b"), TypeError, "image height must be an int"),
        ((100.9, 200.9), TypeError, "image height must be an int"),
        ((320, 0), ValueError, "image width must be a positive integer"),
        ((1, 2, 3), ValueError, "image_size must be"),
    ):
        with pytest.raises(error, match=message):
            post(offsets, logits, anchors, image_size)
    assert len(post(offsets, logits, anchors, torch.Size([64, 64]))) == 1
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        post(offsets, logits.long(), anchors, (64, 64))
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match=r"got \(3, 4\), \(2,\) and \(3,\)"):
        batched_nms(boxes, torch.rand(2), torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        batched_nms(boxes, torch.rand(3), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        batched_nms(boxes, torch.rand(3), torch.ones(3, dtype=torch.long), 1.5)
    with pytest.raises(TypeError, match="boxes"):
        batched_nms(boxes.tolist(), torch.rand(3), torch.ones(3, dtype=torch.long), 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="center_variance"):
        decode_ssd_boxes(offsets, anchors, center_variance="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_variance must be positive and finite"):
        decode_ssd_boxes(offsets, anchors, size_variance=float("inf"))


def test_head_parts_and_anchors_check_their_arguments() -> None:
    from visionkit.contrib import SeparableConv

    with pytest.raises(TypeError, match="in_channels must be the channels"):
        SSDLiteHead(64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features must hold 2 maps"):
        SSDLiteHead.feature_sizes([torch.zeros(1, 1, 4, 4)])
    with pytest.raises(TypeError, match="features must be a list or tuple"):
        SSDLiteHead.feature_sizes(torch.zeros(2, 1, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same batch size, got 1 and 2"):
        SSDLiteHead((8, 8))([torch.zeros(1, 8, 4, 4), torch.zeros(2, 8, 2, 2)])
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        SeparableConv(4, 4, stride=0)
    with pytest.raises(TypeError, match="kernel_size"):
        SeparableConv(4, 4, "3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels must be a positive integer, got 0"):
        SeparableConv(0, 4)
    with pytest.raises(TypeError, match="aspect_ratios must be a sequence"):
        SSDAnchorGenerator(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_scale < inf"):
        SSDAnchorGenerator(max_scale=float("inf"))
    with pytest.raises(TypeError, match="feature_sizes must be a sequence"):
        SSDAnchorGenerator()(5)  # type: ignore[arg-type]
