"""Anchors: the reference boxes of the RPN, and which of them are objects.

Paper: §3.1.1 (anchors: k = 3 scales x 3 aspect ratios at every position of
the feature map), §3.1.2 (labelling anchors positive/negative), §3.1.3
(sampling 256 anchors per image, at most half positive).

Shape glossary: ``A`` base anchors per position (k in the paper), ``H, W``
feature-map size, ``N`` anchors in an image (H * W * A), ``G`` ground-truth
boxes. Conventions as in :mod:`frcnn_lite.boxes`: aspect ratio = h / w, scale
s = an anchor of area s**2, cell (i, j) centred at ((j + 0.5) * stride,
(i + 0.5) * stride).

Built in chapter 3 (base/grid anchors) and chapter 5 (labelling, sampling).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from frcnn_lite.boxes import box_iou
from frcnn_lite.checks import check_boxes
from frcnn_lite.layer_checks import (check_anchor_sampling, check_anchor_shapes, check_grid,
                                     check_label_inputs)

# Label values, as in the paper's p* plus an "ignored" state.
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def base_anchors(scales: Sequence[float] = (128, 256, 512),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), *,
                 device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(A, 4)`` base anchors centred on (0, 0), one per (ratio, scale).

    An anchor of scale ``s`` and ratio ``r = h / w`` has area ``s**2``, so
    ``w = s / sqrt(r)`` and ``h = s * sqrt(r)`` (§3.1.1). Ordered ratio-major
    (all scales of the first ratio, then the next ratio), as py-faster-rcnn
    and torchvision order them. Coordinates are not rounded.
    """
    check_anchor_shapes(scales, ratios)
    scales_t = torch.as_tensor(scales, dtype=dtype, device=device)  # (S,)
    ratios_t = torch.as_tensor(ratios, dtype=dtype, device=device)  # (R,)
    heights = ratios_t.sqrt()[:, None] * scales_t[None, :]  # (R, S)
    widths = scales_t[None, :] / ratios_t.sqrt()[:, None]  # (R, S)
    heights, widths = heights.reshape(-1), widths.reshape(-1)  # (A,) each
    corners = torch.stack((-widths, -heights, widths, heights), dim=1)  # (A, 4)
    return corners / 2


def grid_anchors(feature_size: Tuple[int, int], stride: float,
                 base: torch.Tensor) -> torch.Tensor:
    """All anchors of a feature map: ``feature_size (H, W) -> (H * W * A, 4)``.

    The base anchors ``(A, 4)`` are shifted to the centre of every cell: cell
    ``(i, j)`` (row i, column j) is centred at ``((j + 0.5) * stride,
    (i + 0.5) * stride)`` in input pixels. Rows first, then columns, then
    base anchors: anchor ``(i * W + j) * A + a`` is base anchor ``a`` at cell
    ``(i, j)``, the order of the RPN head's outputs flattened from (B, A, H, W).
    """
    check_grid(feature_size, stride, base)
    height, width = int(feature_size[0]), int(feature_size[1])
    like = {"device": base.device, "dtype": base.dtype}
    ys = (torch.arange(height, **like) + 0.5) * stride  # (H,) cell centres
    xs = (torch.arange(width, **like) + 0.5) * stride  # (W,)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    centres = torch.stack((cx, cy, cx, cy), dim=-1)  # (H, W, 4)
    centres = centres.reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (centres + base[None, :, :]).reshape(-1, 4)  # (H * W * A, 4)


def inside_image(anchors: torch.Tensor, image_size: Tuple[int, int],
                 allowed_border: float = 0.0) -> torch.Tensor:
    """``(N,)`` bool: the anchors ``(N, 4)`` that stay within ``allowed_border``
    pixels of an image of ``image_size (H, W)`` (§3.3: training ignores the rest)."""
    height, width = image_size
    x1, y1, x2, y2 = anchors.unbind(dim=1)
    return ((x1 >= -allowed_border) & (y1 >= -allowed_border)
            & (x2 <= width + allowed_border) & (y2 <= height + allowed_border))


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor,
                  image_size: Tuple[int, int], fg_iou: float = 0.7,
                  bg_iou: float = 0.3, *, allowed_border: float = 0.0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Label every anchor positive (1), negative (0) or ignored (-1), §3.1.2.

    ``anchors (N, 4)`` of one image, ``gt_boxes (G, 4)`` (``G = 0`` is
    valid), ``image_size (H, W)``. Anchors reaching more than
    ``allowed_border`` pixels past the image are ignored (0 in the paper's
    training, §3.3). Returns ``labels (N,)`` and ``matched (N,)``, the index
    of each anchor's highest-IoU box (0 when ``G = 0``), both int64.

    The rules, in the order that resolves conflicts: border anchors are
    ignored; an anchor with IoU below ``bg_iou`` with every box is negative;
    the anchor(s) with the highest IoU for each box are positive (ties
    included, if above 0); an anchor with IoU ``>= fg_iou`` is positive.
    """
    check_label_inputs(anchors, gt_boxes, image_size)
    inside = inside_image(anchors, image_size, allowed_border)  # (N,)
    labels = torch.full_like(inside, IGNORED, dtype=torch.int64)
    if gt_boxes.shape[0] == 0:
        labels[inside] = NEGATIVE
        return labels, torch.zeros_like(labels)

    iou = box_iou(anchors, gt_boxes, validate=False)  # (N, G)
    iou[~inside] = -1.0  # border anchors can match nothing
    best_iou, matched = iou.max(dim=1)  # (N,), (N,)
    labels[inside & (best_iou < bg_iou)] = NEGATIVE
    # Every box gets at least its best anchor(s): without this rule a box
    # that no anchor covers at 0.7 would have no positive at all (§3.1.2).
    best_per_gt = iou.max(dim=0).values[None, :]  # (1, G)
    is_best = (iou == best_per_gt) & (best_per_gt > 0)  # (N, G)
    labels[is_best.any(dim=1)] = POSITIVE
    labels[inside & (best_iou >= fg_iou)] = POSITIVE
    return labels, matched


def sample_anchors(labels: torch.Tensor, batch_size_per_image: int = 256,
                   positive_fraction: float = 0.5,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sample the anchors of one image's mini-batch (§3.1.3), ``(N,) -> (N,)``.

    Keeps at most ``batch_size_per_image * positive_fraction`` positives
    (128) chosen at random, fills the rest of the ``batch_size_per_image``
    (256) with random negatives, and sets every other anchor to -1
    (ignored). Returns a new tensor; ``labels`` is not changed.
    """
    check_anchor_sampling(labels, batch_size_per_image, positive_fraction)
    positive = torch.where(labels == POSITIVE)[0]
    negative = torch.where(labels == NEGATIVE)[0]
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = min(positive.numel(), max_pos)
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    device = labels.device
    pick_pos = _random_subset(positive.numel(), num_pos, generator, device)
    pick_neg = _random_subset(negative.numel(), num_neg, generator, device)
    keep_pos, keep_neg = positive[pick_pos], negative[pick_neg]
    sampled = torch.full_like(labels, IGNORED)
    sampled[keep_pos] = POSITIVE
    sampled[keep_neg] = NEGATIVE
    return sampled


def _random_subset(n: int, k: int, generator: Optional[torch.Generator], device: torch.device
                   ) -> torch.Tensor:
    """``k`` distinct random indices in ``[0, n)``, on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=gen_device)[:k].to(device)


def anchor_coverage(anchors: torch.Tensor, gt_boxes: torch.Tensor,
                    image_size: Optional[Tuple[int, int]] = None
                    ) -> torch.Tensor:
    """Best IoU ``(G,)`` of each ground-truth box ``(G, 4)`` with any anchor.

    How well a set of anchors ``(N, 4)`` "covers" the objects: a box whose
    best IoU is below ``fg_iou`` (0.7) only gets a positive anchor through
    the highest-IoU rule of §3.1.2, and one far below it is hard for the RPN
    to regress to. With ``image_size = (H, W)`` only anchors inside the image
    count, as in training (§3.3). Chapter 3 draws its histogram.
    """
    check_boxes(anchors, "anchors")
    check_boxes(gt_boxes, "gt_boxes")
    if image_size is not None:
        anchors = anchors[inside_image(anchors, image_size)]
    if anchors.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return gt_boxes.new_zeros(gt_boxes.shape[0])
    return box_iou(anchors, gt_boxes, validate=False).max(dim=0).values  # (G,)
