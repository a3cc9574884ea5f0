"""Tests of frcnn_lite.transform: resize rule, normalisation, padding, mapping back."""

import pytest
import torch
import torch.nn.functional as F

from frcnn_lite.transform import (batch_images, check_inputs, map_boxes_back, normalize, resize,
                                  resized_size, transform)


@pytest.mark.parametrize("size, expected", [
    ((375, 500), (600, 800)),      # VOC-like: shorter side to 600
    ((500, 375), (800, 600)),
    ((300, 1200), (250, 1000)),    # longer side capped at 1000
    ((600, 1000), (600, 1000)),    # already right
    ((256, 256), (600, 600)),
])
def test_resized_size_paper_rule(size, expected):
    assert resized_size(size, 600, 1000) == expected


def test_resize_scales_boxes_with_pixel_grid():
    image = torch.rand(3, 100, 200)
    boxes = torch.tensor([[0.0, 0.0, 200.0, 100.0], [10.0, 20.0, 30.0, 50.0]])
    out, out_boxes = resize(image, boxes, min_size=50, max_size=1000)
    assert out.shape == (3, 50, 100)
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 0.0, 100.0, 50.0],
                                                        [5.0, 10.0, 15.0, 25.0]]))
    # same interpolation as torch (bilinear, align_corners=False)
    torch.testing.assert_close(out, F.interpolate(image[None], size=(50, 100), mode="bilinear",
                                                  align_corners=False)[0])


def test_normalize_matches_torchvision():
    from torchvision.transforms.functional import normalize as tv_normalize
    image = torch.rand(3, 8, 9)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(normalize(image, mean, std), tv_normalize(image, mean, std))


def test_batch_images_pads_to_stride_multiple_at_bottom_right():
    a, b = torch.ones(3, 20, 33), 2 * torch.ones(3, 40, 17)
    batch = batch_images([a, b], stride=16)
    assert batch.shape == (2, 3, 48, 48)
    assert torch.equal(batch[0, :, :20, :33], a) and batch[0, :, 20:].abs().sum() == 0
    assert batch[0, :, :, 33:].abs().sum() == 0
    assert torch.equal(batch[1, :, :40, :17], b) and batch[1, :, :, 17:].abs().sum() == 0


def test_map_boxes_back_inverts_resize_and_clips():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 60.0], [-5.0, -5.0, 700.0, 700.0]])
    resized = resized_size((150, 200), 300, 1000)  # (300, 400)
    _, scaled = resize(torch.rand(3, 150, 200), boxes[:1], min_size=300, max_size=1000)
    torch.testing.assert_close(map_boxes_back(scaled, resized, (150, 200)), boxes[:1])
    back = map_boxes_back(boxes[1:], resized, (150, 200))
    torch.testing.assert_close(back, torch.tensor([[0.0, 0.0, 200.0, 150.0]]))


def test_transform_different_sizes_keeps_targets_untouched():
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 40)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 96.0, 64.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[4.0, 8.0, 20.0, 40.0]]), "labels": torch.tensor([2])}]
    batch, sizes, new = transform(images, targets, mean=(0.5,) * 3, std=(0.25,) * 3,
                                  min_size=128, max_size=200, stride=16)
    assert sizes == [(128, 192), (200, 100)]  # second: 128 / 40 * 80 = 256 > 200 -> capped
    assert batch.shape == (2, 3, 208, 192)
    torch.testing.assert_close(new[0]["boxes"], torch.tensor([[0.0, 0.0, 192.0, 128.0]]))
    torch.testing.assert_close(new[1]["boxes"], torch.tensor([[10.0, 20.0, 50.0, 100.0]]))
    assert targets[0]["boxes"][0, 2] == 96.0  # caller's dict not modified


def test_check_inputs_bad_images_and_targets():
    good = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="empty"):
        check_inputs([], None, 5)
    with pytest.raises(ValueError, match="list of \\(3, H, W\\)"):
        check_inputs(torch.rand(2, 3, 32, 32), None, 5)
    with pytest.raises(ValueError, match="channels-last"):
        check_inputs([torch.rand(32, 32, 3)], None, 5)
    with pytest.raises(ValueError, match="\\(3, H, W\\)"):
        check_inputs([torch.rand(32, 32)], None, 5)
    with pytest.raises(ValueError, match="one target dict per image"):
        check_inputs([good], [], 5)
    nan = {"boxes": torch.tensor([[0.0, float("nan"), 4.0, 4.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="NaN"):
        check_inputs([good], [nan], 5)
    flat = {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="degenerate"):
        check_inputs([good], [flat], 5)
