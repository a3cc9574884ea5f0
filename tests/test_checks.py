"""Clear errors for images, labels and targets (chapter 1)."""

import pytest
import torch

from frcnn_lite.checks import check_image, check_labels, check_target


def test_good_image_passes():
    check_image(torch.rand(3, 8, 9))


@pytest.mark.parametrize("image, match", [
    (torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), r"image.float\(\) / 255"),
    (torch.rand(1, 8, 8), "grayscale"),
    (torch.rand(4, 8, 8), "RGBA"),
    (torch.rand(8, 8, 3), "channels-last"),
    (torch.rand(2, 3, 8, 8), "one at a time"),
    (torch.rand(3, 8, 8) * 255, r"\[0, 1\]"),
    (torch.rand(3, 8, 8) - 0.5, r"\[0, 1\]"),
])
def test_bad_images(image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        check_image(image)


def test_labels_outside_vocabulary():
    with pytest.raises(ValueError, match=r"1..5"):
        check_labels(torch.tensor([1, 6]), num_classes=5, num_boxes=2)
    with pytest.raises(ValueError, match="background"):
        check_labels(torch.tensor([0]), num_classes=5, num_boxes=1)
    with pytest.raises(ValueError, match="one label per box"):
        check_labels(torch.tensor([1]), num_classes=5, num_boxes=2)
    with pytest.raises(TypeError, match="int64"):
        check_labels(torch.tensor([1.0]), num_classes=5, num_boxes=1)


def test_target_checks():
    good = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([3])}
    check_target(good, num_classes=5)
    with pytest.raises(ValueError, match="'boxes'"):
        check_target({"labels": torch.tensor([1])}, num_classes=5)
    with pytest.raises(ValueError, match="degenerate"):
        check_target({"boxes": torch.tensor([[2.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1])}, 5)
