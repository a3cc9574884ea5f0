"""Tests for base and grid anchors (frcnn_lite.anchors, §3.1.1; chapter 3)."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from frcnn_lite.anchors import base_anchors, grid_anchors
from frcnn_lite.backbones import build_backbone
from frcnn_lite.boxes import boxes_inside
from frcnn_lite.config import PAPER, SHAPES

SCALES, RATIOS = (128, 256, 512), (0.5, 1.0, 2.0)


def test_base_anchor_areas_and_ratios():
    base = base_anchors(SCALES, RATIOS)
    assert base.shape == (9, 4) and base.dtype == torch.float32
    w = base[:, 2] - base[:, 0]
    h = base[:, 3] - base[:, 1]
    scales = torch.tensor(SCALES, dtype=torch.float32).repeat(3)  # ratio-major order
    ratios = torch.tensor(RATIOS).repeat_interleave(3)
    assert torch.allclose(w * h, scales ** 2)
    assert torch.allclose(h / w, ratios)
    # Centred on (0, 0).
    assert torch.allclose(base[:, :2] + base[:, 2:], torch.zeros(9, 2), atol=1e-4)


def test_base_anchors_hand_case():
    # Scale 4, ratio 4 (h / w): w = 4 / 2 = 2, h = 4 * 2 = 8.
    assert base_anchors((4,), (4,)).tolist() == [[-1.0, -4.0, 1.0, 4.0]]


def test_base_anchors_match_torchvision():
    # torchvision rounds its base anchors to integers; ours are exact.
    ours = base_anchors(SCALES, RATIOS)
    theirs = AnchorGenerator().generate_anchors(SCALES, RATIOS)
    assert torch.allclose(ours, theirs, atol=0.5)


def test_grid_anchors_order_and_centres():
    base = base_anchors((10,), (1.0,))  # one anchor per cell: a 10x10 box
    anchors = grid_anchors((2, 3), stride=16, base=base)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]  # row, then column
    assert centres.tolist() == expected
    base = base_anchors(SCALES, RATIOS)
    anchors = grid_anchors((4, 5), 16, base)
    i, j, a = 2, 3, 7
    index = (i * 5 + j) * 9 + a
    shift = torch.tensor([(j + 0.5) * 16, (i + 0.5) * 16] * 2)
    assert torch.allclose(anchors[index], base[a] + shift)


def test_grid_anchors_match_torchvision_up_to_half_stride():
    # torchvision puts cell (i, j) at (j * stride, i * stride); we use the cell centre.
    generator = AnchorGenerator(sizes=(SCALES,), aspect_ratios=(RATIOS,))
    feature = torch.zeros(1, 1, 37, 62)
    theirs = generator.grid_anchors([(37, 62)], [[torch.tensor(16), torch.tensor(16)]])[0]
    ours = grid_anchors((37, 62), 16, base_anchors(SCALES, RATIOS))
    assert feature.shape[-2:] == (37, 62)
    assert torch.allclose(ours, theirs + 8, atol=0.5)


def test_paper_anchor_count():
    # §3.3: a 1000x600 image and VGG-16 conv5 -> 62 x 37 x 9 = 20,646 anchors.
    size = build_backbone("vgg16").feature_size((600, 1000))
    assert size == (37, 62)
    anchors = grid_anchors(size, PAPER.stride, PAPER.base_anchors())
    assert anchors.shape == (20646, 4)
    # Counted per base anchor by hand (how many centres fit in x and in y).
    assert int(boxes_inside(anchors, (600, 1000)).sum()) == 8044


def test_shapes_preset():
    assert SHAPES.num_anchors == 12 and PAPER.num_anchors == 9
    size = build_backbone(SHAPES.backbone).feature_size((256, 256))
    assert grid_anchors(size, SHAPES.stride, SHAPES.base_anchors()).shape == (16 * 16 * 12, 4)


def test_dtype_and_device_follow_base():
    base = base_anchors(SCALES, RATIOS, dtype=torch.float64)
    assert grid_anchors((2, 2), 16, base).dtype == torch.float64
    if torch.cuda.is_available():
        base = base_anchors(SCALES, RATIOS, device=torch.device("cuda"))
        assert grid_anchors((2, 2), 16, base).device.type == "cuda"


@pytest.mark.parametrize("scales, ratios, match", [
    ((), (1.0,), "at least one scale and one ratio"),
    ((16,), (), "at least one scale and one ratio"),
    ((0, 16), (1.0,), "scales must be positive"),
    ((-8,), (1.0,), "scales must be positive"),
    ((math.inf,), (1.0,), "scales must be positive and finite"),
    ((16,), (0.0,), r"ratios \(h / w\) must be positive"),
    ((16,), (-1.0, 1.0), r"ratios \(h / w\) must be positive"),
])
def test_base_anchors_bad_input(scales, ratios, match):
    with pytest.raises(ValueError, match=match):
        base_anchors(scales, ratios)


@pytest.mark.parametrize("feature_size", [(0, 5), (5, 0), (0, 0)])
def test_grid_anchors_zero_feature_size(feature_size):
    with pytest.raises(ValueError, match=r"feature_size must be \(H, W\) with H, W >= 1"):
        grid_anchors(feature_size, 16, base_anchors())


@pytest.mark.parametrize("stride", [0, -16, float("nan")])
def test_grid_anchors_bad_stride(stride):
    with pytest.raises(ValueError, match="stride must be positive"):
        grid_anchors((2, 2), stride, base_anchors())


def test_grid_anchors_bad_base():
    with pytest.raises(ValueError, match=r"base must be \(A, 4\)"):
        grid_anchors((2, 2), 16, torch.zeros(9))


def test_anchor_coverage_hand_case():
    from frcnn_lite.anchors import anchor_coverage

    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-5.0, 0.0, 5.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 5.0, 10.0]])
    # Box 0 overlaps anchor 0 in half its area: IoU 0.5. Box 1 lies inside both: 0.5 each.
    assert anchor_coverage(anchors, gt).tolist() == [0.5, 0.5]
    # Inside a 10x10 image, only anchor 0 counts.
    assert anchor_coverage(anchors, gt, (10, 10)).tolist() == [0.5, 0.5]
    assert anchor_coverage(anchors[1:], gt, (10, 10)).tolist() == [0.0, 0.0]
    assert anchor_coverage(anchors, gt[:0]).shape == (0,)
