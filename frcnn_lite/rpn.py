"""The Region Proposal Network: head, loss (Eq. 1) and proposal layer.

Paper: §3.1 (a small network slid over the shared feature map: a 3x3 conv,
then two sibling 1x1 convs, ``2k`` objectness scores and ``4k`` box deltas),
§3.1.2 (the loss, Eq. 1), §3.3 (proposals: NMS at IoU 0.7, top-N).

Shape glossary: ``B`` images, ``C`` feature channels, ``Hf, Wf`` feature-map
size, ``A`` anchors per location (k in the paper), ``N = Hf * Wf * A``
anchors per image, ``P`` proposals of one image. Per-anchor tensors are
ordered as :func:`frcnn_lite.anchors.grid_anchors` orders anchors: row, then
column, then base anchor. Names: ``cls_logits`` / ``deltas`` are predictions,
``labels`` / ``regression_targets`` the targets (p* and t* in Eq. 1).

Built in chapter 5 (loss) and chapter 6 (head, proposals, the module).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from frcnn_lite.anchors import POSITIVE, base_anchors, grid_anchors, label_anchors, sample_anchors
from frcnn_lite.boxes import clip_boxes, decode_boxes, encode_boxes, nms_top_n
from frcnn_lite.layer_checks import (check_batch, check_features, check_proposal_inputs,
                                     check_rpn_head_settings, check_rpn_loss_inputs)

Size = Tuple[int, int]


class RPNHead(nn.Module):
    """The RPN's sliding network (§3.1): 3x3 conv + ReLU, then 1x1 convs.

    ``forward(features (B, C, Hf, Wf))`` -> ``cls_logits (B, 2A, Hf, Wf)``,
    ``deltas (B, 4A, Hf, Wf)``. Channels are anchor-major: ``2a, 2a + 1``
    are the (background, object) logits of base anchor ``a`` (a two-class
    softmax per anchor, as in the paper), ``4a .. 4a + 3`` its deltas
    ``(t_x, t_y, t_w, t_h)`` of Eq. 2. ``mid_channels`` defaults to
    ``in_channels`` (512 for VGG-16, 256 for ZF, §3.1). The layers start
    from N(0, 0.01) with zero biases (§3.1.3).
    """

    def __init__(self, in_channels: int, num_anchors: int = 9,
                 mid_channels: Optional[int] = None):
        super().__init__()
        check_rpn_head_settings(in_channels, num_anchors)
        mid = in_channels if mid_channels is None else mid_channels
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, mid, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid, 2 * num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor):
        check_features(features, self.conv.in_channels, "RPNHead")
        hidden = F.relu(self.conv(features))  # (B, mid, Hf, Wf)
        # (B, 2A, Hf, Wf), (B, 4A, Hf, Wf)
        return self.cls_logits(hidden), self.bbox_pred(hidden)


def flatten_head_outputs(cls_logits: torch.Tensor, deltas: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor views in grid_anchors order: ``(B, N, 2)`` logits and ``(B, N, 4)`` deltas."""
    b, two_a, h, w = cls_logits.shape
    a = two_a // 2
    logits = cls_logits.reshape(b, a, 2, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 2)
    deltas = deltas.reshape(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4)
    return logits, deltas  # (B, N, 2), (B, N, 4)


def objectness_maps(cls_logits: torch.Tensor) -> torch.Tensor:
    """Object probability per anchor shape: ``(B, 2A, Hf, Wf) -> (B, A, Hf, Wf)``.

    The two-class softmax's object probability, ``softmax(l_bg, l_obj)[1]``.
    """
    b, two_a, h, w = cls_logits.shape
    return cls_logits.reshape(b, two_a // 2, 2, h, w).softmax(dim=2)[:, :, 1]  # (B, A, Hf, Wf)


def rpn_loss(cls_logits: torch.Tensor, deltas: torch.Tensor,
             labels: torch.Tensor, regression_targets: torch.Tensor, *,
             num_locations: Optional[int] = None, normalization: str = "paper",
             lambda_reg: float = 10.0, beta: float = 1.0) -> dict:
    """Eq. 1 (§3.1.2), the RPN's loss over the sampled anchors of all images:

        L = 1/N_cls sum L_cls(p_i, p*_i) + λ/N_reg sum p*_i L_reg(t_i, t*_i)

    ``cls_logits (N, 2)`` (background, object); ``deltas (N, 4)``, the
    ``t_i``; ``labels (N,)`` int64, the sampled ``p*`` (1 and 0 count, -1 is
    left out); ``regression_targets (N, 4)``, the ``t*`` (positive rows are
    read). ``normalization="paper"``: N_cls = the sampled anchors (256 per
    image), N_reg = ``num_locations`` (``Hf * Wf`` summed over the images,
    ~2400 for 1000x600), lambda = 10. ``"batch"`` (torchvision, detectron2):
    N_reg = N_cls, used there with lambda = 1; as 10 / 2400 ~ 1 / 256 the
    two agree on 1000x600 images. ``beta``: the smooth-L1 knee (py-faster-rcnn's
    RPN uses 1/9). Returns ``{"loss_objectness", "loss_rpn_box_reg"}``, lambda
    applied: the RPN's loss is their sum.
    """
    check_rpn_loss_inputs(cls_logits, deltas, labels, regression_targets,
                          num_locations, normalization)
    sampled = labels >= 0  # (N,)
    positive = labels == POSITIVE  # (N,)
    num_sampled = sampled.sum().clamp(min=1)  # N_cls; a tensor: no host sync
    loss_cls = F.cross_entropy(cls_logits[sampled], labels[sampled],
                               reduction="sum") / num_sampled
    box = F.smooth_l1_loss(deltas[positive], regression_targets[positive],
                           beta=beta, reduction="sum")
    n_reg = num_locations if normalization == "paper" else num_sampled
    return {"loss_objectness": loss_cls,
            "loss_rpn_box_reg": lambda_reg * box / n_reg}


def generate_proposals_batch(anchors: torch.Tensor, objectness: torch.Tensor,
                             deltas: torch.Tensor, image_sizes: Sequence[Size],
                             *,
                             pre_nms_top_n: int, post_nms_top_n: int,
                             nms_thresh: float = 0.7, min_size: float = 16.0
                             ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The proposal layer (§3.3) for B images at once.

    ``anchors (N, 4)`` shared by the images, ``objectness (B, N)`` (only the
    order matters: probability or logit), ``deltas (B, N, 4)``, one ``(H, W)``
    per image -> lists of ``boxes (P_i, 4)`` and ``scores (P_i,)``, best first.
    Steps: decode Eq. 2, clip to the image, drop boxes under ``min_size``,
    keep the ``pre_nms_top_n`` best, NMS at ``nms_thresh`` per image, keep
    the ``post_nms_top_n`` best (:func:`~frcnn_lite.boxes.nms_top_n`: exactly
    ``torchvision.ops.nms(...)[:post_nms_top_n]``, stopping early).
    """
    check_proposal_inputs(anchors, objectness, deltas, image_sizes)
    b, n = objectness.shape
    boxes = decode_boxes(anchors.repeat(b, 1), deltas.reshape(-1, 4),
                         validate=False).view(b, n, 4)
    sizes = torch.as_tensor([[w, h, w, h] for h, w in image_sizes],
                            dtype=boxes.dtype, device=boxes.device)  # (B, 4)
    boxes = torch.min(boxes.clamp(min=0), sizes[:, None, :])  # clipped
    wh = boxes[..., 2:] - boxes[..., :2]  # (B, N, 2)
    big = (wh >= min_size).all(dim=-1)  # (B, N)
    # Small boxes score -inf, so one top-k serves every image; dropped below.
    scores = objectness.masked_fill(~big, float("-inf"))  # (B, N)
    scores, order = scores.topk(min(pre_nms_top_n, n), dim=1)  # (B, K) sorted
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))  # (B, K, 4)
    num_valid = torch.isfinite(scores).sum(dim=1).tolist()  # small boxes: last
    out_boxes, out_scores = [], []
    for i in range(b):  # B images; no loop over boxes
        boxes_i, scores_i = boxes[i, :num_valid[i]], scores[i, :num_valid[i]]
        keep = nms_top_n(boxes_i, scores_i, nms_thresh, post_nms_top_n)
        out_boxes.append(boxes_i[keep])  # (P_i, 4), best first
        out_scores.append(scores_i[keep])
    return out_boxes, out_scores


def generate_proposals(anchors: torch.Tensor, objectness: torch.Tensor, deltas: torch.Tensor,
                       image_size: Size, *, pre_nms_top_n: int, post_nms_top_n: int,
                       nms_thresh: float = 0.7, min_size: float = 16.0
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The proposal layer (§3.3) for one image: ``(N, 4), (N,), (N, 4) -> (P, 4), (P,)``.

    Same steps as :func:`generate_proposals_batch` (which it calls with B = 1).
    """
    if objectness.dim() != 1 or deltas.dim() != 2:
        raise ValueError(f"need objectness (N,) and deltas (N, 4) for one image, got "
                         f"{tuple(objectness.shape)} and {tuple(deltas.shape)}; use "
                         f"generate_proposals_batch for (B, N).")
    boxes, scores = generate_proposals_batch(anchors, objectness[None], deltas[None], [image_size],
                                             pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                                             nms_thresh=nms_thresh, min_size=min_size)
    return boxes[0], scores[0]


class RegionProposalNetwork(nn.Module):
    """The whole RPN (§3.1, §3.3): head, anchors, labels and loss in training, proposals.

    ``forward(features (B, C, Hf, Wf), image_sizes [(H, W)] * B, targets=None)``
    -> ``(proposals [(P_i, 4)] * B, losses)``. Proposals are detached (the
    paper's approximate joint training ignores their gradient w.r.t. boxes);
    ``losses`` is ``{}`` without targets. ``self.training`` picks the train or
    test top-N. Defaults are the paper's (py-faster-rcnn's where it is silent).
    """

    def __init__(self, in_channels: int, stride: int = 16, scales: Sequence[float] = (128, 256, 512),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), *, mid_channels: Optional[int] = None,
                 fg_iou: float = 0.7, bg_iou: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, pre_nms_top_n_train: int = 12000,
                 post_nms_top_n_train: int = 2000, pre_nms_top_n_test: int = 6000,
                 post_nms_top_n_test: int = 300, nms_thresh: float = 0.7, min_size: float = 16.0,
                 lambda_reg: float = 10.0, loss_normalization: str = "paper",
                 allowed_border: float = 0.0, smooth_l1_beta: float = 1.0):
        super().__init__()
        self.stride, self.scales, self.ratios = stride, tuple(scales), tuple(ratios)
        self.register_buffer("base_anchors", base_anchors(self.scales, self.ratios), persistent=False)
        self.head = RPNHead(in_channels, self.base_anchors.shape[0], mid_channels)
        self.fg_iou, self.bg_iou, self.allowed_border = fg_iou, bg_iou, allowed_border
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n_train, self.post_nms_top_n_train = pre_nms_top_n_train, post_nms_top_n_train
        self.pre_nms_top_n_test, self.post_nms_top_n_test = pre_nms_top_n_test, post_nms_top_n_test
        self.nms_thresh, self.min_size = nms_thresh, min_size
        self.lambda_reg, self.loss_normalization = lambda_reg, loss_normalization
        self.smooth_l1_beta = smooth_l1_beta

    def anchors(self, feature_size: Size) -> torch.Tensor:
        """The ``(Hf * Wf * A, 4)`` anchors of a feature map of size ``(Hf, Wf)``."""
        return grid_anchors(feature_size, self.stride, self.base_anchors)

    def targets_for(self, anchors: torch.Tensor, image_sizes: Sequence[Size], targets: List[dict],
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampled labels ``(B, N)`` and Eq. 2 regression targets ``(B, N, 4)`` (§3.1.2-3)."""
        labels, reg = [], []
        for size, target in zip(image_sizes, targets):  # one image at a time: G differs
            gt = target["boxes"]
            lab, matched = label_anchors(anchors, gt, size, self.fg_iou, self.bg_iou,
                                         allowed_border=self.allowed_border)
            labels.append(sample_anchors(lab, self.batch_size_per_image, self.positive_fraction,
                                         generator))
            # t* of every anchor w.r.t. its best box; only positives' rows reach the loss.
            reg.append(encode_boxes(anchors, gt[matched], validate=False) if gt.shape[0]
                       else torch.zeros_like(anchors))
        return torch.stack(labels), torch.stack(reg)  # (B, N), (B, N, 4)

    def forward(self, features: torch.Tensor, image_sizes: Sequence[Size],
                targets: Optional[List[dict]] = None
                ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        check_batch(features, image_sizes, targets)
        cls_logits, deltas = self.head(features)  # (B, 2A, Hf, Wf), (B, 4A, Hf, Wf)
        logits, deltas = flatten_head_outputs(cls_logits, deltas)  # (B, N, 2|4)
        anchors = self.anchors(features.shape[-2:])  # (N, 4)
        proposals, _ = self._proposals(anchors, logits.detach(), deltas.detach(),
                                       image_sizes)
        if targets is None:
            return proposals, {}
        labels, reg_targets = self.targets_for(anchors, image_sizes, targets)
        b, _, height, width = features.shape
        losses = rpn_loss(logits.reshape(-1, 2), deltas.reshape(-1, 4),
                          labels.reshape(-1), reg_targets.reshape(-1, 4),
                          normalization=self.loss_normalization,
                          num_locations=b * height * width,
                          lambda_reg=self.lambda_reg, beta=self.smooth_l1_beta)
        return proposals, losses

    def propose(self, features: torch.Tensor, image_sizes: Sequence[Size]
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Proposals and their object probabilities: lists of ``(P_i, 4)`` and ``(P_i,)``."""
        logits, deltas = flatten_head_outputs(*self.head(features))
        return self._proposals(self.anchors(features.shape[-2:]), logits, deltas, image_sizes)

    def _proposals(self, anchors, logits, deltas, image_sizes):
        # Rank by the logit difference l_obj - l_bg: same order as the softmax probability,
        # but without ties where the probability rounds to 1.0.
        # Under mixed precision the head's outputs may be float16: decode boxes in float32.
        logits, deltas = logits.float(), deltas.float()
        objectness = logits[..., 1] - logits[..., 0]  # (B, N)
        pre, post = ((self.pre_nms_top_n_train, self.post_nms_top_n_train) if self.training
                     else (self.pre_nms_top_n_test, self.post_nms_top_n_test))
        boxes, scores = generate_proposals_batch(anchors, objectness, deltas, image_sizes,
                                                 pre_nms_top_n=pre, post_nms_top_n=post,
                                                 nms_thresh=self.nms_thresh, min_size=self.min_size)
        return boxes, [s.sigmoid() for s in scores]  # sigmoid(l_obj - l_bg) = softmax's p_obj
