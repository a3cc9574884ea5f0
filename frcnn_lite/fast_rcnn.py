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
from frcnn_lite.checks import check_boxes, check_target
from frcnn_lite.roi_pool import roi_pool, rois_from_boxes

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / stds (0.1, 0.1, 0.2, 0.2)


def _check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi, bg_iou_lo):
    if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"need batch_size_per_image >= 1 and 0 <= positive_fraction <= 1, got "
                         f"{batch_size_per_image} and {positive_fraction} (the paper: 128 and 0.25).")
    if not 0.0 <= bg_iou_lo < bg_iou_hi <= fg_iou <= 1.0:
        raise ValueError(f"need 0 <= bg_iou_lo < bg_iou_hi <= fg_iou <= 1, got bg_iou_lo={bg_iou_lo}, "
                         f"bg_iou_hi={bg_iou_hi}, fg_iou={fg_iou} (the paper: 0.1, 0.5, 0.5).")


def sample_rois(proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]], *,
                batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                fg_iou: float = 0.5, bg_iou_hi: float = 0.5, bg_iou_lo: float = 0.1,
                add_gt_boxes: bool = True, box_weights: Sequence[float] = BOX_WEIGHTS,
                generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
    """Pick each image's training RoIs and their targets (Fast R-CNN §2.3, paper §3.2).

    For image ``i``, the candidates are its proposals ``(P_i, 4)`` plus (with
    ``add_gt_boxes``) its ground-truth boxes. Each candidate is matched to the
    ground-truth box it overlaps most. Foreground: IoU ``>= fg_iou``; at most
    ``round(batch_size_per_image * positive_fraction)`` (32) are drawn at
    random. Background: IoU in ``[bg_iou_lo, bg_iou_hi)``; they fill the rest
    of the ``batch_size_per_image`` (128), so an image with few candidates gets
    fewer RoIs. Candidates with IoU below ``bg_iou_lo`` are never drawn (the
    0.1 floor keeps the background near objects, a crude hard-negative mining).
    An image without objects has no overlaps to rank, so all its candidates
    count as background.

    Returns per image, foreground first:
        ``rois (R_i, 4)``; ``labels (R_i,)`` int64, the matched box's class
        for foreground and 0 for background; ``regression_targets (R_i, 4)``,
        Eq. 2 deltas of the matched box relative to the RoI times
        ``box_weights`` (zeros for background, which has no box loss).
    """
    if len(proposals) != len(targets):
        raise ValueError(f"got proposals for {len(proposals)} images but targets for {len(targets)}; "
                         f"give one (P_i, 4) proposal tensor and one target dict per image.")
    _check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi, bg_iou_lo)
    max_fg = int(round(batch_size_per_image * positive_fraction))
    all_rois, all_labels, all_targets = [], [], []
    for i, (props, target) in enumerate(zip(proposals, targets)):
        check_boxes(props, f"proposals[{i}]", allow_degenerate=True)
        if num_classes is not None:
            check_target(target, num_classes, f"targets[{i}]")
        gt_boxes = target["boxes"].to(props)  # (G, 4)
        gt_labels = target["labels"].to(props.device)  # (G,)
        candidates = torch.cat([props.detach(), gt_boxes]) if add_gt_boxes else props.detach()

        if gt_boxes.shape[0] > 0:
            iou = box_iou(candidates, gt_boxes, validate=False)  # (P_i + G, G)
            best_iou, matched = iou.max(dim=1)  # (P_i + G,) each
            fg = torch.where(best_iou >= fg_iou)[0]
            bg = torch.where((best_iou < bg_iou_hi) & (best_iou >= bg_iou_lo))[0]
        else:  # no objects: everything is background
            matched = torch.zeros(candidates.shape[0], dtype=torch.int64, device=props.device)
            fg = matched[:0]
            bg = torch.arange(candidates.shape[0], device=props.device)
        num_fg = min(fg.numel(), max_fg)
        num_bg = min(bg.numel(), batch_size_per_image - num_fg)
        keep = torch.cat([fg[_random_subset(fg.numel(), num_fg, generator, props.device)],
                          bg[_random_subset(bg.numel(), num_bg, generator, props.device)]])  # (R_i,)

        rois = candidates[keep]  # (R_i, 4)
        labels = torch.zeros(keep.numel(), dtype=torch.int64, device=props.device)
        reg_targets = torch.zeros_like(rois)  # (R_i, 4)
        if num_fg:
            fg_gt = matched[keep[:num_fg]]  # (F_i,) matched box of each foreground RoI
            labels[:num_fg] = gt_labels[fg_gt]
            reg_targets[:num_fg] = encode_boxes(rois[:num_fg], gt_boxes[fg_gt], box_weights,
                                                validate=False)
        all_rois.append(rois)
        all_labels.append(labels)
        all_targets.append(reg_targets)
    return all_rois, all_labels, all_targets


class FastRCNNHead(nn.Module):
    """RoI pool -> fc6 -> fc7 -> (K + 1) class scores and 4K box deltas (Fast R-CNN Fig. 1).

    Args:
        in_channels: ``C`` of the backbone's feature map.
        num_classes: ``K`` object classes (background is added: K + 1 scores).
        pool_size: RoI pooling grid, 7 x 7 (6 x 6 for ZF).
        spatial_scale: 1 / the backbone's stride, 1/16.
        representation_size: width of fc6 and fc7; 4096 for VGG-16, smaller
            (the book uses 256-1024) for the tiny backbone.
        roi_pool_impl: ``"ours"`` (:func:`frcnn_lite.roi_pool.roi_pool`, built in
            chapter 7) or ``"torchvision"`` (``torchvision.ops.roi_pool``); same
            values and gradients; torchvision's trains faster on big maps with big bins.
        dropout: dropout after fc6 and fc7 (0.5 in VGG-16's classifier; 0 by
            default, since the heads here train from scratch).

    Layers keep py-faster-rcnn's names: ``fc6``, ``fc7``, ``cls_score``,
    ``bbox_pred``. The last two start as in py-faster-rcnn (normal, std 0.01
    and 0.001, zero bias), so training starts from near-uniform scores and
    near-zero box changes.
    """

    def __init__(self, in_channels: int, num_classes: int, *, pool_size: int = 7,
                 spatial_scale: float = 1.0 / 16, representation_size: int = 1024,
                 roi_pool_impl: str = "ours", dropout: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes is the number of object classes K >= 1 (background is "
                             f"added by the head), got {num_classes}.")
        if roi_pool_impl not in ("ours", "torchvision"):
            raise ValueError(f"roi_pool_impl must be 'ours' or 'torchvision', got {roi_pool_impl!r}.")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.pool_size, self.spatial_scale = pool_size, spatial_scale
        self.roi_pool_impl = roi_pool_impl
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def pool(self, features: torch.Tensor, rois: List[torch.Tensor]) -> torch.Tensor:
        """RoI-pooled features ``(R, C, pool_size, pool_size)`` of per-image boxes ``[(R_i, 4)]``."""
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"features must be (B, {self.in_channels}, Hf, Wf) for this head, got "
                             f"{tuple(features.shape)}; build the head with the backbone's out_channels.")
        if len(rois) != features.shape[0]:
            raise ValueError(f"got RoIs for {len(rois)} images but features for {features.shape[0]}; "
                             f"give one (R_i, 4) tensor per image, empty ones included.")
        rois5 = rois_from_boxes([r.detach().to(features) for r in rois])  # (R, 5)
        if self.roi_pool_impl == "torchvision":
            return torchvision.ops.roi_pool(features, rois5, self.pool_size, self.spatial_scale)
        return roi_pool(features, rois5, self.pool_size, self.spatial_scale, validate=False)

    def forward(self, features: torch.Tensor, rois: List[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``features (B, C, Hf, Wf)``, ``rois [(R_i, 4)]`` in input pixels ->
        ``class_logits (R, K + 1)``, ``box_deltas (R, 4K)``, RoIs in image order."""
        x = self.pool(features, rois).flatten(1)  # (R, C * pool_size**2)
        x = self.dropout(F.relu(self.fc6(x)))  # (R, representation_size)
        x = self.dropout(F.relu(self.fc7(x)))  # (R, representation_size)
        return self.cls_score(x), self.bbox_pred(x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint for another class count fails in torch with a bare size mismatch;
        # say what it means instead. Runs for head.load_state_dict and for any model
        # that contains the head.
        key = prefix + "cls_score.weight"
        if key in state_dict and state_dict[key].shape[0] != self.num_classes + 1:
            k = state_dict[key].shape[0] - 1
            raise ValueError(
                f"checkpoint has K={k} classes, head has K={self.num_classes} ({key} has {k + 1} "
                f"rows: K classes + background). Build the model with num_classes={k} to use this "
                f"checkpoint, or to fine-tune on {self.num_classes} classes drop the keys "
                f"'{prefix}cls_score.*' and '{prefix}bbox_pred.*' and load with strict=False.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, pool_size={self.pool_size}, "
                f"spatial_scale={self.spatial_scale:g}, roi_pool_impl={self.roi_pool_impl!r}")


def fast_rcnn_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels, regression_targets,
                   *, lambda_reg: float = 1.0, beta: float = 1.0) -> Dict[str, torch.Tensor]:
    """Fast R-CNN's multi-task loss (Fast R-CNN §2.3, Eq. 1), averaged over the R RoIs.

        L = 1/R sum_r [ -log p_r(u_r) + lambda [u_r >= 1] sum_i smoothL1(t_r,i^(u_r) - v_r,i) ]

    with ``u_r`` the RoI's true class, ``t^(u)`` the predicted deltas of that
    class, ``v`` the regression target, ``lambda = 1`` and smooth L1 with
    ``beta = 1`` (quadratic below 1, linear above). Background RoIs have no box
    loss. The box term is summed over foreground RoIs and divided by all R, as
    py-faster-rcnn does.

    Args:
        class_logits: ``(R, K + 1)``; box_deltas: ``(R, 4K)``.
        labels: ``(R,)`` int64 in ``0..K``, or the per-image list from :func:`sample_rois`.
        regression_targets: ``(R, 4)``, or the per-image list.

    Returns ``{"loss_classifier", "loss_box_reg"}``, scalars (both 0, with a
    gradient path, when R = 0).
    """
    if isinstance(labels, (list, tuple)):
        labels = torch.cat(list(labels))
    if isinstance(regression_targets, (list, tuple)):
        regression_targets = torch.cat(list(regression_targets))
    num_rois, num_scores = class_logits.shape
    num_classes = num_scores - 1
    if box_deltas.shape != (num_rois, 4 * num_classes):
        raise ValueError(f"box_deltas must be (R, 4K) = ({num_rois}, {4 * num_classes}) for "
                         f"class_logits (R, K + 1) = {tuple(class_logits.shape)}, got "
                         f"{tuple(box_deltas.shape)}.")
    if labels.shape != (num_rois,) or regression_targets.shape != (num_rois, 4):
        raise ValueError(f"labels must be (R,) and regression_targets (R, 4) with R = {num_rois}, "
                         f"got {tuple(labels.shape)} and {tuple(regression_targets.shape)}.")
    if num_rois == 0:  # an empty mini-batch: zero losses that still reach the parameters
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_classifier": zero, "loss_box_reg": zero.clone()}
    loss_classifier = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]  # (F,)
    deltas = box_deltas.reshape(num_rois, num_classes, 4)[fg, labels[fg] - 1]  # (F, 4) true class
    loss_box_reg = F.smooth_l1_loss(deltas, regression_targets[fg], beta=beta, reduction="sum")
    return {"loss_classifier": loss_classifier, "loss_box_reg": lambda_reg * loss_box_reg / num_rois}


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
                           rois: List[torch.Tensor], image_sizes: Sequence[Tuple[int, int]], *,
                           score_thresh: float = 0.05, nms_thresh: float = 0.3,
                           detections_per_img: int = 100, box_weights: Sequence[float] = BOX_WEIGHTS
                           ) -> List[Dict[str, torch.Tensor]]:
    """Final detections from the head's outputs (paper §4, py-faster-rcnn's test).

    Per image: decode each RoI with each class's deltas and clip
    (:func:`decode_detections`); keep (box, class) pairs with score
    ``> score_thresh`` (0.05); drop boxes clipping squashed to nothing (side <
    0.01 px); NMS at IoU ``nms_thresh`` (0.3) within each class; keep the
    ``detections_per_img`` (100) best.

    Returns per image ``{"boxes": (D, 4), "labels": (D,) int64 in 1..K,
    "scores": (D,)}``, sorted by score (torchvision's format).
    """
    if len(rois) != len(image_sizes):
        raise ValueError(f"got RoIs for {len(rois)} images but {len(image_sizes)} image sizes.")
    total = sum(r.shape[0] for r in rois)
    num_classes = class_logits.shape[1] - 1
    if class_logits.shape[0] != total or box_deltas.shape != (total, 4 * num_classes):
        raise ValueError(f"class_logits {tuple(class_logits.shape)} and box_deltas "
                         f"{tuple(box_deltas.shape)} must be (R, K + 1) and (R, 4K) with R = {total}, "
                         f"the number of RoIs given.")
    detections = []
    for boxes, scores in decode_detections(class_logits, box_deltas, rois, image_sizes,
                                           box_weights=box_weights):
        labels = torch.arange(1, num_classes + 1, device=scores.device).expand_as(scores)  # (R_i, K)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_thresh)  # sorted by score
        keep = keep[:detections_per_img]
        detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
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
        _check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi, bg_iou_lo)
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
