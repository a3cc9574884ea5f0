"""A one-stage detector: the RPN's sliding window, asked for K + 1 classes directly.

Paper: §4.1, Table 10 (one-stage detection against two-stage proposal +
detection).
The paper's one-stage baseline classifies and regresses *dense* sliding
windows (3 scales x 3 ratios at every position of the conv feature map), as
OverFeat did, instead of first proposing regions and then pooling each one:
with ZF it reaches 53.9% mAP against 58.7% for the two-stage system.

Here: the same backbone as :class:`frcnn_lite.model.FasterRCNN`, and a head
shaped like :class:`frcnn_lite.rpn.RPNHead` (3x3 conv, then 1x1 convs) whose
classifier outputs ``K + 1`` scores per anchor instead of 2, plus one box
regression per anchor (Eq. 2). Training labels anchors exactly as the RPN does
(§3.1.2: IoU >= 0.7 or a box's best anchor is positive, < 0.3 negative) and
gives each positive the class of its matched box; inference decodes every
anchor and runs the Fast R-CNN post-processing (score > 0.05, per-class NMS at
0.3, 100 detections). No RoI pooling, no second look.

Shape glossary: ``B`` images, ``C`` channels, ``Hf, Wf`` feature size, ``A``
anchors per position, ``N = Hf * Wf * A`` anchors per image, ``K`` classes.

Built in chapter 11 (Table 10).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from frcnn_lite.anchors import POSITIVE, base_anchors, grid_anchors, label_anchors, \
    sample_anchors
from frcnn_lite.backbones import Backbone
from frcnn_lite.boxes import encode_boxes
from frcnn_lite.fast_rcnn import postprocess_detections
from frcnn_lite.transform import check_inputs, map_boxes_back, transform


class OneStageDetector(nn.Module):
    """Dense sliding-window detection (the one-stage system of Table 10) on ``backbone``.

    Train mode: ``model(images, targets) -> {"loss_classifier", "loss_box_reg"}``;
    eval mode: ``model(images) -> [{"boxes", "labels", "scores"}]`` in original
    image coordinates, like :class:`frcnn_lite.model.FasterRCNN`.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *,
                 scales: Sequence[float] = (128, 256, 512), ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 min_size: int = 600, max_size: int = 1000, fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 lambda_reg: float = 1.0, score_thresh: float = 0.05, nms_thresh: float = 0.3,
                 detections_per_img: int = 100, pre_nms_top_n: int = 1000):
        super().__init__()
        self.backbone, self.num_classes = backbone, num_classes
        self.register_buffer("base_anchors", base_anchors(scales, ratios), persistent=False)
        a, c = self.base_anchors.shape[0], backbone.out_channels
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.cls_logits = nn.Conv2d(c, a * (num_classes + 1), 1)  # (K + 1) scores per anchor
        self.bbox_pred = nn.Conv2d(c, a * 4, 1)  # one Eq. 2 regression per anchor
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self.min_size, self.max_size = min_size, max_size
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.lambda_reg, self.score_thresh, self.nms_thresh = lambda_reg, score_thresh, nms_thresh
        self.detections_per_img, self.pre_nms_top_n = detections_per_img, pre_nms_top_n

    def head(self, features: torch.Tensor):
        """``(B, C, Hf, Wf) -> logits (B, N, K + 1), deltas (B, N, 4)``, the
        ``N = Hf * Wf * A`` anchors in :func:`grid_anchors` order."""
        b, _, h, w = features.shape
        a, k1 = self.base_anchors.shape[0], self.num_classes + 1
        hidden = F.relu(self.conv(features))  # (B, C, Hf, Wf)
        logits = self.cls_logits(hidden).reshape(b, a, k1, h, w)
        deltas = self.bbox_pred(hidden).reshape(b, a, 4, h, w)
        # (B, A, ., Hf, Wf) -> (B, Hf, Wf, A, .): by row, column, then anchor
        logits = logits.permute(0, 3, 4, 1, 2).reshape(b, h * w * a, k1)
        deltas = deltas.permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4)
        return logits, deltas

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None):
        check_inputs(images, targets, self.num_classes)
        batch, sizes, targets = transform(images, targets, mean=self.backbone.mean,
                                          std=self.backbone.std, min_size=self.min_size,
                                          max_size=self.max_size, stride=self.backbone.stride)
        features = self.backbone(batch)  # (B, C, Hf, Wf)
        logits, deltas = self.head(features)  # (B, N, K + 1), (B, N, 4)
        anchors = grid_anchors(features.shape[-2:], self.backbone.stride, self.base_anchors)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets: call model(images, targets).")
            return self.loss(anchors, logits, deltas, sizes, targets)
        return self.detect(anchors, logits, deltas, sizes, images)

    def loss(self, anchors, logits, deltas, sizes, targets) -> Dict[str, torch.Tensor]:
        """Cross-entropy over K + 1 classes on sampled anchors, smooth L1 on positives."""
        classes, regression, sampled = [], [], []
        for size, target in zip(sizes, targets):  # one image at a time: G differs
            labels, matched = label_anchors(anchors, target["boxes"], size, self.fg_iou, self.bg_iou)
            labels = sample_anchors(labels, self.batch_size_per_image, self.positive_fraction)
            gt = target["boxes"][matched] if len(target["boxes"]) else torch.zeros_like(anchors)
            gt_class = target["labels"][matched] if len(target["labels"]) else \
                torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
            classes.append(torch.where(labels == POSITIVE, gt_class, torch.zeros_like(gt_class)))
            regression.append(encode_boxes(anchors, gt, validate=False))
            sampled.append(labels)
        classes, regression = torch.stack(classes), torch.stack(regression)  # (B, N), (B, N, 4)
        sampled = torch.stack(sampled)  # (B, N): 1 / 0 / -1
        use, positive = sampled >= 0, sampled == POSITIVE
        count = use.sum().clamp(min=1)
        loss_cls = F.cross_entropy(logits[use], classes[use], reduction="sum") / count
        loss_box = F.smooth_l1_loss(deltas[positive], regression[positive], reduction="sum") / count
        return {"loss_classifier": loss_cls, "loss_box_reg": self.lambda_reg * loss_box}

    @torch.no_grad()
    def detect(self, anchors, logits, deltas, sizes, images) -> List[Dict[str, torch.Tensor]]:
        """Decode every anchor; keep the ``pre_nms_top_n`` most confident; Fast R-CNN's NMS."""
        k = self.num_classes
        results = []
        for i, size in enumerate(sizes):
            object_score = 1 - logits[i].softmax(dim=-1)[:, 0]  # (N,) 1 - p(background)
            top = object_score.topk(min(self.pre_nms_top_n, len(anchors))).indices
            class_logits = logits[i][top]  # (n, K + 1)
            box_deltas = deltas[i][top].repeat(1, k)  # (n, 4K): one regression shared by classes
            det = postprocess_detections(class_logits, box_deltas, [anchors[top]], [size],
                                         score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                                         detections_per_img=self.detections_per_img,
                                         box_weights=(1.0, 1.0, 1.0, 1.0))[0]
            det["boxes"] = map_boxes_back(det["boxes"], size, tuple(images[i].shape[-2:]))
            results.append(det)
        return results

    # Trainer compatibility: the same entry points as FasterRCNN's.
    def losses(self, images, targets, **unused):
        return self.forward(images, targets)
