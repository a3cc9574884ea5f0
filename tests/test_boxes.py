"""Box conventions, area, IoU, clipping and small-box removal (chapter 1)."""

import pytest
import torch
import torchvision

from frcnn_lite.boxes import box_area, box_iou, boxes_inside, clip_boxes, remove_small_boxes


def random_boxes(n, generator, size=100.0):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(50, g), random_boxes(30, g)
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b))


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0],    # half overlap: 50 / 150
                      [0.0, 0.0, 10.0, 10.0],    # identical
                      [20.0, 20.0, 30.0, 30.0],  # disjoint
                      [10.0, 0.0, 20.0, 10.0]])  # touching edge: no overlap
    expected = torch.tensor([[1 / 3, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_box_iou_empty():
    a = torch.zeros(0, 4)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_iou(a, b).shape == (0, 1)
    assert box_iou(b, a).shape == (1, 0)


def test_box_area_no_plus_one():
    assert box_area(torch.tensor([[0.0, 0.0, 4.0, 3.0]])).item() == 12.0


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[5.0, 0.0, 1.0, 4.0]]), "degenerate"),
    (torch.tensor([[0.0, 5.0, 4.0, 5.0]]), "degenerate"),
    (torch.tensor([[0.0, 0.0, float("nan"), 4.0]]), "NaN or infinite"),
    (torch.tensor([[0.0, 0.0, float("inf"), 4.0]]), "NaN or infinite"),
    (torch.zeros(2, 3), r"shape \(N, 4\)"),
    (torch.zeros(4), r"shape \(N, 4\)"),
    (torch.tensor([[0, 0, 4, 4]]), "floating-point"),
])
def test_box_iou_rejects_bad_boxes(bad, match):
    good = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    with pytest.raises((ValueError, TypeError), match=match):
        box_iou(bad, good)
    with pytest.raises((ValueError, TypeError), match=match):
        box_iou(good, bad)


def test_xywh_hint_in_error():
    with pytest.raises(ValueError, match="box_convert"):
        box_iou(torch.tensor([[10.0, 10.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -2.0, 50.0, 40.0], [10.0, 10.0, 20.0, 20.0]])
    clipped = clip_boxes(boxes, (30, 40))  # (H, W)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 10.0, 20.0, 20.0]]))
    torch.testing.assert_close(clipped, torchvision.ops.clip_boxes_to_image(boxes, (30, 40)))


def test_remove_small_boxes_matches_torchvision():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 15.9, 30.0], [0.0, 0.0, 30.0, 15.0],
                          [5.0, 5.0, 40.0, 40.0]])
    keep = remove_small_boxes(boxes, 16)
    assert keep.tolist() == [0, 3]
    assert keep.tolist() == torchvision.ops.remove_small_boxes(boxes, 16).tolist()


def test_boxes_inside():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [-1.0, 0.0, 10.0, 10.0], [0.0, 0.0, 41.0, 10.0]])
    assert boxes_inside(boxes, (30, 40)).tolist() == [True, False, False]
