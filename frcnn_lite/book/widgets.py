"""Interactive explorers for the book (ipywidgets), and their static twins.

Each explorer redraws a matplotlib figure made by a plain function, so the
rendered book (which has no kernel) shows the same figure statically:

- :func:`anchor_figure`: the anchors of one feature cell and the anchor
  centres on an image, beside the coverage histogram (the best-anchor IoU of
  every ground-truth box of a dataset).
- :func:`anchor_explorer`: sliders and boxes for scales, ratios, stride,
  image and cell that redraw :func:`anchor_figure`.

Like :mod:`frcnn_lite.book.viz`, this module imports matplotlib and ipywidgets only
when a function runs. Built in chapter 3.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from frcnn_lite.anchors import anchor_coverage, base_anchors, grid_anchors
from frcnn_lite.book.viz import COLORS, draw_boxes, show_image


def default_feature_size(image_size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """``ceil(H / stride), ceil(W / stride)``: the map of a padded stride-``stride`` net.

    Matches the ``tiny``, ``zf`` and ResNet backbones; VGG-16 rounds down
    (use ``Backbone.feature_size`` for the exact size of a given backbone).
    """
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def coverage_summary(best_iou: torch.Tensor) -> str:
    """One line: mean best IoU and the fraction of boxes at IoU >= 0.5 and >= 0.7."""
    if best_iou.numel() == 0:
        return "no boxes"
    half = float((best_iou >= 0.5).float().mean())
    strong = float((best_iou >= 0.7).float().mean())
    return f"mean {float(best_iou.mean()):.2f}, >=0.5: {half:.0%}, >=0.7: {strong:.0%}"


def anchor_figure(image: torch.Tensor, scales: Sequence[float], ratios: Sequence[float],
                  stride: int = 16, *, gt_boxes: Optional[torch.Tensor] = None,
                  coverage_boxes: Optional[torch.Tensor] = None,
                  cell: Optional[Tuple[int, int]] = None,
                  feature_size: Optional[Tuple[int, int]] = None, inside_only: bool = True,
                  figsize: Tuple[float, float] = (11, 4.6), dpi: Optional[float] = None):
    """Anchors on an image (left) and the coverage histogram (right); returns the figure.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        scales, ratios, stride: the anchor settings (§3.1.1).
        gt_boxes: ``(G, 4)`` boxes of this image, drawn in the ground-truth colour.
        coverage_boxes: ``(M, 4)`` ground-truth boxes of many images of the same
            size as ``image``; their best-anchor IoUs make the histogram. When
            None, ``gt_boxes`` are used.
        cell: ``(i, j)`` feature cell whose A anchors are drawn (default: the
            centre cell).
        feature_size: ``(Hf, Wf)``; default :func:`default_feature_size`.
        inside_only: count only anchors inside the image for coverage (§3.3).
        figsize, dpi: passed to ``plt.subplots`` (dpi None: matplotlib's default).
    """
    import matplotlib.pyplot as plt

    height, width = image.shape[-2:]
    size = feature_size or default_feature_size((height, width), stride)
    base = base_anchors(scales, ratios)  # (A, 4)
    anchors = grid_anchors(size, stride, base)  # (Hf * Wf * A, 4)
    i, j = cell if cell is not None else (size[0] // 2, size[1] // 2)
    if not (0 <= i < size[0] and 0 <= j < size[1]):
        raise ValueError(f"cell {(i, j)} is outside the {size[0]}x{size[1]} feature map.")
    num_anchors = base.shape[0]

    fig, (ax_img, ax_hist) = plt.subplots(1, 2, figsize=figsize, dpi=dpi,
                                          gridspec_kw={"width_ratios": [1.1, 1]})
    show_image(image, ax=ax_img)
    centres = (anchors[::num_anchors, :2] + anchors[::num_anchors, 2:]) / 2  # (Hf * Wf, 2)
    ax_img.scatter(centres[:, 0], centres[:, 1], s=2, c=COLORS["anchor"], alpha=0.6)
    if gt_boxes is not None:
        draw_boxes(ax_img, gt_boxes, color="gt", linewidth=1.5, linestyle="--")
    first = (i * size[1] + j) * num_anchors
    drawn = anchors[first:first + num_anchors]  # (A, 4)
    draw_boxes(ax_img, drawn, color="anchor", linewidth=1.2)
    # The view holds the image and every drawn anchor, with a margin: big
    # anchors cross the border and must not be cut off.
    margin = 0.05 * max(height, width)
    x1 = min(0.0, float(drawn[:, 0].min())) - margin
    y1 = min(0.0, float(drawn[:, 1].min())) - margin
    x2 = max(float(width), float(drawn[:, 2].max())) + margin
    y2 = max(float(height), float(drawn[:, 3].max())) + margin
    ax_img.set_xlim(x1, x2)
    ax_img.set_ylim(y2, y1)
    ax_img.set_axis_on()
    ax_img.set_xlabel("x (pixels)")
    ax_img.set_ylabel("y (pixels)")
    ax_img.set_title(f"{num_anchors} anchors at cell {(i, j)} of {size[0]}x{size[1]}, "
                     f"stride {stride}", fontsize=10)

    boxes = coverage_boxes if coverage_boxes is not None else gt_boxes
    if boxes is not None and boxes.shape[0]:
        best = anchor_coverage(anchors, boxes, (height, width) if inside_only else None)
        ax_hist.hist(best.numpy(), bins=20, range=(0, 1), color=COLORS["anchor"],
                     edgecolor="black", linewidth=0.5)
        for threshold in (0.3, 0.7):
            ax_hist.axvline(threshold, color="black", linestyle=":", linewidth=1)
        ax_hist.set_title(f"coverage of {boxes.shape[0]} boxes: {coverage_summary(best)}",
                          fontsize=10)
    ax_hist.set_xlabel("best IoU of a ground-truth box with any anchor")
    ax_hist.set_ylabel("number of boxes")
    ax_hist.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def _parse_numbers(text: str) -> Tuple[float, ...]:
    return tuple(float(t) for t in text.replace(";", ",").split(",") if t.strip())


def anchor_explorer(images: Sequence[torch.Tensor], targets: Sequence[dict],
                    coverage_boxes: Optional[torch.Tensor] = None,
                    scales: Sequence[float] = (128, 256, 512),
                    ratios: Sequence[float] = (0.5, 1.0, 2.0), stride: int = 16,
                    dpi: float = 72):
    """An ipywidgets panel that redraws :func:`anchor_figure` as you change the settings.

    Text boxes take comma-separated scales and ratios; a dropdown the stride;
    sliders the image and the cell (as fractions of the map, so they survive a
    change of stride). ``images`` ``(3, H, W)`` and ``targets`` (dicts with
    ``"boxes"``) are a few dataset samples of one size; ``coverage_boxes`` the
    boxes of many images for the histogram; ``dpi`` that of the figure. Returns
    the widget; display it.
    Bad settings (a zero scale, an empty list) print the library's error.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    style = {"description_width": "70px"}
    scales_box = widgets.Text(value=", ".join(f"{s:g}" for s in scales), description="scales",
                              style=style, continuous_update=False)
    ratios_box = widgets.Text(value=", ".join(f"{r:g}" for r in ratios), description="ratios h/w",
                              style=style, continuous_update=False)
    stride_box = widgets.Dropdown(options=[4, 8, 16, 32], value=stride, description="stride",
                                  style=style)
    image_slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                                     style=style, continuous_update=False)
    row_slider = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="cell row",
                                     style=style, continuous_update=False)
    col_slider = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="cell col",
                                     style=style, continuous_update=False)
    output = widgets.Output()

    def redraw(*_):
        with output:
            output.clear_output(wait=True)
            try:
                image = images[image_slider.value]
                s = int(stride_box.value)
                size = default_feature_size(tuple(image.shape[-2:]), s)
                cell = (min(int(row_slider.value * size[0]), size[0] - 1),
                        min(int(col_slider.value * size[1]), size[1] - 1))
                fig = anchor_figure(image, _parse_numbers(scales_box.value),
                                    _parse_numbers(ratios_box.value), s,
                                    gt_boxes=targets[image_slider.value]["boxes"],
                                    coverage_boxes=coverage_boxes, cell=cell, dpi=dpi)
                display(fig)
                plt.close(fig)
            except ValueError as error:  # the library's message says what to fix
                print(f"ValueError: {error}")

    for w in (scales_box, ratios_box, stride_box, image_slider, row_slider, col_slider):
        w.observe(redraw, names="value")
    redraw()
    controls = widgets.VBox([widgets.HBox([scales_box, ratios_box, stride_box]),
                             widgets.HBox([image_slider, row_slider, col_slider])])
    return widgets.VBox([controls, output])
