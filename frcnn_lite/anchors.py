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

# Label values, as in the paper's p* plus an "ignored" state.
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def base_anchors(scales: Sequence[float] = (128, 256, 512), ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 *, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
    """The ``(A, 4)`` base anchors centred on (0, 0), A = len(scales) * len(ratios).

    An anchor of scale ``s`` and ratio ``r = h / w`` has area ``s**2``, so
    ``w = s / sqrt(r)`` and ``h = s * sqrt(r)`` (§3.1.1). Ordered ratio-major
    (all scales of the first ratio, then the next ratio), as py-faster-rcnn and
    torchvision order them. Coordinates are not rounded.
    """
    if len(scales) == 0 or len(ratios) == 0:
        raise ValueError(f"anchors need at least one scale and one ratio, got scales={list(scales)}, "
                         f"ratios={list(ratios)}; the paper uses scales (128, 256, 512), ratios (0.5, 1, 2).")
    scales_t = torch.as_tensor(scales, dtype=dtype, device=device)  # (S,)
    ratios_t = torch.as_tensor(ratios, dtype=dtype, device=device)  # (R,)
    if bool((scales_t <= 0).any()) or not bool(torch.isfinite(scales_t).all()):
        raise ValueError(f"anchor scales must be positive and finite (side lengths in pixels), "
                         f"got {list(scales)}.")
    if bool((ratios_t <= 0).any()) or not bool(torch.isfinite(ratios_t).all()):
        raise ValueError(f"anchor ratios (h / w) must be positive and finite, got {list(ratios)}.")
    heights = (ratios_t.sqrt()[:, None] * scales_t[None, :]).reshape(-1)  # (R * S,)
    widths = (scales_t[None, :] / ratios_t.sqrt()[:, None]).reshape(-1)  # (R * S,)
    return torch.stack((-widths, -heights, widths, heights), dim=1) / 2  # (A, 4)


def grid_anchors(feature_size: Tuple[int, int], stride: float, base: torch.Tensor) -> torch.Tensor:
    """All anchors of a feature map: feature_size ``(H, W)`` -> ``(H * W * A, 4)``.

    The base anchors ``(A, 4)`` are shifted to the centre of every cell; cell
    ``(i, j)`` (row i, column j) is centred at ``((j + 0.5) * stride, (i + 0.5) *
    stride)`` in input pixels. Rows come first, then columns, then base anchors,
    so anchor ``(i * W + j) * A + a`` is base anchor ``a`` at cell ``(i, j)``, the
    same order as the RPN head's outputs flattened from (B, A, H, W).
    """
    height, width = int(feature_size[0]), int(feature_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"feature_size must be (H, W) with H, W >= 1, got {tuple(feature_size)}; "
                         f"the image may be smaller than the backbone's stride.")
    if not stride > 0:
        raise ValueError(f"stride must be positive (input pixels per feature cell), got {stride}.")
    if base.dim() != 2 or base.shape[-1] != 4:
        raise ValueError(f"base must be (A, 4) anchors from base_anchors, got {tuple(base.shape)}.")
    ys = (torch.arange(height, device=base.device, dtype=base.dtype) + 0.5) * stride  # (H,)
    xs = (torch.arange(width, device=base.device, dtype=base.dtype) + 0.5) * stride  # (W,)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (centres + base[None, :, :]).reshape(-1, 4)  # (H * W * A, 4)


def _check_gt_inside(gt_boxes: torch.Tensor, image_size: Tuple[int, int], tolerance: float = 1e-3) -> None:
    height, width = image_size
    outside = ((gt_boxes[:, 0] < -tolerance) | (gt_boxes[:, 1] < -tolerance)
               | (gt_boxes[:, 2] > width + tolerance) | (gt_boxes[:, 3] > height + tolerance))
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise ValueError(f"gt_boxes[{i}] = {gt_boxes[i].tolist()} lies outside the image of size "
                         f"(H, W) = {tuple(image_size)}; fix the annotation or clip it with "
                         f"boxes.clip_boxes before training (the library never clips targets silently).")


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size: Tuple[int, int],
                  fg_iou: float = 0.7, bg_iou: float = 0.3, *, allowed_border: float = 0.0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Label every anchor positive (1), negative (0) or ignored (-1), §3.1.2.

    Args:
        anchors: ``(N, 4)`` anchors of one image (from :func:`grid_anchors`).
        gt_boxes: ``(G, 4)`` ground-truth boxes; ``G = 0`` is valid.
        image_size: ``(H, W)`` of the (resized) input image.
        fg_iou, bg_iou: the paper's 0.7 and 0.3.
        allowed_border: anchors reaching further than this many pixels past the
            image border are ignored (0 as in the paper's training; pass
            ``float('inf')`` to label every anchor).

    Returns:
        ``labels (N,)`` int64 and ``matched (N,)`` int64, the index of each
        anchor's highest-IoU ground-truth box (0 when ``G = 0``).

    The rules, in the order that resolves conflicts: anchors crossing the
    border are ignored; an anchor whose IoU is below ``bg_iou`` with every box
    is negative; the anchor(s) with the highest IoU for each box are positive
    (ties included, and only when that IoU is above 0); an anchor with IoU
    ``>= fg_iou`` with some box is positive.
    """
    # Devices first: the value checks below cannot read a tensor on the wrong device.
    if isinstance(anchors, torch.Tensor) and isinstance(gt_boxes, torch.Tensor) \
            and anchors.device != gt_boxes.device:
        raise ValueError(f"anchors are on {anchors.device} but gt_boxes on {gt_boxes.device}; "
                         f"move them to one device, e.g. gt_boxes.to(anchors.device).")
    check_boxes(anchors, "anchors")
    check_boxes(gt_boxes, "gt_boxes")
    _check_gt_inside(gt_boxes, image_size)
    height, width = image_size
    inside = ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
              & (anchors[:, 2] <= width + allowed_border) & (anchors[:, 3] <= height + allowed_border))
    labels = torch.full((anchors.shape[0],), IGNORED, dtype=torch.int64, device=anchors.device)
    matched = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
    if gt_boxes.shape[0] == 0:
        labels[inside] = NEGATIVE
        return labels, matched

    iou = box_iou(anchors, gt_boxes, validate=False)  # (N, G)
    iou[~inside] = -1.0  # border anchors can match nothing
    best_iou, matched = iou.max(dim=1)  # (N,), (N,)
    labels[inside & (best_iou < bg_iou)] = NEGATIVE
    # Every box gets at least its best anchor(s): without this rule a box that
    # no anchor covers at 0.7 would have no positive at all (§3.1.2).
    best_per_gt = iou.max(dim=0).values  # (G,)
    is_best = (iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)  # (N, G)
    labels[is_best.any(dim=1)] = POSITIVE
    labels[inside & (best_iou >= fg_iou)] = POSITIVE
    return labels, matched


def sample_anchors(labels: torch.Tensor, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sample the anchors of one image's mini-batch (§3.1.3), ``(N,) -> (N,)``.

    Keeps at most ``batch_size_per_image * positive_fraction`` positives (128)
    chosen at random, fills the rest of the ``batch_size_per_image`` (256) with
    random negatives, and sets every other anchor to -1 (ignored). Returns a new
    tensor; ``labels`` is not changed.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be (N,) as returned by label_anchors, got {tuple(labels.shape)}.")
    if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"need batch_size_per_image >= 1 and 0 <= positive_fraction <= 1, got "
                         f"{batch_size_per_image} and {positive_fraction}.")
    positive = torch.where(labels == POSITIVE)[0]
    negative = torch.where(labels == NEGATIVE)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    keep_pos = positive[_random_subset(positive.numel(), num_pos, generator, labels.device)]
    keep_neg = negative[_random_subset(negative.numel(), num_neg, generator, labels.device)]
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
                    image_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Best IoU ``(G,)`` of each ground-truth box ``(G, 4)`` with any anchor ``(N, 4)``.

    How well a set of anchors "covers" the objects: a box whose best IoU is
    below ``fg_iou`` (0.7) only gets a positive anchor through the
    highest-IoU rule of §3.1.2, and one far below it is hard for the RPN to
    regress to. With ``image_size = (H, W)`` only anchors inside the image
    count, as in training (§3.3). Chapter 3 draws its histogram.
    """
    check_boxes(anchors, "anchors")
    check_boxes(gt_boxes, "gt_boxes")
    if image_size is not None:
        height, width = image_size
        inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
                  & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))
        anchors = anchors[inside]
    if anchors.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return torch.zeros(gt_boxes.shape[0], dtype=gt_boxes.dtype, device=gt_boxes.device)
    return box_iou(anchors, gt_boxes, validate=False).max(dim=0).values  # (G,)
