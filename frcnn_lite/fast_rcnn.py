"""The Fast R-CNN detection head: RoI targets, class scores and boxes, loss, post-processing.

Paper: Faster R-CNN §3.2 reuses the detector of Fast R-CNN (Girshick, 2015)
on the RPN's proposals. From Fast R-CNN: RoI sampling (§2.3: 128 RoIs per
image, 25% foreground with IoU >= 0.5, background with IoU in [0.1, 0.5)),
the head (§2.1-2.2: RoI pooling, two fully connected layers, a (K + 1)-way
softmax and 4K class-specific box deltas), the loss (§2.3 Eq. 1: cross-entropy
plus smooth L1 on the true class's deltas) and the test-time post-processing
(Faster R-CNN §4: score > 0.05, NMS at IoU 0.3 per class, at most 100 boxes).

Shape glossary: ``B`` images, ``C`` feature channels, ``P_i`` proposals of
image ``i``, ``R_i`` sampled RoIs of image ``i`` and ``R`` their total, ``K``
object classes (labels ``1..K``, ``0`` = background), ``D`` detections.
Naming: ``rois`` are the boxes the head looks at (proposals, sampled or not),
``labels``/``regression_targets`` what it should say about them, ``class_logits``
``(R, K + 1)`` and ``box_deltas`` ``(R, 4K)`` what it says: class ``k``'s deltas
are columns ``4(k - 1) .. 4k - 1``.

Box targets are Eq. 2 of the paper (:func:`frcnn_lite.boxes.encode_boxes`) with
weights (10, 10, 5, 5), i.e. divided by the stds (0.1, 0.1, 0.2, 0.2) as in
py-faster-rcnn, so the four targets have similar spread.

Built in chapter 8 (the RoI pooling inside it in chapter 7).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from frcnn_lite.anchors import _random_subset
from frcnn_lite.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from frcnn_lite.layer_checks import (check_fast_rcnn_loss_inputs, check_head_features,
                                     check_head_outputs, check_head_settings,
                                     check_head_state_dict, check_roi_sampling,
                                     check_sampler_settings)
from frcnn_lite.roi_pool import roi_pool, rois_from_boxes

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / stds (0.1, 0.1, 0.2, 0.2)


def sample_rois(proposals: List[torch.Tensor], targets: List[dict], *,
                batch_size_per_image: int = 128,
                positive_fraction: float = 0.25, fg_iou: float = 0.5,
                bg_iou_hi: float = 0.5, bg_iou_lo: float = 0.1,
                add_gt_boxes: bool = True,
                box_weights: Sequence[float] = BOX_WEIGHTS,
                generator: Optional[torch.Generator] = None,
                num_classes: Optional[int] = None) -> Tuple[list, list, list]:
    """Each image's training RoIs and their targets (Fast R-CNN §2.3; §3.2).

    Candidates are an image's proposals ``(P_i, 4)`` plus (``add_gt_boxes``)
    its ground-truth boxes (:func:`match_rois`). Foreground: IoU ``>= fg_iou``,
    at most ``batch_size_per_image * positive_fraction`` (32 of 128), drawn
    at random. Background, IoU in ``[bg_iou_lo, bg_iou_hi)``, fills the rest,
    so an image with few candidates gets fewer RoIs.

    Returns lists, per image, foreground first: ``rois (R_i, 4)``, ``labels
    (R_i,)`` (0: background), ``regression_targets (R_i, 4)`` (Eq. 2).
    """
    check_roi_sampling(proposals, targets, num_classes, batch_size_per_image,
                       positive_fraction, fg_iou, bg_iou_hi, bg_iou_lo)
    max_fg = int(round(batch_size_per_image * positive_fraction))
    out = ([], [], [])  # rois, labels, regression targets
    for props, target in zip(proposals, targets):
        gt_boxes = target["boxes"].to(props)  # (G, 4)
        candidates = props.detach()
        if add_gt_boxes:
            candidates = torch.cat([candidates, gt_boxes])  # (P_i + G, 4)
        matched, fg, bg = match_rois(candidates, gt_boxes, fg_iou, bg_iou_hi,
                                     bg_iou_lo)
        num_fg = min(fg.numel(), max_fg)
        num_bg = min(bg.numel(), batch_size_per_image - num_fg)
        fg = fg[_random_subset(fg.numel(), num_fg, generator, props.device)]
        bg = bg[_random_subset(bg.numel(), num_bg, generator, props.device)]
        keep = torch.cat([fg, bg])  # (R_i,) foreground first
        found = roi_targets(candidates[keep], gt_boxes, target["labels"],
                            matched[fg], box_weights)
        for lists, value in zip(out, found):
            lists.append(value)
    return out


def match_rois(candidates: torch.Tensor, gt_boxes: torch.Tensor, fg_iou: float,
               bg_iou_hi: float, bg_iou_lo: float):
    """Match candidates ``(N, 4)`` to ground truth ``(G, 4)``: ``matched, fg, bg``.

    ``matched (N,)`` is each candidate's best-overlapping box; ``fg`` and ``bg``
    index the foreground (IoU ``>= fg_iou``) and background (IoU in
    ``[bg_iou_lo, bg_iou_hi)``) candidates. Below ``bg_iou_lo`` a candidate is
    never drawn: the 0.1 floor keeps the background near objects, a crude
    hard-negative mining. An image without objects has no overlaps to rank,
    so all its candidates are background.
    """
    if gt_boxes.shape[0] == 0:
        matched = torch.zeros(candidates.shape[0], dtype=torch.int64,
                              device=candidates.device)
        return matched, matched[:0], torch.arange(candidates.shape[0],
                                                  device=candidates.device)
    best_iou, matched = box_iou(candidates, gt_boxes, validate=False).max(dim=1)
    fg = torch.where(best_iou >= fg_iou)[0]
    bg = torch.where((best_iou < bg_iou_hi) & (best_iou >= bg_iou_lo))[0]
    return matched, fg, bg


def roi_targets(rois: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                fg_matched: torch.Tensor, box_weights: Sequence[float]):
    """What the head should say about sampled RoIs ``(R_i, 4)``, foreground first.

    The first ``F = len(fg_matched)`` RoIs are foreground, matched to
    ``gt_boxes[fg_matched]``: their label is that box's class and their target
    the Eq. 2 deltas of the box relative to the RoI, times ``box_weights``.
    The rest are background: label 0 and zero targets (no box loss).
    Returns ``(rois, labels (R_i,) int64, regression_targets (R_i, 4))``.
    """
    num_fg = fg_matched.numel()
    labels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    targets = torch.zeros_like(rois)  # (R_i, 4)
    if num_fg:
        labels[:num_fg] = gt_labels.to(rois.device)[fg_matched]
        targets[:num_fg] = encode_boxes(rois[:num_fg], gt_boxes[fg_matched], box_weights,
                                        validate=False)
    return rois, labels, targets


class FastRCNNHead(nn.Module):
    """RoI pool -> fc6 -> fc7 -> K + 1 class scores and 4K box deltas.

    Fast R-CNN Fig. 1, py-faster-rcnn's layer names. ``num_classes``: K (the
    head adds background); ``representation_size``: fc6/fc7 width (4096 in
    VGG-16); ``roi_pool_impl``: "ours" (chapter 7) or "torchvision".
    """

    def __init__(self, in_channels: int, num_classes: int, *,
                 pool_size: int = 7, spatial_scale: float = 1 / 16,
                 representation_size: int = 1024, roi_pool_impl: str = "ours",
                 dropout: float = 0.0):
        super().__init__()
        check_head_settings(num_classes, roi_pool_impl)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.pool_size, self.spatial_scale = pool_size, spatial_scale
        self.roi_pool_impl = roi_pool_impl
        self.fc6 = nn.Linear(in_channels * pool_size ** 2, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, 4 * num_classes)
        init_predictors(self.cls_score, self.bbox_pred)
        self._register_load_state_dict_pre_hook(HeadStateCheck(num_classes))

    def pool(self, features: torch.Tensor, rois: List[torch.Tensor]):
        """``(R, C, 7, 7)`` RoI-pooled features of boxes ``[(R_i, 4)]``."""
        check_head_features(features, rois, self.in_channels)
        rois5 = rois_from_boxes([r.detach().to(features) for r in rois])
        size, scale = self.pool_size, self.spatial_scale
        if self.roi_pool_impl == "torchvision":
            return torchvision.ops.roi_pool(features, rois5, size, scale)
        return roi_pool(features, rois5, size, scale, validate=False)

    def forward(self, features: torch.Tensor, rois: List[torch.Tensor]):
        """``(B, C, Hf, Wf)``, ``[(R_i, 4)]`` -> ``(R, K + 1)``, ``(R, 4K)``."""
        x = self.pool(features, rois).flatten(1)  # (R, C * 7 * 7)
        x = self.dropout(F.relu(self.fc6(x)))  # (R, representation_size)
        x = self.dropout(F.relu(self.fc7(x)))  # (R, representation_size)
        return self.cls_score(x), self.bbox_pred(x)


class HeadStateCheck:
    """Runs before a state dict loads into a :class:`FastRCNNHead` (also inside a
    model): a checkpoint for another class count gets a message that says what
    to do, instead of torch's bare size mismatch."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, state_dict, prefix, *unused):
        check_head_state_dict(state_dict, prefix, self.num_classes)


def init_predictors(cls_score: nn.Linear, bbox_pred: nn.Linear) -> None:
    """py-faster-rcnn's init: weights N(0, 0.01) and N(0, 0.001), zero biases, so
    training starts from near-uniform scores and near-zero box changes."""
    nn.init.normal_(cls_score.weight, std=0.01)
    nn.init.normal_(bbox_pred.weight, std=0.001)
    nn.init.zeros_(cls_score.bias)
    nn.init.zeros_(bbox_pred.bias)


def fast_rcnn_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels,
                   regression_targets, *, lambda_reg: float = 1.0,
                   beta: float = 1.0) -> Dict[str, torch.Tensor]:
    """Fast R-CNN's multi-task loss (Fast R-CNN §2.3, Eq. 1), over R RoIs.

        L = 1/R sum_r [-log p_r(u_r) + lambda [u_r >= 1] smoothL1(t^(u_r) - v)]

    ``u_r``: the RoI's true class; ``t^(u)``: the predicted deltas of that
    class; ``v``: the target; smooth L1 with ``beta = 1``. Background RoIs
    have no box loss; the box term is summed over foreground and divided by
    all R, as in py-faster-rcnn. ``class_logits (R, K + 1)``, ``box_deltas
    (R, 4K)``; ``labels (R,)`` and ``regression_targets (R, 4)``, or the
    per-image lists of :func:`sample_rois`. Returns ``{"loss_classifier",
    "loss_box_reg"}`` (zeros that reach the parameters when R = 0).
    """
    labels, regression_targets = check_fast_rcnn_loss_inputs(
        class_logits, box_deltas, labels, regression_targets)
    num_rois, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    if num_rois == 0:  # an empty mini-batch
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_classifier": zero, "loss_box_reg": zero.clone()}
    loss_classifier = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]  # (F,)
    per_class = box_deltas.reshape(num_rois, num_classes, 4)
    deltas = per_class[fg, labels[fg] - 1]  # (F, 4): the true class's deltas
    loss_box_reg = F.smooth_l1_loss(deltas, regression_targets[fg], beta=beta,
                                    reduction="sum")
    return {"loss_classifier": loss_classifier,
            "loss_box_reg": lambda_reg * loss_box_reg / num_rois}


def decode_detections(class_logits: torch.Tensor, box_deltas: torch.Tensor,
                      rois: List[torch.Tensor], image_sizes: Sequence[Tuple[int, int]], *,
                      box_weights: Sequence[float] = BOX_WEIGHTS
                      ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per-class boxes and scores of every RoI, before thresholding and NMS.

    Softmax over the ``K + 1`` logits; each RoI ``(R_i, 4)`` moved by each
    class's deltas (inverse Eq. 2) and clipped to its image ``(H, W)``. Returns
    per image ``(boxes (R_i, K, 4), scores (R_i, K))`` for classes ``1..K``.
    """
    num_classes = class_logits.shape[1] - 1
    scores = F.softmax(class_logits, dim=1)[:, 1:]  # (R, K) without background
    rois_all = torch.cat([r.detach().to(box_deltas) for r in rois])  # (R, 4)
    reference = rois_all[:, None, :].expand(-1, num_classes, 4).reshape(-1, 4)  # (R * K, 4)
    boxes = decode_boxes(reference, box_deltas.reshape(-1, 4), box_weights, validate=False)
    boxes = boxes.reshape(-1, num_classes, 4)  # (R, K, 4)
    out = []
    for b, s, size in zip(boxes.split([r.shape[0] for r in rois]),
                          scores.split([r.shape[0] for r in rois]), image_sizes):
        out.append((clip_boxes(b.reshape(-1, 4), size).reshape(b.shape), s))
    return out


def postprocess_detections(class_logits: torch.Tensor, box_deltas: torch.Tensor,
                           rois: List[torch.Tensor],
                           image_sizes: Sequence[Tuple[int, int]], *,
                           score_thresh: float = 0.05, nms_thresh: float = 0.3,
                           detections_per_img: int = 100,
                           box_weights: Sequence[float] = BOX_WEIGHTS
                           ) -> List[Dict[str, torch.Tensor]]:
    """Final detections from the head's outputs (§4; py-faster-rcnn's test).

    Per image: decode each RoI with each class's deltas and clip
    (:func:`decode_detections`); keep (box, class) pairs scoring above
    ``score_thresh``; drop boxes that clipping squashed (side < 0.01 px); NMS
    at IoU ``nms_thresh`` within each class; keep the ``detections_per_img``
    best. Returns per image ``{"boxes": (D, 4), "labels": (D,) in 1..K,
    "scores": (D,)}``, sorted by score (torchvision's format).
    """
    check_head_outputs(class_logits, box_deltas, rois, image_sizes)
    detections = []
    decoded = decode_detections(class_logits, box_deltas, rois, image_sizes,
                                box_weights=box_weights)
    for boxes, scores in decoded:
        labels = torch.arange(1, scores.shape[1] + 1, device=scores.device)
        labels = labels.expand_as(scores).reshape(-1)  # (R_i * K,)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.where(scores > score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        keep = keep[torchvision.ops.batched_nms(boxes[keep], scores[keep],
                                                labels[keep], nms_thresh)]
        keep = keep[:detections_per_img]  # batched_nms sorts by score
        detections.append({"boxes": boxes[keep], "labels": labels[keep],
                           "scores": scores[keep]})
    return detections


class RoIHeads(nn.Module):
    """The detection half of Faster R-CNN (§3.2): sampling, head, loss or detections.

    ``forward(features (B, C, Hf, Wf), proposals [(P_i, 4)], image_sizes [(H, W)],
    targets=None) -> (detections, losses)``:

    - training mode: ``targets`` required; samples RoIs from the proposals
      (:func:`sample_rois`), runs the head and returns ``([], {"loss_classifier",
      "loss_box_reg"})``.
    - eval mode: runs the head on every proposal and returns the post-processed
      detections (:func:`postprocess_detections`); with ``targets`` also the
      losses on a sampled mini-batch (validation losses), else ``{}``.

    Proposals are treated as constants (no gradient through their coordinates),
    as in the paper's approximate joint training (§3.2).

    Keywords: the head's (:class:`FastRCNNHead`), the sampler's
    (:func:`sample_rois`), the post-processing's (:func:`postprocess_detections`),
    and ``lambda_reg`` of :func:`fast_rcnn_loss`; all default to the paper.
    """

    def __init__(self, in_channels: int, num_classes: int, *, pool_size: int = 7,
                 spatial_scale: float = 1.0 / 16, representation_size: int = 1024,
                 roi_pool_impl: str = "ours", dropout: float = 0.0,
                 batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                 fg_iou: float = 0.5, bg_iou_hi: float = 0.5, bg_iou_lo: float = 0.1,
                 add_gt_boxes: bool = True, box_weights: Sequence[float] = BOX_WEIGHTS,
                 lambda_reg: float = 1.0, score_thresh: float = 0.05, nms_thresh: float = 0.3,
                 detections_per_img: int = 100):
        super().__init__()
        check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi,
                               bg_iou_lo)
        self.head = FastRCNNHead(in_channels, num_classes, pool_size=pool_size,
                                 spatial_scale=spatial_scale, representation_size=representation_size,
                                 roi_pool_impl=roi_pool_impl, dropout=dropout)
        self.num_classes = num_classes
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.fg_iou, self.bg_iou_hi, self.bg_iou_lo = fg_iou, bg_iou_hi, bg_iou_lo
        self.add_gt_boxes, self.box_weights = add_gt_boxes, tuple(box_weights)
        self.lambda_reg = lambda_reg
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img

    def sample(self, proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]],
               generator: Optional[torch.Generator] = None):
        """:func:`sample_rois` with this module's settings; targets checked against K."""
        return sample_rois(proposals, targets, batch_size_per_image=self.batch_size_per_image,
                           positive_fraction=self.positive_fraction, fg_iou=self.fg_iou,
                           bg_iou_hi=self.bg_iou_hi, bg_iou_lo=self.bg_iou_lo,
                           add_gt_boxes=self.add_gt_boxes, box_weights=self.box_weights,
                           generator=generator, num_classes=self.num_classes)

    def losses(self, features: torch.Tensor, proposals: List[torch.Tensor],
               targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Sample RoIs, run the head on them, and return Fast R-CNN's two losses."""
        rois, labels, regression_targets = self.sample(proposals, targets)
        class_logits, box_deltas = self.head(features, rois)
        return fast_rcnn_loss(class_logits, box_deltas, labels, regression_targets,
                              lambda_reg=self.lambda_reg)

    def forward(self, features: torch.Tensor, proposals: List[torch.Tensor],
                image_sizes: Sequence[Tuple[int, int]],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None
                ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
        if len(proposals) != features.shape[0] or len(image_sizes) != features.shape[0]:
            raise ValueError(f"features hold {features.shape[0]} images but got {len(proposals)} "
                             f"proposal tensors and {len(image_sizes)} image sizes; give one per image.")
        proposals = [p.detach() for p in proposals]
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads in training mode needs targets (one dict per image); "
                                 "call .eval() to get detections.")
            return [], self.losses(features, proposals, targets)
        class_logits, box_deltas = self.head(features, proposals)
        detections = postprocess_detections(  # in float32, also under mixed precision
            class_logits.float(), box_deltas.float(), proposals, image_sizes, score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
            box_weights=self.box_weights)
        losses = self.losses(features, proposals, targets) if targets is not None else {}
        return detections, losses

    def extra_repr(self) -> str:
        return (f"batch_size_per_image={self.batch_size_per_image}, "
                f"positive_fraction={self.positive_fraction}, fg_iou={self.fg_iou}, "
                f"bg_iou=[{self.bg_iou_lo}, {self.bg_iou_hi}), score_thresh={self.score_thresh}, "
                f"nms_thresh={self.nms_thresh}, detections_per_img={self.detections_per_img}")
