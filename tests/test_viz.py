"""Drawing boxes and images (chapter 1)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from frcnn_lite.book.viz import COLORS, draw_boxes, image_to_numpy, show_detections, show_image  # noqa: E402


def test_draw_boxes_adds_one_patch_per_box():
    fig, ax = plt.subplots()
    show_image(torch.rand(3, 20, 30), ax=ax)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 3.0, 10.0, 12.0]])
    draw_boxes(ax, boxes, labels=torch.tensor([1, 2]), scores=torch.tensor([0.9, 0.5]),
               class_names=["a", "b"], color="gt")
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.texts] == ["a 0.90", "b 0.50"]
    plt.close(fig)


def test_image_to_numpy_shape():
    assert image_to_numpy(torch.rand(3, 4, 5)).shape == (4, 5, 3)


@pytest.mark.parametrize("image, match", [
    (torch.randint(0, 255, (3, 4, 4), dtype=torch.uint8), "255"),
    (torch.rand(1, 4, 4), "grayscale"),
    (torch.rand(4, 4, 4), "RGBA"),
])
def test_viz_rejects_bad_images(image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        show_image(image)


def test_viz_rejects_mismatched_labels_and_bad_boxes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="labels must be"):
        draw_boxes(ax, torch.zeros(2, 4), labels=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"1..2"):
        draw_boxes(ax, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), labels=torch.tensor([3]), class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        draw_boxes(ax, torch.zeros(2, 3))
    plt.close(fig)


def test_show_detections_filters_by_score():
    fig, ax = plt.subplots()
    pred = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]),
            "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.1])}
    target = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1])}
    show_detections(torch.rand(3, 4, 4), target, pred, ax=ax, score_threshold=0.5)
    assert len(ax.patches) == 2  # one GT + one detection
    assert ax.patches[0].get_edgecolor()[:3] == matplotlib.colors.to_rgb(COLORS["gt"])
    plt.close(fig)
