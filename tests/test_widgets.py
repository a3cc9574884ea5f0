"""Smoke tests for frcnn_lite.book.widgets (the figures behind chapter 3's explorer)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from frcnn_lite.book.widgets import anchor_explorer, anchor_figure, coverage_summary  # noqa: E402


def sample():
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 5.0, 90.0, 60.0]])
    return image, {"boxes": boxes}


def test_anchor_figure():
    import matplotlib.pyplot as plt

    image, target = sample()
    fig = anchor_figure(image, (16, 32), (0.5, 1, 2), 16, gt_boxes=target["boxes"], cell=(1, 2))
    hist = fig.axes[1]
    assert sum(p.get_height() for p in hist.patches) == 2  # one bar count per box
    assert "coverage of 2 boxes" in hist.get_title()
    plt.close(fig)
    # Anchors larger than the image are drawn whole: the view holds every one.
    fig = anchor_figure(image, (128,), (0.5, 1, 2), 16, gt_boxes=target["boxes"], cell=(0, 0))
    (x1, x2), (y2, y1) = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
    # cell (0, 0) is centred at (8, 8); the ratio-2 anchor is 128 * sqrt(2) tall
    half_long = 128 * 2 ** 0.5 / 2
    assert x1 < 8 - half_long and x2 > 96 and y1 < 8 - half_long and y2 > 8 + half_long
    plt.close(fig)
    with pytest.raises(ValueError, match="outside the 4x6 feature map"):
        anchor_figure(image, (16,), (1,), 16, cell=(4, 0))


def test_coverage_summary():
    summary = coverage_summary(torch.tensor([0.2, 0.6, 0.8, 0.9]))
    assert summary == "mean 0.62, >=0.5: 75%, >=0.7: 50%"
    assert coverage_summary(torch.zeros(0)) == "no boxes"


def test_explorer_builds_and_reports_errors(capsys):
    image, target = sample()
    panel = anchor_explorer([image], [target], scales=(16, 32), stride=16)
    controls, output = panel.children
    scales_box = controls.children[0].children[0]
    scales_box.value = "0, 16"  # a bad scale: the library's message is printed, no crash
    # Outside a kernel the Output widget passes prints through to stdout.
    printed = capsys.readouterr().out + "".join(o.get("text", "") for o in output.outputs)
    assert "ValueError: anchor scales must be positive" in printed
