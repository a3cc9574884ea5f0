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

Size = Tuple[int, int]


class RPNHead(nn.Module):
    """The RPN's sliding network (§3.1): 3x3 conv + ReLU, then 1x1 convs to 2A and 4A.

    ``forward(features (B, C, Hf, Wf)) -> (cls_logits (B, 2A, Hf, Wf), deltas (B, 4A, Hf, Wf))``.

    Channel layout, anchor-major: channels ``2a, 2a + 1`` are the (background,
    object) logits of base anchor ``a`` (a two-class softmax per anchor, as in
    the paper), channels ``4a .. 4a + 3`` its deltas ``(t_x, t_y, t_w, t_h)``
    of Eq. 2. ``mid_channels`` defaults to ``in_channels`` (512 for VGG-16,
    256 for ZF, as in §3.1). New layers start from N(0, 0.01), biases 0 (§3.4).
    """

    def __init__(self, in_channels: int, num_anchors: int = 9, mid_channels: Optional[int] = None):
        super().__init__()
        if in_channels < 1 or num_anchors < 1:
            raise ValueError(f"need in_channels >= 1 and num_anchors >= 1, got {in_channels}, "
                             f"{num_anchors}; in_channels is the backbone's out_channels.")
        mid_channels = in_channels if mid_channels is None else mid_channels
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, 2 * num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 4 or features.shape[1] != self.conv.in_channels:
            raise ValueError(f"features must be (B, {self.conv.in_channels}, Hf, Wf), got "
                             f"{tuple(features.shape)}; build RPNHead with the backbone's out_channels.")
        hidden = F.relu(self.conv(features))  # (B, mid, Hf, Wf)
        return self.cls_logits(hidden), self.bbox_pred(hidden)  # (B, 2A, Hf, Wf), (B, 4A, Hf, Wf)


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


def rpn_loss(cls_logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
             regression_targets: torch.Tensor, *, num_locations: Optional[int] = None,
             normalization: str = "paper", lambda_reg: float = 10.0, beta: float = 1.0
             ) -> Dict[str, torch.Tensor]:
    """Eq. 1 (§3.1.2): ``L = 1/N_cls sum_i L_cls(p_i, p*_i) + lambda 1/N_reg sum_i p*_i L_reg(t_i, t*_i)``.

    Args:
        cls_logits: ``(N, 2)`` (background, object) logits, anchors of all images.
        deltas: ``(N, 4)`` predicted ``t_i``.
        labels: ``(N,)`` int64 sampled labels ``p*``: 1 / 0 count, -1 is left out.
        regression_targets: ``(N, 4)`` ``t*`` (only positive rows are read).
        num_locations: anchor locations ``Hf * Wf`` summed over the images, the
            paper's N_reg (~2400 for a 1000x600 image); needed for "paper".
        normalization: ``"paper"``: N_cls = sampled anchors (256 per image),
            N_reg = ``num_locations``, lambda = 10. ``"batch"`` (torchvision,
            detectron2): N_reg = N_cls = sampled anchors, used there with lambda
            = 1; as 10 / 2400 ~ 1 / 256 the two agree on 1000x600 images.
        beta: smooth-L1 knee (1 is Fast R-CNN's; py-faster-rcnn's RPN uses 1/9).

    Returns ``{"loss_objectness", "loss_rpn_box_reg"}``, scalars; lambda is
    already applied, so the RPN's loss is their sum. L_cls is the two-class
    log loss, L_reg smooth L1 summed over the 4 coordinates.
    """
    n = labels.shape[0]
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise TypeError(f"labels must be (N,) int64 (1 / 0 / -1 from sample_anchors), "
                        f"got {tuple(labels.shape)} {labels.dtype}.")
    for name, t, c in (("cls_logits", cls_logits, 2), ("deltas", deltas, 4),
                       ("regression_targets", regression_targets, 4)):
        if t.shape != (n, c):
            raise ValueError(f"{name} must be ({n}, {c}) to match labels (N,) = ({n},), got "
                             f"{tuple(t.shape)}; flatten head outputs with flatten_head_outputs.")
    if normalization not in ("paper", "batch"):
        raise ValueError(f"normalization must be 'paper' or 'batch', got {normalization!r}.")
    if normalization == "paper" and (num_locations is None or num_locations < 1):
        raise ValueError("normalization='paper' divides the box loss by N_reg, the number of anchor "
                         "locations (Hf * Wf summed over images): pass num_locations=..., or use "
                         "normalization='batch'.")
    sampled = labels >= 0  # (N,)
    positive = labels == POSITIVE  # (N,)
    num_sampled = sampled.sum().clamp(min=1)  # N_cls; a tensor, so no host sync
    loss_cls = F.cross_entropy(cls_logits[sampled], labels[sampled], reduction="sum") / num_sampled
    box = F.smooth_l1_loss(deltas[positive], regression_targets[positive], beta=beta, reduction="sum")
    n_reg = num_locations if normalization == "paper" else num_sampled
    return {"loss_objectness": loss_cls, "loss_rpn_box_reg": lambda_reg * box / n_reg}


def generate_proposals_batch(anchors: torch.Tensor, objectness: torch.Tensor, deltas: torch.Tensor,
                             image_sizes: Sequence[Size], *, pre_nms_top_n: int, post_nms_top_n: int,
                             nms_thresh: float = 0.7, min_size: float = 16.0
                             ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The proposal layer (§3.3) for B images at once.

    ``anchors (N, 4)`` shared by the images, ``objectness (B, N)`` (probability
    or logit: only the order matters), ``deltas (B, N, 4)``, one ``(H, W)`` per
    image -> lists of B ``boxes (P_i, 4)`` and ``scores (P_i,)``, best first.

    Steps: decode Eq. 2, clip to the image, drop boxes under ``min_size`` on a
    side, keep the ``pre_nms_top_n`` best, NMS at ``nms_thresh`` per image,
    keep the ``post_nms_top_n`` best. The last two steps are
    :func:`frcnn_lite.boxes.nms_top_n`, which gives exactly
    ``torchvision.ops.nms(...)[:post_nms_top_n]`` but stops early (chapter 13).
    Non-finite scores or deltas raise: they mean training diverged, and NMS
    would silently return garbage.
    """
    if objectness.dim() != 2 or deltas.shape != (*objectness.shape, 4):
        raise ValueError(f"need objectness (B, N) and deltas (B, N, 4), got {tuple(objectness.shape)} "
                         f"and {tuple(deltas.shape)}.")
    if anchors.shape != (objectness.shape[1], 4):
        raise ValueError(f"anchors must be (N, 4) = ({objectness.shape[1]}, 4) to match objectness, "
                         f"got {tuple(anchors.shape)}; were they made for another feature size?")
    if len(image_sizes) != objectness.shape[0]:
        raise ValueError(f"got {len(image_sizes)} image sizes for {objectness.shape[0]} images.")
    if not anchors.device == objectness.device == deltas.device:
        raise ValueError(f"anchors ({anchors.device}), objectness ({objectness.device}) and deltas "
                         f"({deltas.device}) must be on one device; move them with .to(device).")
    # One host sync; NMS syncs anyway, since how many boxes it keeps depends on the data.
    # x * 0 is 0 for finite x and NaN for NaN or inf: one cheap pass finds either.
    if not bool(torch.isfinite((objectness * 0).sum() + (deltas * 0).sum())):
        raise ValueError("NaN or inf objectness scores or deltas reached the proposal layer: training "
                         "has diverged (try a lower learning rate, check that images are in [0, 1] "
                         "and targets are valid), or the backbone produced non-finite features.")
    b, n = objectness.shape
    boxes = decode_boxes(anchors.repeat(b, 1), deltas.reshape(-1, 4), validate=False)  # (B * N, 4)
    sizes = torch.as_tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype,
                            device=boxes.device)  # (B, 4)
    boxes = torch.min(boxes.view(b, n, 4).clamp(min=0), sizes[:, None, :])  # (B, N, 4), clipped
    wh = boxes[..., 2:] - boxes[..., :2]  # (B, N, 2)
    big = (wh >= min_size).all(dim=-1)  # (B, N)
    # Small boxes get score -inf so that one top-k serves every image; they are dropped after.
    scores = objectness.masked_fill(~big, float("-inf"))  # (B, N)
    scores, order = scores.topk(min(pre_nms_top_n, n), dim=1)  # (B, K), sorted, -inf last
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))  # (B, K, 4)
    num_valid = torch.isfinite(scores).sum(dim=1).tolist()  # B ints: small boxes are a suffix
    out_boxes, out_scores = [], []
    for i in range(b):  # B images; no loop over boxes
        boxes_i, scores_i = boxes[i, :num_valid[i]], scores[i, :num_valid[i]]  # (V, 4), (V,)
        # = nms(boxes_i, scores_i)[:post_nms_top_n], stopping once enough boxes survive.
        keep = nms_top_n(boxes_i, scores_i, nms_thresh, post_nms_top_n)  # (P,) best first
        out_boxes.append(boxes_i[keep])
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
        if len(image_sizes) != features.shape[0]:
            raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {features.shape[0]} "
                             f"feature maps; pass one (H, W) per image.")
        cls_logits, deltas = self.head(features)  # (B, 2A, Hf, Wf), (B, 4A, Hf, Wf)
        logits, deltas = flatten_head_outputs(cls_logits, deltas)  # (B, N, 2), (B, N, 4)
        anchors = self.anchors(features.shape[-2:])  # (N, 4)
        proposals, _ = self._proposals(anchors, logits.detach(), deltas.detach(), image_sizes)
        if targets is None:
            return proposals, {}
        if len(targets) != features.shape[0]:
            raise ValueError(f"got {len(targets)} targets for {features.shape[0]} images.")
        labels, reg_targets = self.targets_for(anchors, image_sizes, targets)
        losses = rpn_loss(logits.reshape(-1, 2), deltas.reshape(-1, 4), labels.reshape(-1),
                          reg_targets.reshape(-1, 4), normalization=self.loss_normalization,
                          num_locations=features.shape[0] * features.shape[-2] * features.shape[-1],
                          lambda_reg=self.lambda_reg, beta=self.smooth_l1_beta)
        return proposals, losses

    @torch.no_grad()
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
