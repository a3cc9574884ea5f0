"""Checkers for chapter 3: base anchors and grid anchors (§3.1.1).

The oracle is :mod:`frcnn_lite.anchors`; ``_grid`` is ``grid_anchors`` with
the typical mistakes switchable.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from frcnn_lite.anchors import base_anchors, grid_anchors
from frcnn_lite.book.exercises._common import (Answer, WrongAnswer, _call, _centres_sizes,
                                               _correct, _first_difference, _known_mistake,
                                               _same, _tensor)


def _anchor_result(answer: Answer, what: str, *args) -> torch.Tensor:
    return answer if isinstance(answer, (torch.Tensor, np.ndarray)) else _call(answer, what, *args)


def _sorted_rows(boxes: torch.Tensor) -> torch.Tensor:
    rounded = (boxes * 1000).round()
    order = sorted(range(len(boxes)), key=lambda i: rounded[i].tolist())
    return boxes[order]


def check_base_anchors(answer: Answer, scales: Sequence[float] = (128, 256, 512),
                       ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> str:
    """Chapter 3: ``answer(scales, ratios) -> (A, 4)`` anchors centred on (0, 0), or that tensor.

    Expected: scale ``s`` and ratio ``r = h / w`` give ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)`` (area ``s**2``), ratio-major order (all scales of the
    first ratio first), as :func:`frcnn_lite.anchors.base_anchors`.
    """
    expected = base_anchors(scales, ratios).double()
    n_s, n_r = len(scales), len(ratios)
    got = _tensor(_anchor_result(answer, "base_anchors", tuple(scales), tuple(ratios)),
                  "base anchors", (n_s * n_r, 4))
    cx, cy, w, h = _centres_sizes(got)
    if bool((w <= 0).any() | (h <= 0).any()):
        raise WrongAnswer("some anchors have x2 <= x1 or y2 <= y1: write each as "
                          "(-w/2, -h/2, w/2, h/2), corners (x1, y1, x2, y2).")
    if bool((cx.abs() > 1e-3).any() | (cy.abs() > 1e-3).any()):
        where = "all at ({:.4g}, {:.4g})".format(cx[0].item(), cy[0].item()) \
            if _same(cx, cx[:1].expand_as(cx)) and _same(cy, cy[:1].expand_as(cy)) else "not all equal"
        raise WrongAnswer(f"your base anchors are not centred on (0, 0) (centres {where}). The "
                          f"book's base anchors are (-w/2, -h/2, w/2, h/2); grid_anchors adds each "
                          f"cell's centre later. (py-faster-rcnn centres them on (7.5, 7.5), the "
                          f"middle of a 16-pixel cell with inclusive pixel coordinates.)")
    if _same(got, expected):
        return _correct(f"{n_s * n_r} anchors, area s**2, h / w = ratio, centred on (0, 0), "
                        f"ratio-major order.")
    inverted = base_anchors(scales, [1.0 / r for r in ratios]).double()
    if _same(got, inverted):
        raise WrongAnswer("your anchors have the right areas but h and w are swapped: aspect "
                          "ratio means h / w, so w = s / sqrt(r) and h = s * sqrt(r) (a ratio-2 "
                          "anchor is tall).")
    scale_major = expected.reshape(n_r, n_s, 4).transpose(0, 1).reshape(-1, 4)
    if _same(got, scale_major):
        raise WrongAnswer("right anchors, wrong order: yours are scale-major (all ratios of the "
                          "first scale first). The book (like py-faster-rcnn and torchvision) "
                          "orders them ratio-major: anchor index = ratio_index * len(scales) + "
                          "scale_index.")
    if _same(_sorted_rows(got), _sorted_rows(expected)):
        raise WrongAnswer("right anchors, wrong order: anchor index must be ratio_index * "
                          f"len(scales) + scale_index. Expected {expected.tolist()}.")
    _, _, we, he = _centres_sizes(expected)
    swapped = torch.stack((-he, -we, he, we), dim=1) / 2
    if _same(_sorted_rows(got), _sorted_rows(swapped)):
        raise WrongAnswer("your anchors have the right areas but h and w are swapped: aspect "
                          "ratio means h / w, so w = s / sqrt(r) and h = s * sqrt(r) (a ratio-2 "
                          "anchor is tall).")
    areas, expected_areas = (w * h).sort().values, (we * he).sort().values
    if _same(areas, 4 * expected_areas, atol=1e-2):
        raise WrongAnswer("your anchors are twice too large on each side: (-w, -h, w, h) spans "
                          "2w; use (-w/2, -h/2, w/2, h/2).")
    if _same(areas, expected_areas / 4, atol=1e-2):
        raise WrongAnswer("your anchors are half the size on each side: the scale s is the "
                          "anchor's side (area s**2), not its half-side.")
    if _same(areas, expected_areas, atol=1e-2):
        ratio = (h / w).tolist()
        raise WrongAnswer(f"your anchors have the right areas but not the right shapes: their "
                          f"h / w are {[round(r, 3) for r in ratio]}; expected each ratio r "
                          f"of {list(ratios)} exactly (w = s / sqrt(r), h = s * sqrt(r)).")
    raise WrongAnswer(f"your anchors' areas are wrong: sqrt(area) = "
                      f"{[round(v, 2) for v in areas.sqrt().tolist()]}, expected the scales "
                      f"{sorted(float(s) for s in scales)} (each once per ratio). Scale s "
                      f"means area s**2: w = s / sqrt(r), h = s * sqrt(r).")


def _grid(feature_size, stride, base, *, offset=0.5, order="cell", swap=False):
    """grid_anchors with mistakes switchable: (H * W * A, 4)."""
    height, width = feature_size
    ys = (torch.arange(height, dtype=base.dtype) + offset) * stride  # (H,)
    xs = (torch.arange(width, dtype=base.dtype) + offset) * stride  # (W,)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    if swap:  # x from the row index i and y from the column index j
        cy, cx = cx, cy
    if order == "column":
        cy, cx = cy.T, cx.T
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    anchors = centres + base[None]  # (H * W, A, 4)
    if order == "anchor":
        anchors = anchors.transpose(0, 1)
    return anchors.reshape(-1, 4)


def check_grid_anchors(answer: Answer, feature_size: Tuple[int, int] = (2, 3), stride: float = 16,
                       base: Optional[torch.Tensor] = None) -> str:
    """Chapter 3: ``answer(feature_size (H, W), stride, base (A, 4)) -> (H * W * A, 4)``.

    Cell ``(i, j)`` is centred at ``((j + 0.5) * stride, (i + 0.5) * stride)``;
    anchor ``(i * W + j) * A + a`` is base anchor ``a`` at cell ``(i, j)``. The
    default feature map is not square, so swapping H and W shows.
    """
    base = base_anchors((32, 64), (0.5, 1.0)) if base is None else base
    height, width = feature_size
    count = height * width * base.shape[0]
    result = _anchor_result(answer, "grid_anchors", tuple(feature_size), stride, base.clone())
    if isinstance(result, torch.Tensor) and result.dim() == 2 and result.shape[0] == height * width:
        raise WrongAnswer(f"you returned {height * width} anchors, one per cell; every cell gets "
                          f"all A = {base.shape[0]} base anchors: H * W * A = {count}.")
    got = _tensor(result, "grid anchors", (count, 4))
    expected = grid_anchors(feature_size, stride, base).double()
    if _same(got, expected):
        return _correct(f"{count} anchors, centred at ((j + 0.5) * stride, (i + 0.5) * stride), "
                        f"ordered by row, column, base anchor.")
    b = base.double()
    mistake = _known_mistake(got, {
        "your anchors sit on the cells' top-left corners: cell (i, j) is centred at "
        "((j + 0.5) * stride, (i + 0.5) * stride), half a cell further.": _grid(
            feature_size, stride, b, offset=0.0),
        "x and y are swapped: x comes from the column index j (W of them), y from the row index "
        "i (H of them).": _grid(feature_size, stride, b, swap=True),
        "right anchors, wrong order: yours loop over base anchors outermost; the book orders "
        "row, then column, then base anchor (anchor (i * W + j) * A + a), matching the RPN "
        "head's outputs.": _grid(feature_size, stride, b, order="anchor"),
        "right anchors, wrong order: yours go down columns first; the book orders by row i, "
        "then column j (anchor (i * W + j) * A + a).": _grid(feature_size, stride, b,
                                                                 order="column"),
    })
    if mistake:
        raise WrongAnswer(mistake)
    if _same(_sorted_rows(got), _sorted_rows(expected)):
        raise WrongAnswer("right anchors, wrong order: anchor (i * W + j) * A + a must be base "
                          "anchor a at row i, column j.")
    raise WrongAnswer(_first_difference(got, expected, "grid anchors",
                                        f"feature_size={feature_size}, stride={stride}, "
                                        f"base={base.tolist()}"))
