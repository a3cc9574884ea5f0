"""Boxes: the book's conventions, area, IoU, clipping, and Eq. 2 encode/decode.

Conventions (chapter 1 states them; every module keeps them):

- A box is ``(x1, y1, x2, y2)`` in continuous pixel coordinates. An image of
  size ``(H, W)`` spans ``[0, W] x [0, H]``; a box's width is ``x2 - x1`` (no
  ``+ 1``), so the pixel in column ``j`` covers ``[j, j + 1)``.
- Sizes are ``(H, W)``, height first, as in tensor shapes.
- Aspect ratio means ``h / w``; scale ``s`` means area ``s ** 2``.

Shape glossary: ``N``, ``M`` numbers of boxes; ``4`` the coordinates.

Built in chapter 1 (area, IoU, clip, small boxes) and chapter 4 (Eq. 2).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from frcnn_lite.checks import check_boxes
from frcnn_lite.layer_checks import check_nms_top_n

# Largest log-scale change decode_boxes applies: a box may grow at most
# 1000/16 = 62.5 times its reference in one step. Without it, exp() of a wild
# early-training prediction overflows to inf (py-faster-rcnn, torchvision).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas ``(N,)`` of boxes ``(N, 4)``: ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *,
            validate: bool = True) -> torch.Tensor:
    """Intersection over union of every pair: ``(N, 4), (M, 4) -> (N, M)``.

    IoU(a, b) = area(a ∩ b) / area(a ∪ b), the overlap measure the paper uses
    to label anchors (§3.1.2) and to evaluate detections (§4).

    ``validate=True`` rejects NaN/inf coordinates and boxes with x2 <= x1 or
    y2 <= y1 with a clear error; the library's own hot paths pass ``False``.
    """
    if validate:
        check_boxes(boxes1, "boxes1")
        check_boxes(boxes2, "boxes2")
    area1 = box_area(boxes1)  # (N,)
    area2 = box_area(boxes2)  # (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union


def clip_boxes(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Clip boxes ``(N, 4)`` to an image of size ``(H, W)``: x into [0, W], y into [0, H].

    Used on proposals and detections (§3.3), never on ground truth: a target
    box outside the image is a data error, not something to hide.
    """
    height, width = image_size
    x = boxes[:, 0::2].clamp(min=0, max=width)  # (N, 2)
    y = boxes[:, 1::2].clamp(min=0, max=height)  # (N, 2)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices ``(K,)`` of boxes whose width and height are both ``>= min_size``.

    The proposal layer drops boxes under 16 input pixels (py-faster-rcnn's
    ``RPN_MIN_SIZE``; the paper does not name the number).
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def boxes_inside(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Mask ``(N,)``: True for boxes lying entirely inside ``[0, W] x [0, H]``."""
    height, width = image_size
    return (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)


def _centers_sizes(boxes: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Centres and sizes ``(x, y, w, h)``, each ``(N,)``, of boxes ``(N, 4)``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def _check_pair(reference: torch.Tensor, other: torch.Tensor, other_name: str,
                validate: bool) -> None:
    if reference.dim() != 2 or reference.shape[-1] != 4:
        raise ValueError(f"reference boxes must have shape (N, 4), got {tuple(reference.shape)}.")
    if other.dim() != 2 or other.shape[-1] != 4:
        raise ValueError(f"{other_name} must have shape (N, 4), got {tuple(other.shape)}.")
    if reference.shape[0] != other.shape[0]:
        raise ValueError(f"reference has {reference.shape[0]} boxes but {other_name} has "
                         f"{other.shape[0]}; encode/decode pair them one to one.")
    if validate and reference.numel():
        widths = reference[:, 2] - reference[:, 0]
        heights = reference[:, 3] - reference[:, 1]
        bad = (widths <= 0) | (heights <= 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"reference[{i}] = {reference[i].tolist()} has zero or negative width or "
                             f"height; Eq. 2 divides by w_a and h_a, so reference boxes must have "
                             f"x2 > x1 and y2 > y1.")


def encode_boxes(reference: torch.Tensor, target: torch.Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), *,
                 validate: bool = True) -> torch.Tensor:
    """Eq. 2 (§3.1.2): deltas ``(N, 4)`` of ``target`` from ``reference``.

    With anchor (or proposal) centre/size ``(x_a, y_a, w_a, h_a)`` and target
    ``(x, y, w, h)``::

        t_x = (x - x_a) / w_a        t_y = (y - y_a) / h_a
        t_w = log(w / w_a)           t_h = log(h / h_a)

    each multiplied by its weight ``(w_x, w_y, w_w, w_h)``. Weights (10, 10,
    5, 5) are the same as dividing by stds (0.1, 0.1, 0.2, 0.2), as the Fast
    R-CNN head's targets are normalised (ch. 8).

    ``validate=True`` rejects reference boxes of zero width or height (Eq. 2
    divides by them); hot paths on anchors the library made pass ``False``.
    """
    _check_pair(reference, target, "target", validate)
    wx, wy, ww, wh = weights
    xa, ya, wa, ha = _centers_sizes(reference)
    x, y, w, h = _centers_sizes(target)
    tx = wx * (x - xa) / wa
    ty = wy * (y - ya) / ha
    tw = ww * torch.log(w / wa)
    th = wh * torch.log(h / ha)
    return torch.stack((tx, ty, tw, th), dim=1)  # (N, 4)


def decode_boxes(reference: torch.Tensor, deltas: torch.Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = BBOX_XFORM_CLIP, *,
                 validate: bool = True) -> torch.Tensor:
    """Inverse of Eq. 2: boxes ``(N, 4)``, ``deltas`` applied to ``reference``.

    x = t_x w_a + x_a,  y = t_y h_a + y_a,  w = w_a exp(t_w),  h = h_a exp(t_h),
    with t_w and t_h clamped at ``clamp`` = log(1000/16) first so that exp()
    cannot overflow on an untrained network's output. ``validate`` as in
    :func:`encode_boxes`.
    """
    _check_pair(reference, deltas, "deltas", validate)
    wx, wy, ww, wh = weights
    xa, ya, wa, ha = _centers_sizes(reference)
    tx = deltas[:, 0] / wx
    ty = deltas[:, 1] / wy
    tw = (deltas[:, 2] / ww).clamp(max=clamp)
    th = (deltas[:, 3] / wh).clamp(max=clamp)
    x = tx * wa + xa
    y = ty * ha + ya
    w = wa * torch.exp(tw)
    h = ha * torch.exp(th)
    corners = (x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h)
    return torch.stack(corners, dim=1)  # (N, 4)


def nms_top_n(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float,
              top_n: int, *, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Greedy NMS that stops once ``top_n`` are kept: ``(N, 4), (N,) -> (K,)``.

    Returns exactly ``torchvision.ops.nms(boxes, scores, iou_thresh)[:top_n]``
    (kept indices, best first; equal scores keep their input order, as that
    op's stable sort does), but much faster when ``top_n`` is small: the
    proposal layer (§3.3) keeps 300 of 6000 boxes.

    Why it is exact: greedy NMS visits boxes best first, and whether box ``i``
    survives depends only on the boxes visited before it. So we run NMS on
    chunks of ``chunk_size`` boxes in score order, each with the survivors so
    far (which go first and never suppress each other), and stop once
    ``top_n`` have survived: the same kernel on the same pairs, so the same
    decisions, bit for bit. ``chunk_size``: ``2 * top_n`` on a CPU (600 beat
    300 and 1000 for 300 of 6000 boxes); one call on a GPU, where each chunk
    costs a host sync. Built in chapter 13 (speed).
    """
    from torchvision.ops import nms

    chunk_size = check_nms_top_n(boxes, scores, top_n, chunk_size)
    if boxes.shape[0] <= chunk_size:
        return nms(boxes, scores, iou_thresh)[:top_n]
    order = scores.sort(descending=True, stable=True)[1]  # (N,) as NMS visits
    kept = order[:0]  # (K,) survivors so far, best first
    for start in range(0, boxes.shape[0], chunk_size):
        candidates = torch.cat([kept, order[start:start + chunk_size]])
        keep = nms(boxes[candidates], scores[candidates], iou_thresh)
        kept = candidates[keep]
        if kept.shape[0] >= top_n:  # one host sync per chunk
            break
    return kept[:top_n]
