"""Training targets for a whole mini-batch at once: no Python loop over images.

The per-image functions (:func:`frcnn_lite.anchors.label_anchors`,
:func:`~frcnn_lite.anchors.sample_anchors`, :func:`frcnn_lite.fast_rcnn.sample_rois`)
are the readable reference that the book teaches. On a GPU the tiny detector is
bound by the Python work they do per image (a few dozen small kernel launches
each, and host syncs in ``torch.where``), so this module computes the same
targets for ``B`` images in one pass: ground-truth boxes are padded to the
largest ``G`` in the batch, proposals to the largest ``P``, and padded entries
are masked out of every comparison. Results equal the reference's (the tests
compare them): the same labels and matched boxes, the same losses for the same
sampled set, and sampling with the same counts and the same distribution (a
uniformly random subset; the random numbers are drawn differently).

Random subsets without a loop: every candidate gets a key, ``U(0, 1)`` for
positives, ``2 + U(0, 1)`` for negatives and 4 for the rest; after one sort per
row the positives come first in random order, then the negatives, so the first
``k`` of each group are a uniformly random ``k``-subset of it. Keys are float64,
so ties (which would favour low indices) practically never occur.

Shape glossary: ``B`` images, ``N`` anchors per image, ``G`` padded ground-truth
boxes, ``P`` padded proposals, ``C = P + G`` candidate RoIs, ``S`` RoI slots per
image (``batch_size_per_image``), ``K`` object classes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from frcnn_lite.anchors import IGNORED, NEGATIVE, POSITIVE
from frcnn_lite.boxes import box_iou, encode_boxes

Size = Tuple[int, int]
_PAD_BOX = (0.0, 0.0, 1.0, 1.0)  # a valid box for padded rows; they are masked everywhere


def pad_boxes(boxes: Sequence[torch.Tensor], name: str = "boxes"
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes ``[(G_i, 4)] * B`` -> ``padded (B, G, 4)``, ``valid (B, G)`` bool.

    Padded rows hold a dummy unit box. Only shapes are checked here (free); the
    values of targets are checked once at the model's entry
    (:func:`frcnn_lite.transform.check_inputs`), and proposals are our own.
    """
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name}[{i}] must be a (G_i, 4) tensor of (x1, y1, x2, y2), got {shape}.")
    padded = _pad([b for b in boxes], boxes[0].new_tensor(_PAD_BOX))  # (B, G, 4)
    valid = _pad([torch.ones(b.shape[0], dtype=torch.bool, device=b.device) for b in boxes],
                 torch.tensor(False, device=boxes[0].device))  # (B, G)
    return padded, valid


def _pad(rows: Sequence[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
    """Stack ``[(G_i, *D)] * B`` into ``(B, max(G_i, 1), *D)``, missing rows = ``fill (*D)``."""
    size = max([r.shape[0] for r in rows] + [1])
    out = fill.expand(len(rows), size, *fill.shape).clone()
    for i, r in enumerate(rows):  # B copies; no per-box work
        out[i, :r.shape[0]] = r
    return out


def _iou_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair within each image: ``(B, C, 4), (B, G, 4) -> (B, C, G)``.

    The same arithmetic as :func:`frcnn_lite.boxes.box_iou`, one image per row.
    """
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (B, C)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (B, G)
    top_left = torch.max(a[:, :, None, :2], b[:, None, :, :2])  # (B, C, G, 2)
    bottom_right = torch.min(a[:, :, None, 2:], b[:, None, :, 2:])  # (B, C, G, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (B, C, G, 2)
    inter = wh[..., 0] * wh[..., 1]  # (B, C, G)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter)


def _sample_two_groups(first: torch.Tensor, second: torch.Tensor, max_first: int, total: int,
                       generator: Optional[torch.Generator]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, a random subset of ``first`` (at most ``max_first``), then of ``second``.

    ``first, second (B, M)`` disjoint bool masks. Takes ``min(#first, max_first)``
    of the first group and fills up to ``total`` from the second. Returns
    ``order (B, M)`` (first group, then second, each in random order),
    ``num_first, num_second (B,)`` the counts taken, and ``count_first (B,)``.
    """
    gen_device = generator.device if generator is not None else first.device
    keys = torch.rand(first.shape, generator=generator, dtype=torch.float64,
                      device=gen_device).to(first.device)  # (B, M) in [0, 1)
    keys = torch.where(first, keys, torch.where(second, keys + 2.0, torch.full_like(keys, 4.0)))
    order = keys.argsort(dim=1)  # (B, M)
    count_first, count_second = first.sum(dim=1), second.sum(dim=1)  # (B,)
    num_first = count_first.clamp(max=max_first)  # (B,)
    num_second = torch.minimum(count_second, total - num_first)  # (B,)
    return order, num_first, num_second, count_first


def label_anchors_batch(anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor,
                        image_sizes: Sequence[Size], fg_iou: float = 0.7, bg_iou: float = 0.3, *,
                        allowed_border: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`~frcnn_lite.anchors.label_anchors` for B images (§3.1.2).

    ``anchors (N, 4)`` shared by the images, ``gt_boxes (B, G, 4)`` and
    ``gt_valid (B, G)`` from :func:`pad_boxes`, one ``(H, W)`` per image ->
    ``labels (B, N)`` int64 (1 / 0 / -1) and ``matched (B, N)`` int64, the
    index of each anchor's best box (0 for an image without boxes). Padded boxes
    get IoU -2, below the -1 of border anchors, so they are never matched.
    """
    b, g = gt_valid.shape
    sizes = torch.as_tensor([[w, h, w, h] for h, w in image_sizes], dtype=anchors.dtype,
                            device=anchors.device)  # (B, 4)
    inside = ((anchors[None, :, :2] >= -allowed_border).all(dim=-1)
              & (anchors[None, :, 2:] <= sizes[:, None, 2:] + allowed_border).all(dim=-1))  # (B, N)
    iou = box_iou(anchors, gt_boxes.reshape(-1, 4), validate=False)  # (N, B * G)
    iou = iou.reshape(-1, b, g).permute(1, 0, 2)  # (B, N, G)
    iou = iou.masked_fill(~inside[:, :, None], -1.0).masked_fill(~gt_valid[:, None, :], -2.0)
    best_iou, matched = iou.max(dim=2)  # (B, N)
    labels = torch.full_like(matched, IGNORED)
    labels[inside & (best_iou < bg_iou)] = NEGATIVE
    best_per_gt = iou.max(dim=1, keepdim=True).values  # (B, 1, G); -2 for padding
    is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=2)  # (B, N)
    labels[is_best | (inside & (best_iou >= fg_iou))] = POSITIVE
    return labels, matched


def sample_anchors_batch(labels: torch.Tensor, batch_size_per_image: int = 256,
                         positive_fraction: float = 0.5,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """:func:`~frcnn_lite.anchors.sample_anchors` for B images (§3.1.3): ``(B, N) -> (B, N)``.

    Per image at most ``batch_size_per_image * positive_fraction`` (128) random
    positives, random negatives up to ``batch_size_per_image`` (256) in all.
    """
    order, num_pos, num_neg, count_pos = _sample_two_groups(
        labels == POSITIVE, labels == NEGATIVE, int(batch_size_per_image * positive_fraction),
        batch_size_per_image, generator)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))  # (B, N)
    keep_pos = (labels == POSITIVE) & (rank < num_pos[:, None])
    keep_neg = (labels == NEGATIVE) & (rank < (count_pos + num_neg)[:, None])
    sampled = torch.full_like(labels, IGNORED)
    return sampled.masked_fill(keep_pos, POSITIVE).masked_fill(keep_neg, NEGATIVE)


def rpn_targets_batch(anchors: torch.Tensor, image_sizes: Sequence[Size], targets: List[dict], *,
                      fg_iou: float = 0.7, bg_iou: float = 0.3, allowed_border: float = 0.0,
                      batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                      generator: Optional[torch.Generator] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sampled labels ``(B, N)`` and Eq. 2 targets ``(B, N, 4)``, as
    ``RegionProposalNetwork.targets_for`` returns them; feed them to
    :func:`frcnn_lite.rpn.rpn_loss` (Eq. 1) unchanged."""
    gt, valid = pad_boxes([t["boxes"] for t in targets], "targets.boxes")  # (B, G, 4), (B, G)
    labels, matched = label_anchors_batch(anchors, gt, valid, image_sizes, fg_iou, bg_iou,
                                          allowed_border=allowed_border)
    labels = sample_anchors_batch(labels, batch_size_per_image, positive_fraction, generator)
    b, n = labels.shape
    matched_gt = gt.gather(1, matched[..., None].expand(-1, -1, 4))  # (B, N, 4)
    reg = encode_boxes(anchors.repeat(b, 1), matched_gt.reshape(-1, 4), validate=False)
    reg = reg.reshape(b, n, 4) * valid.any(dim=1)[:, None, None]  # zeros without boxes
    return labels, reg


def sample_rois_batch(proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]], *,
                      batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                      fg_iou: float = 0.5, bg_iou_hi: float = 0.5, bg_iou_lo: float = 0.1,
                      add_gt_boxes: bool = True, box_weights: Sequence[float] = (10., 10., 5., 5.),
                      generator: Optional[torch.Generator] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~frcnn_lite.fast_rcnn.sample_rois` for B images (Fast R-CNN §2.3, paper §3.2).

    Same rules: candidates are the proposals plus the ground truth; foreground
    IoU ``>= fg_iou``, at most ``round(S * positive_fraction)`` (32) of them;
    background IoU in ``[bg_iou_lo, bg_iou_hi)`` fills up to ``S`` (128); an
    image without boxes has only background. Returns ``S`` slots per image,
    foreground first: ``rois (B, S, 4)``, ``labels (B, S)`` int64 (class, 0 for
    background, -1 for an empty slot, whose box is a dummy) and
    ``regression_targets (B, S, 4)`` (zeros except foreground).
    """
    props, prop_valid = pad_boxes([p.detach() for p in proposals], "proposals")  # (B, P, 4)
    gt, gt_valid = pad_boxes([t["boxes"].to(props) for t in targets], "targets.boxes")  # (B, G, 4)
    gt_labels = _pad([t["labels"].to(props.device) for t in targets],
                     torch.tensor(0, device=props.device))  # (B, G)
    cand = torch.cat([props, gt], dim=1) if add_gt_boxes else props  # (B, C, 4)
    cand_valid = torch.cat([prop_valid, gt_valid], dim=1) if add_gt_boxes else prop_valid
    has_gt = gt_valid.any(dim=1, keepdim=True)  # (B, 1)

    iou = _iou_batch(cand, gt).masked_fill(~gt_valid[:, None, :], -2.0)  # (B, C, G)
    best_iou, matched = iou.max(dim=2)  # (B, C)
    fg = cand_valid & has_gt & (best_iou >= fg_iou)
    bg = cand_valid & ((best_iou < bg_iou_hi) & (best_iou >= bg_iou_lo) | ~has_gt)
    s = batch_size_per_image
    order, num_fg, num_bg, count_fg = _sample_two_groups(
        fg, bg, int(round(s * positive_fraction)), s, generator)
    slot = torch.arange(s, device=props.device).expand(len(proposals), s)  # (B, S)
    # slot j < num_fg takes the j-th foreground; later slots the (j - num_fg)-th background
    is_fg = slot < num_fg[:, None]
    source = torch.where(is_fg, slot, slot - num_fg[:, None] + count_fg[:, None])  # (B, S)
    filled = slot < (num_fg + num_bg)[:, None]
    pick = order.gather(1, source.clamp(max=order.shape[1] - 1))  # (B, S) candidate index
    rois = cand.gather(1, pick[..., None].expand(-1, -1, 4))  # (B, S, 4)
    rois = torch.where(filled[..., None], rois, rois.new_tensor(_PAD_BOX))
    pick_gt = matched.gather(1, pick)  # (B, S)
    labels = gt_labels.gather(1, pick_gt) * is_fg  # (B, S): class for fg, 0 for bg
    labels = labels.masked_fill(~filled, -1)
    fg_slot = is_fg & filled  # (B, S)
    matched_gt = gt.gather(1, pick_gt[..., None].expand(-1, -1, 4))  # (B, S, 4)
    reg = encode_boxes(rois.reshape(-1, 4), matched_gt.reshape(-1, 4), box_weights,
                       validate=False).reshape(rois.shape)  # (B, S, 4)
    reg = torch.where(fg_slot[..., None], reg, torch.zeros_like(reg))
    return rois, labels, reg


def fast_rcnn_loss_batch(class_logits: torch.Tensor, box_deltas: torch.Tensor,
                         labels: torch.Tensor, regression_targets: torch.Tensor, *,
                         lambda_reg: float = 1.0, beta: float = 1.0) -> Dict[str, torch.Tensor]:
    """:func:`~frcnn_lite.fast_rcnn.fast_rcnn_loss` (Fast R-CNN §2.3 Eq. 1) with empty slots.

    ``class_logits (M, K + 1)``, ``box_deltas (M, 4K)``, ``labels (M,)`` with -1
    for an empty slot (or ``(B, S)``, flattened), ``regression_targets (M, 4)``.
    Both terms are divided by R, the filled slots, as the reference divides by
    its R RoIs; with no index selection the loss needs no host sync.
    """
    labels, regression_targets = labels.reshape(-1), regression_targets.reshape(-1, 4)
    m, k = box_deltas.shape[0], box_deltas.shape[1] // 4
    num_rois = (labels >= 0).sum().clamp(min=1)  # R (1 when empty: both sums are then 0)
    ce = F.cross_entropy(class_logits, labels, ignore_index=-1, reduction="sum")
    cls_index = (labels.clamp(min=1) - 1)[:, None, None].expand(-1, 1, 4)  # (M, 1, 4)
    deltas = box_deltas.reshape(m, k, 4).gather(1, cls_index)[:, 0]  # (M, 4) true class
    box = F.smooth_l1_loss(deltas, regression_targets, beta=beta, reduction="none").sum(dim=1)
    box = (box * (labels > 0)).sum()  # foreground only
    return {"loss_classifier": ce / num_rois, "loss_box_reg": lambda_reg * box / num_rois}
