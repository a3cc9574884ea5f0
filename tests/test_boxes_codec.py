"""Tests for Eq. 2 (frcnn_lite.boxes.encode_boxes / decode_boxes; chapter 4)."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from frcnn_lite.boxes import BBOX_XFORM_CLIP, decode_boxes, encode_boxes


def random_boxes(n, generator, low=10.0, high=300.0):
    """Boxes with sides in [low, high]: size ratios stay under exp(clamp) = 62.5."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 500
    wh = low + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (high - low)
    return torch.cat((xy, xy + wh), dim=1)


def test_hand_case():
    # Anchor: centre (5, 10), 10 x 20. Target: centre (15, 25), 20 x 40.
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 5.0, 25.0, 45.0]])
    deltas = encode_boxes(anchor, target)
    assert torch.allclose(deltas, torch.tensor([[1.0, 0.75, math.log(2), math.log(2)]]))
    weighted = encode_boxes(anchor, target, weights=(10, 10, 5, 5))
    assert torch.allclose(weighted, deltas * torch.tensor([10, 10, 5, 5]))
    assert torch.allclose(decode_boxes(anchor, deltas), target)


def test_identity():
    boxes = random_boxes(20, torch.Generator().manual_seed(0))
    assert torch.equal(encode_boxes(boxes, boxes), torch.zeros(20, 4, dtype=torch.float64))
    assert torch.allclose(decode_boxes(boxes, torch.zeros(20, 4, dtype=torch.float64)), boxes)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_matches_torchvision_boxcoder(weights):
    g = torch.Generator().manual_seed(1)
    anchors, targets = random_boxes(500, g), random_boxes(500, g)
    coder = BoxCoder(weights)
    # torchvision: encode_single(reference_boxes=targets, proposals=anchors).
    expected = coder.encode_single(targets, anchors)
    deltas = encode_boxes(anchors, targets, weights)
    assert torch.allclose(deltas, expected, rtol=1e-6, atol=1e-9)
    expected_boxes = coder.decode_single(deltas, anchors)
    assert torch.allclose(decode_boxes(anchors, deltas, weights), expected_boxes, atol=1e-6)
    # Wild deltas (beyond the clamp) too.
    wild = torch.randn(500, 4, generator=g, dtype=torch.float64) * 40
    assert torch.allclose(decode_boxes(anchors, wild, weights), coder.decode_single(wild, anchors),
                          rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trips(weights):
    g = torch.Generator().manual_seed(2)
    anchors, targets = random_boxes(1000, g), random_boxes(1000, g)
    deltas = encode_boxes(anchors, targets, weights)
    assert torch.allclose(decode_boxes(anchors, deltas, weights), targets, atol=1e-8)
    # The other way round, for deltas inside the clamp (|t_w|, |t_h| <= 3 < log 62.5).
    deltas = (torch.rand(1000, 4, generator=g, dtype=torch.float64) * 6 - 3)
    deltas = deltas * torch.tensor(weights, dtype=torch.float64)
    boxes = decode_boxes(anchors, deltas, weights)
    assert torch.allclose(encode_boxes(anchors, boxes, weights), deltas, atol=1e-8)


def test_float32_round_trip():
    g = torch.Generator().manual_seed(3)
    anchors, targets = random_boxes(1000, g).float(), random_boxes(1000, g).float()
    back = decode_boxes(anchors, encode_boxes(anchors, targets))
    assert torch.allclose(back, targets, atol=1e-3)


def test_clamp_prevents_overflow():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = decode_boxes(anchor, torch.tensor([[0.0, 0.0, 1e4, 1e4]]))
    assert torch.isfinite(boxes).all()
    width = boxes[0, 2] - boxes[0, 0]
    assert math.isclose(float(width), 1000.0, rel_tol=1e-5)  # 16 * exp(log(1000 / 16))
    unclamped = decode_boxes(anchor, torch.tensor([[0.0, 0.0, 1e4, 1e4]]), clamp=math.inf)
    assert not torch.isfinite(unclamped).all()
    assert BBOX_XFORM_CLIP == math.log(1000.0 / 16)


def test_empty():
    empty = torch.zeros(0, 4)
    assert encode_boxes(empty, empty).shape == (0, 4)
    assert decode_boxes(empty, empty).shape == (0, 4)


def test_gradients_flow():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.zeros(1, 4, requires_grad=True)
    decode_boxes(anchors, deltas).sum().backward()
    assert deltas.grad is not None and torch.isfinite(deltas.grad).all()


@pytest.mark.parametrize("fn", [encode_boxes, decode_boxes])
def test_mismatched_counts(fn):
    with pytest.raises(ValueError, match="reference has 3 boxes but .* has 2"):
        fn(torch.ones(3, 4), torch.ones(2, 4))


@pytest.mark.parametrize("fn", [encode_boxes, decode_boxes])
@pytest.mark.parametrize("shape", [(3, 5), (3,), (1, 3, 4)])
def test_bad_shapes(fn, shape):
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    with pytest.raises(ValueError, match=r"must have shape \(N, 4\)"):
        fn(good, torch.zeros(shape))
    with pytest.raises(ValueError, match=r"reference boxes must have shape \(N, 4\)"):
        fn(torch.zeros(shape), good)


@pytest.mark.parametrize("fn", [encode_boxes, decode_boxes])
@pytest.mark.parametrize("bad", [[5.0, 0.0, 5.0, 10.0], [0.0, 5.0, 10.0, 5.0],
                                 [10.0, 0.0, 0.0, 10.0]])
def test_zero_width_reference(fn, bad):
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0], bad])
    with pytest.raises(ValueError, match=r"reference\[1\] .* zero or negative width or height"):
        fn(reference, torch.ones(2, 4))
    fn(reference, torch.ones(2, 4), validate=False)  # hot paths may skip the check
