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

Random subsets without a loop: every candidate gets an i.i.d. ``U(0, 1)`` key,
and per image the members of a group (positives, say) with the ``k`` smallest
keys (one ``topk`` over the batch) are a uniformly random ``k``-subset of that
group. Keys are float64, so ties (which would favour low indices) practically
never occur.

Dependencies: anchors and boxes only, so that rpn.py and fast_rcnn.py can import
this module (the default box weights equal ``fast_rcnn.BOX_WEIGHTS``; a test checks).

Shape glossary: ``B`` images, ``N`` anchors per image, ``G`` padded ground-truth
boxes, ``P`` padded proposals, ``C = P + G`` candidate RoIs, ``S`` RoI slots per
image (``batch_size_per_image``), ``K`` object classes.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from frcnn_lite.anchors import IGNORED, NEGATIVE, POSITIVE
from frcnn_lite.boxes import box_iou, encode_boxes

Size = Tuple[int, int]
_PAD_BOX = (
    0.0,
    0.0,
    1.0,
    1.0,
)  # a valid box for padded rows; they are masked everywhere


def pad_boxes(
    boxes: Sequence[torch.Tensor], name: str = "boxes"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes ``[(G_i, 4)] * B`` -> ``padded (B, G, 4)``, ``valid (B, G)``.

    Padded rows hold a dummy unit box. Only shapes are checked here (free); the
    values of targets are checked once at the model's entry
    (:func:`frcnn_lite.transform.check_inputs`), and proposals are our own.
    """
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(
                f"{name}[{i}] must be a (G_i, 4) tensor of (x1, y1, x2, y2), "
                f"got {shape}."
            )
    padded = _pad([b for b in boxes], boxes[0].new_tensor(_PAD_BOX))  # (B, G, 4)
    ones = [torch.ones(b.shape[0], dtype=torch.bool, device=b.device) for b in boxes]
    valid = _pad(ones, torch.tensor(False, device=boxes[0].device))  # (B, G)
    return padded, valid


def _pad(rows: Sequence[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
    """Stack ``[(G_i, *D)] * B`` into ``(B, max(G_i, 1), *D)``, padded with ``fill``."""
    size = max([r.shape[0] for r in rows] + [1])
    out = fill.expand(len(rows), size, *fill.shape).clone()
    for i, r in enumerate(rows):  # B copies; no per-box work
        out[i, : r.shape[0]] = r
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


def _random_firsts(group: torch.Tensor, k: int, keys: torch.Tensor) -> torch.Tensor:
    """Per row, the ``k`` members of ``group (B, M)`` with the smallest ``keys``.

    Returns their indices ``(B, k)``.

    With i.i.d. uniform keys the first ``j <= #group`` of them are a uniformly
    random ``j``-subset of the group (columns past ``#group`` are not members).
    """
    k = max(1, min(k, group.shape[1]))  # at least one column: gathers stay valid
    return keys.masked_fill(~group, 2.0).topk(k, dim=1, largest=False).indices  # (B, k)


def _uniform_keys(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    # in [0, 1); float64, so ties practically never happen
    keys = torch.rand(shape, generator=generator, dtype=torch.float64,
                      device=gen_device)
    return keys.to(device)


def label_anchors_batch(
    anchors: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    image_sizes: Sequence[Size],
    fg_iou: float = 0.7,
    bg_iou: float = 0.3,
    *,
    allowed_border: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`~frcnn_lite.anchors.label_anchors` for B images (§3.1.2).

    ``anchors (N, 4)`` shared by the images, ``gt_boxes [(G_i, 4)] * B``, one
    ``(H, W)`` per image -> ``labels (B, N)`` int64 (1 / 0 / -1) and
    ``matched (B, N)`` int64, the index of each anchor's best box in its image
    (0 for an image without boxes). The IoUs are computed once against all
    images' boxes together (``sum G_i`` columns, as much work as the loop), then
    spread to a padded ``(N, B, G)`` view in which padded boxes get IoU -2,
    below the -1 of border anchors, so they are never matched.
    """
    b = len(gt_boxes)
    counts = [g.shape[0] for g in gt_boxes]
    size = max(counts + [1])
    total = sum(counts)
    # column of image i's box j among the concatenated boxes; padding -> the -2 column
    column = torch.full((b, size), total, dtype=torch.int64)
    offsets = [0] + list(itertools.accumulate(counts))
    for i, n in enumerate(counts):
        column[i, :n] = torch.arange(offsets[i], offsets[i] + n)
    all_gt = torch.cat(list(gt_boxes)).reshape(-1, 4)  # (T, 4), T = sum G_i
    iou = box_iou(anchors, all_gt, validate=False)  # (N, T)
    iou = torch.cat([iou, iou.new_full((iou.shape[0], 1), -2.0)], dim=1)  # (N, T + 1)
    iou = iou[:, column.to(anchors.device)]  # (N, B, G)
    wh = [[w, h] for h, w in image_sizes]
    sizes = torch.as_tensor(wh, dtype=anchors.dtype, device=anchors.device)  # (B, 2)
    low = (anchors[:, None, :2] >= -allowed_border).all(dim=-1)  # (N, 1)
    high = (anchors[:, None, 2:] <= sizes[None] + allowed_border).all(dim=-1)  # (N, B)
    inside = low & high  # (N, B): anchors within the border of each image
    real = iou > -2.0  # (N, B, G): boxes that exist
    iou.masked_fill_(~inside[:, :, None] & real, -1.0)  # border anchors match nothing
    best_iou, matched = iou.max(dim=2)  # (N, B)
    best_per_gt = iou.max(dim=0, keepdim=True).values  # (1, B, G); -2 for padding
    is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=2)  # (N, B)
    # masked_fill, not labels[mask] = v: boolean indexing would wait for the GPU
    labels = torch.full_like(matched, IGNORED).masked_fill(
        inside & (best_iou < bg_iou), NEGATIVE
    )
    labels = labels.masked_fill(is_best | (inside & (best_iou >= fg_iou)), POSITIVE)
    return labels.T.contiguous(), matched.T.contiguous()  # (B, N) each


def sample_anchors_batch(
    labels: torch.Tensor,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """:func:`~frcnn_lite.anchors.sample_anchors` for B images (§3.1.3).

    ``labels (B, N)`` from :func:`label_anchors_batch` -> sampled ``(B, N)``.

    Per image at most ``batch_size_per_image * positive_fraction`` (128) random
    positives, random negatives up to ``batch_size_per_image`` (256) in all.
    """
    positive, negative = labels == POSITIVE, labels == NEGATIVE  # (B, N)
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = positive.sum(dim=1, keepdim=True).clamp(max=max_pos)  # (B, 1)
    num_neg = torch.minimum(
        negative.sum(dim=1, keepdim=True), batch_size_per_image - num_pos
    )
    keys = _uniform_keys(labels.shape, generator, labels.device)  # (B, N)
    pos = _random_firsts(positive, max_pos, keys)  # (B, <=128)
    neg = _random_firsts(negative, batch_size_per_image, keys)  # (B, <=256)
    # write into a spare column N the picks past each image's count
    b, spare = labels.shape
    sampled = labels.new_full((b, spare + 1), IGNORED)  # (B, N + 1)
    rank_pos = torch.arange(pos.shape[1], device=labels.device)
    rank_neg = torch.arange(neg.shape[1], device=labels.device)
    sampled.scatter_(1, pos.masked_fill(rank_pos >= num_pos, spare), POSITIVE)
    sampled.scatter_(1, neg.masked_fill(rank_neg >= num_neg, spare), NEGATIVE)
    return sampled[:, :spare]


def rpn_targets_batch(
    anchors: torch.Tensor,
    image_sizes: Sequence[Size],
    targets: List[dict],
    *,
    fg_iou: float = 0.7,
    bg_iou: float = 0.3,
    allowed_border: float = 0.0,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sampled labels ``(B, N)`` and Eq. 2 targets ``(B, N, 4)``, as
    ``RegionProposalNetwork.targets_for`` returns them; feed them to
    :func:`frcnn_lite.rpn.rpn_loss` (Eq. 1) unchanged."""
    gt, valid = pad_boxes([t["boxes"] for t in targets], "targets.boxes")  # (B, G, 4)
    labels, matched = label_anchors_batch(
        anchors,
        [t["boxes"] for t in targets],
        image_sizes,
        fg_iou,
        bg_iou,
        allowed_border=allowed_border,
    )
    labels = sample_anchors_batch(
        labels, batch_size_per_image, positive_fraction, generator
    )
    b, n = labels.shape
    matched_gt = gt.gather(1, matched[..., None].expand(-1, -1, 4))  # (B, N, 4)
    reg = encode_boxes(anchors.repeat(b, 1), matched_gt.reshape(-1, 4), validate=False)
    reg = reg.reshape(b, n, 4) * valid.any(dim=1)[:, None, None]  # zeros without boxes
    return labels, reg


def sample_rois_batch(
    proposals: List[torch.Tensor],
    targets: List[Dict[str, torch.Tensor]],
    *,
    batch_size_per_image: int = 128,
    positive_fraction: float = 0.25,
    fg_iou: float = 0.5,
    bg_iou_hi: float = 0.5,
    bg_iou_lo: float = 0.1,
    add_gt_boxes: bool = True,
    box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),  # fast_rcnn.BOX_WEIGHTS
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~frcnn_lite.fast_rcnn.sample_rois` for B images (Fast R-CNN §2.3; §3.2).

    Same rules: candidates are the proposals plus the ground truth; foreground
    IoU ``>= fg_iou``, at most ``round(S * positive_fraction)`` (32) of them;
    background IoU in ``[bg_iou_lo, bg_iou_hi)`` fills up to ``S`` (128); an
    image without boxes has only background. Returns ``S`` slots per image,
    foreground first: ``rois (B, S, 4)``, ``labels (B, S)`` int64 (class, 0 for
    background, -1 for an empty slot, whose box is a dummy) and
    ``regression_targets (B, S, 4)`` (zeros except foreground).
    """
    props, prop_valid = pad_boxes([p.detach() for p in proposals], "proposals")
    gt, gt_valid = pad_boxes([t["boxes"].to(props) for t in targets], "targets.boxes")
    zero = torch.tensor(0, device=props.device)
    gt_labels = _pad([t["labels"].to(props.device) for t in targets], zero)  # (B, G)
    cand = torch.cat([props, gt], dim=1) if add_gt_boxes else props  # (B, C, 4)
    cand_valid = (
        torch.cat([prop_valid, gt_valid], dim=1) if add_gt_boxes else prop_valid
    )
    has_gt = gt_valid.any(dim=1, keepdim=True)  # (B, 1)

    iou = _iou_batch(cand, gt).masked_fill(~gt_valid[:, None, :], -2.0)  # (B, C, G)
    best_iou, matched = iou.max(dim=2)  # (B, C)
    fg = cand_valid & has_gt & (best_iou >= fg_iou)
    bg = cand_valid & ((best_iou < bg_iou_hi) & (best_iou >= bg_iou_lo) | ~has_gt)
    s = batch_size_per_image
    max_fg = int(round(s * positive_fraction))
    num_fg = fg.sum(dim=1, keepdim=True).clamp(max=max_fg)  # (B, 1)
    num_bg = torch.minimum(bg.sum(dim=1, keepdim=True), s - num_fg)  # (B, 1)
    keys = _uniform_keys(fg.shape, generator, props.device)  # (B, C)
    fg_pick, bg_pick = _random_firsts(fg, max_fg, keys), _random_firsts(bg, s, keys)
    # slot j < num_fg holds the j-th random foreground, slot j >= num_fg the
    # (j - num_fg)-th random background
    slot = torch.arange(s, device=props.device).expand(len(proposals), s)  # (B, S)
    is_fg = slot < num_fg
    filled = slot < num_fg + num_bg
    from_fg = fg_pick.gather(1, slot.clamp(max=fg_pick.shape[1] - 1))  # (B, S)
    from_bg = bg_pick.gather(1, (slot - num_fg).clamp(0, bg_pick.shape[1] - 1))
    pick = torch.where(is_fg, from_fg, from_bg)  # (B, S) candidate index
    rois = cand.gather(1, pick[..., None].expand(-1, -1, 4))  # (B, S, 4)
    rois = torch.where(filled[..., None], rois, rois.new_tensor(_PAD_BOX))
    pick_gt = matched.gather(1, pick)  # (B, S)
    labels = gt_labels.gather(1, pick_gt) * is_fg  # (B, S): class for fg, 0 for bg
    labels = labels.masked_fill(~filled, -1)
    fg_slot = is_fg & filled  # (B, S)
    matched_gt = gt.gather(1, pick_gt[..., None].expand(-1, -1, 4))  # (B, S, 4)
    reg = encode_boxes(
        rois.reshape(-1, 4), matched_gt.reshape(-1, 4), box_weights, validate=False
    ).reshape(rois.shape)  # (B, S, 4)
    reg = torch.where(fg_slot[..., None], reg, torch.zeros_like(reg))
    return rois, labels, reg


def fast_rcnn_loss_batch(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
    *,
    lambda_reg: float = 1.0,
    beta: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """:func:`~frcnn_lite.fast_rcnn.fast_rcnn_loss` with empty slots (Fast R-CNN Eq. 1).

    ``class_logits (M, K + 1)``, ``box_deltas (M, 4K)``, ``labels (M,)`` with -1
    for an empty slot (or ``(B, S)``, flattened), ``regression_targets (M, 4)``.
    Both terms are divided by R, the filled slots, as the reference divides by
    its R RoIs; with no index selection the loss needs no host sync.
    """
    labels, regression_targets = labels.reshape(-1), regression_targets.reshape(-1, 4)
    m, k = box_deltas.shape[0], box_deltas.shape[1] // 4
    num_rois = (labels >= 0).sum().clamp(min=1)  # R (1 when empty: sums are 0 then)
    ce = F.cross_entropy(class_logits, labels, ignore_index=-1, reduction="sum")
    cls_index = (labels.clamp(min=1) - 1)[:, None, None].expand(-1, 1, 4)  # (M, 1, 4)
    deltas = box_deltas.reshape(m, k, 4).gather(1, cls_index)[:, 0]  # (M, 4) true class
    box = F.smooth_l1_loss(deltas, regression_targets, beta=beta, reduction="none").sum(
        dim=1
    )
    box = (box * (labels > 0)).sum()  # foreground only
    return {
        "loss_classifier": ce / num_rois,
        "loss_box_reg": lambda_reg * box / num_rois,
    }
