"""Anchor labelling (§3.1.2) and mini-batch sampling (§3.1.3): chapter 5.

Each labelling rule gets a hand-built case whose IoUs can be checked by eye
(GT box areas and overlaps are exact in float32), plus torchvision's Matcher
as an oracle on random boxes.
"""

import pytest
import torch
from torchvision.models.detection._utils import Matcher

from frcnn_lite.anchors import (IGNORED, NEGATIVE, POSITIVE, base_anchors, grid_anchors,
                                label_anchors, sample_anchors)

P, N, I = POSITIVE, NEGATIVE, IGNORED
BIG = (100, 100)  # an image large enough that no anchor below crosses its border


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_at_least_fg_iou_is_positive_and_exactly_0p7_counts():
    gt = t([[0, 0, 10, 7]])  # area 70
    anchors = t([[0, 0, 10, 7],      # IoU 1: the best anchor
                 [0, 0, 10, 10],     # IoU 70 / 100 = 0.7 exactly: positive (>= 0.7)
                 [0, 0, 10, 10.5],   # IoU 70 / 105 = 0.667: ignored
                 [50, 50, 60, 60]])  # IoU 0: negative
    labels, matched = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, P, I, N]
    assert labels.dtype == torch.int64 and matched.dtype == torch.int64
    assert matched.tolist() == [0, 0, 0, 0]


def test_below_bg_iou_is_negative_and_exactly_0p3_is_ignored():
    gt = t([[0, 0, 10, 3]])  # area 30
    anchors = t([[0, 0, 10, 3],      # IoU 1: positive
                 [0, 0, 10, 10],     # IoU 30 / 100 = 0.3 exactly: not < 0.3, so ignored
                 [0, 0, 10, 11],     # IoU 30 / 110 = 0.27: negative
                 [50, 50, 60, 60]])  # IoU 0: negative
    labels, _ = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, I, N, N]


def test_negative_needs_low_iou_with_every_gt_box():
    gt = t([[0, 0, 10, 10], [40, 40, 50, 50]])
    anchors = t([[0, 0, 10, 10], [40, 40, 50, 50],
                 [40, 40, 50, 55]])  # IoU 0 with box 0 but 100/150 = 0.667 with box 1: ignored
    labels, matched = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, P, I]
    assert matched.tolist() == [0, 1, 1]


def test_best_anchor_of_each_gt_is_positive_even_below_thresholds():
    gt = t([[0, 0, 10, 10]])
    anchors = t([[0, 0, 20, 20],     # IoU 100 / 400 = 0.25 < 0.3, but the best: positive
                 [0, 0, 40, 40]])    # IoU 1 / 16: negative
    labels, _ = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, N]


def test_best_anchor_ties_are_all_positive():
    gt = t([[10, 10, 20, 20]])
    anchors = t([[10, 10, 20, 30],   # IoU 0.5
                 [10, 0, 20, 20],    # IoU 0.5
                 [0, 10, 20, 20],    # IoU 0.5
                 [10, 10, 20, 40]])  # IoU 1/3: ignored
    labels, _ = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, P, P, I]


def test_best_anchor_rule_per_gt_box_and_matched_index():
    # Box 1 is covered at 0.5 at best; its best anchor is positive and matched to it.
    gt = t([[0, 0, 10, 10], [30, 30, 40, 40]])
    anchors = t([[0, 0, 10, 10], [30, 30, 40, 50], [60, 60, 70, 70]])
    labels, matched = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [P, P, N]
    assert matched[:2].tolist() == [0, 1]


def test_gt_box_that_no_anchor_touches_gets_no_positive():
    gt = t([[80, 80, 90, 90]])
    anchors = t([[0, 0, 10, 10], [20, 20, 30, 30]])
    labels, _ = label_anchors(anchors, gt, BIG)
    assert labels.tolist() == [N, N]


def test_border_anchors_are_ignored_and_never_the_best():
    gt = t([[0, 0, 15, 10]])
    anchors = t([[-5, 0, 15, 10],    # IoU 150 / 200 = 0.75, but crosses the left border
                 [0, 0, 20, 20],     # inside, touching the border: IoU 150 / 400 = 0.375, the best inside
                 [0, 0, 20, 21],     # crosses the bottom border by 1 px (IoU 0.357)
                 [5, 5, 10, 10],     # inside, IoU 25 / 150 = 0.17: negative
                 [12, 12, 20, 21]])  # crosses the bottom border by 1 px, IoU 0
    labels, _ = label_anchors(anchors, gt, (20, 20))
    assert labels.tolist() == [I, P, I, N, I]
    # Without the border rule (e.g. at test time) the crossing anchor wins.
    labels, _ = label_anchors(anchors, gt, (20, 20), allowed_border=float("inf"))
    assert labels.tolist() == [P, I, I, N, N]
    # allowed_border tolerates a few pixels, as py-faster-rcnn's allowed_border does.
    labels, _ = label_anchors(anchors, gt, (20, 20), allowed_border=1.0)
    assert labels.tolist() == [I, P, I, N, N]


def test_empty_ground_truth_all_inside_anchors_negative():
    anchors = t([[0, 0, 10, 10], [-5, 0, 10, 10], [5, 5, 20, 20]])
    labels, matched = label_anchors(anchors, torch.zeros(0, 4), (20, 20))
    assert labels.tolist() == [N, I, N]
    assert matched.tolist() == [0, 0, 0]
    sampled = sample_anchors(labels)
    assert (sampled == P).sum() == 0 and (sampled == N).sum() == 2


def test_label_anchors_matches_torchvision_matcher():
    g = torch.Generator().manual_seed(0)
    anchors = grid_anchors((12, 12), 16, base_anchors((16, 32, 64), (0.5, 1.0, 2.0)))  # (1296, 4)
    xy = torch.rand(6, 2, generator=g) * 120
    gt = torch.cat([xy, xy + 8 + torch.rand(6, 2, generator=g) * 60], dim=1)  # inside 192x192
    labels, matched = label_anchors(anchors, gt, (192, 192), allowed_border=float("inf"))
    tv = Matcher(0.7, 0.3, allow_low_quality_matches=True)(torchvision_iou(gt, anchors))
    expected = torch.full_like(labels, I)
    expected[tv == Matcher.BELOW_LOW_THRESHOLD] = N
    expected[tv >= 0] = P
    assert torch.equal(labels, expected)
    assert torch.equal(matched[tv >= 0], tv[tv >= 0])
    assert (labels == P).sum() >= 6  # at least one per box


def torchvision_iou(a, b):
    import torchvision
    return torchvision.ops.box_iou(a, b)


def test_labels_on_a_dataset_image_every_box_gets_a_positive():
    from frcnn_lite.datasets import ShapesDataset

    _, target = ShapesDataset("train", 3)[0]
    anchors = grid_anchors((16, 16), 16, base_anchors((16, 32, 64, 128), (0.5, 1.0, 2.0)))
    labels, matched = label_anchors(anchors, target["boxes"], (256, 256))
    assert set(matched[labels == P].tolist()) == set(range(len(target["boxes"])))


# -- sampling (§3.1.3) -----------------------------------------------------------
def make_labels(num_pos, num_neg, num_ignored=100):
    labels = torch.tensor([P] * num_pos + [N] * num_neg + [I] * num_ignored)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def counts(labels):
    return int((labels == P).sum()), int((labels == N).sum()), int((labels == I).sum())


def test_sample_128_positives_and_128_negatives():
    labels = make_labels(1000, 1000)
    sampled = sample_anchors(labels, generator=torch.Generator().manual_seed(0))
    assert counts(sampled) == (128, 128, 2100 - 256)
    # Sampled anchors keep their label; the input is not modified.
    kept = sampled >= 0
    assert torch.equal(sampled[kept], labels[kept])
    assert counts(labels) == (1000, 1000, 100)


def test_fewer_positives_all_kept_and_padded_with_negatives():
    labels = make_labels(50, 1000)
    sampled = sample_anchors(labels)
    assert counts(sampled) == (50, 206, 1150 - 256)
    assert torch.equal(sampled == P, labels == P)  # every positive is kept


def test_few_anchors_of_both_kinds_all_kept():
    labels = make_labels(50, 100)
    assert counts(sample_anchors(labels)) == (50, 100, 100)


def test_sampling_other_sizes_and_reproducibility():
    labels = make_labels(1000, 1000)
    assert counts(sample_anchors(labels, 64, 0.25))[:2] == (16, 48)
    a = sample_anchors(labels, generator=torch.Generator().manual_seed(3))
    b = sample_anchors(labels, generator=torch.Generator().manual_seed(3))
    c = sample_anchors(labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- bad input -------------------------------------------------------------------
ANCHORS = t([[0, 0, 10, 10], [5, 5, 15, 15]])


def test_gt_outside_the_image_is_rejected():
    with pytest.raises(ValueError, match="outside the image"):
        label_anchors(ANCHORS, t([[0, 0, 30, 10]]), (20, 20))
    with pytest.raises(ValueError, match="outside the image"):
        label_anchors(ANCHORS, t([[-3, 0, 10, 10]]), (20, 20))


def test_degenerate_and_nan_gt_boxes_are_rejected():
    with pytest.raises(ValueError, match="degenerate"):
        label_anchors(ANCHORS, t([[5, 5, 5, 10]]), (20, 20))  # zero width
    with pytest.raises(ValueError, match="degenerate"):
        label_anchors(ANCHORS, t([[10, 10, 5, 5]]), (20, 20))  # x2 < x1
    with pytest.raises(ValueError, match="NaN"):
        label_anchors(ANCHORS, t([[0, 0, float("nan"), 5]]), (20, 20))


def test_wrong_shapes_and_dtypes_are_rejected():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        label_anchors(ANCHORS, t([0, 0, 5, 5]), (20, 20))
    with pytest.raises(TypeError, match="floating-point"):
        label_anchors(ANCHORS, torch.tensor([[0, 0, 5, 5]]), (20, 20))


def test_mismatched_devices_are_rejected():
    # The 'meta' device stands in for a GPU on a machine without one.
    with pytest.raises(ValueError, match="one device"):
        label_anchors(ANCHORS, t([[0, 0, 5, 5]]).to("meta"), (20, 20))
    with pytest.raises(ValueError, match="one device"):
        label_anchors(ANCHORS.to("meta"), t([[0, 0, 5, 5]]), (20, 20))


def test_sample_anchors_bad_arguments():
    with pytest.raises(ValueError, match=r"\(N,\)"):
        sample_anchors(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_anchors(make_labels(3, 3), positive_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        sample_anchors(make_labels(3, 3), batch_size_per_image=0)
