"""Faster R-CNN assembled: input transform, backbone, RPN, and the Fast R-CNN head.

Paper: Fig. 2 (one network: shared conv layers, the RPN on their feature map,
and the Fast R-CNN detector pooling the RPN's proposals from the same map),
§3.3 (input size: shorter side 600, longer side at most 1000).

    images [(3, H_i, W_i)] in [0, 1]
      -> transform: normalise, resize, zero-pad      (B, 3, Hp, Wp)
      -> backbone                                     (B, C, Hf, Wf)
      -> rpn: proposals per image                     [(P_i, 4)]
      -> roi_heads: class scores, boxes, NMS          [{"boxes", "labels", "scores"}]
      -> boxes mapped back to each (H_i, W_i)

Train mode: ``model(images, targets)`` returns the four losses
``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}``
(the approximate joint training of §3.2 (ii) sums them). Eval mode:
``model(images)`` returns torchvision-format predictions in original image
coordinates, so the model can be swapped with torchvision's.

Shape glossary: ``B`` images, ``(H, W)`` original sizes, ``(h, w)`` resized
sizes, ``P`` proposals, ``D`` detections, ``K`` object classes.

Built in chapter 9.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from frcnn_lite.backbones import Backbone, build_backbone
from frcnn_lite.checkpoint import (config_from_checkpoint, load_checkpoint,
                                   read_checkpoint)
from frcnn_lite.layer_checks import check_training_targets
from frcnn_lite.config import FasterRCNNConfig  # noqa: F401  (its home is config.py)
from frcnn_lite.fast_rcnn import RoIHeads
from frcnn_lite.rpn import RegionProposalNetwork
from frcnn_lite.transform import check_inputs, map_boxes_back, transform

DEMO_MODEL_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_model.pt"


class FasterRCNN(nn.Module):
    """Faster R-CNN (Fig. 2): ``backbone`` + ``rpn`` + ``roi_heads`` sharing one feature map.

    Build it from a config, ``FasterRCNN(FasterRCNNConfig(num_classes=5, min_size=256))``,
    or, as torchvision does, from a backbone module and keyword settings,
    ``FasterRCNN(backbone, num_classes=5, min_size=256, scales=(32, 64, 128))``.
    ``model.config`` always holds the full configuration.
    """

    def __init__(self, backbone: Union[Backbone, FasterRCNNConfig, None] = None,
                 num_classes: Optional[int] = None, **settings):
        super().__init__()
        if isinstance(backbone, FasterRCNNConfig):
            config, backbone = backbone, None
            if num_classes is not None:
                settings["num_classes"] = num_classes
            config = dataclasses.replace(config, **settings)
        else:
            if num_classes is not None:
                settings["num_classes"] = num_classes
            if backbone is not None:
                settings.setdefault("backbone", getattr(backbone, "name", type(backbone).__name__))
            config = FasterRCNNConfig(**settings)
        if config.num_classes < 1:
            raise ValueError(f"num_classes is the number of object classes K >= 1 (without "
                             f"background), got {config.num_classes}.")
        if backbone is None:
            backbone = build_backbone(config.backbone, pretrained=config.pretrained)
        for attribute in ("out_channels", "stride", "mean", "std"):
            if not hasattr(backbone, attribute):
                raise TypeError(f"the backbone needs attribute {attribute!r} (see "
                                f"frcnn_lite.backbones.Backbone); {type(backbone).__name__} lacks it.")
        self.config = config
        self.backbone = backbone
        c = config
        self.rpn = RegionProposalNetwork(
            backbone.out_channels, stride=backbone.stride, scales=c.scales, ratios=c.ratios,
            mid_channels=c.rpn_mid_channels, fg_iou=c.rpn_fg_iou, bg_iou=c.rpn_bg_iou,
            batch_size_per_image=c.rpn_batch_size_per_image,
            positive_fraction=c.rpn_positive_fraction,
            pre_nms_top_n_train=c.pre_nms_top_n_train, post_nms_top_n_train=c.post_nms_top_n_train,
            pre_nms_top_n_test=c.pre_nms_top_n_test, post_nms_top_n_test=c.post_nms_top_n_test,
            nms_thresh=c.rpn_nms_thresh, min_size=c.rpn_min_size, lambda_reg=c.lambda_reg,
            loss_normalization=c.loss_normalization)
        self.roi_heads = RoIHeads(
            backbone.out_channels, c.num_classes, batch_size_per_image=c.roi_batch_size_per_image,
            positive_fraction=c.roi_positive_fraction, fg_iou=c.roi_fg_iou,
            bg_iou_hi=c.roi_bg_iou_hi, bg_iou_lo=c.roi_bg_iou_lo, pool_size=c.pool_size,
            spatial_scale=1.0 / backbone.stride, representation_size=c.representation_size,
            roi_pool_impl=c.roi_pool_impl, score_thresh=c.score_thresh, nms_thresh=c.nms_thresh,
            detections_per_img=c.detections_per_img)

    # -- the pieces, usable one at a time (the four-step training needs them) --
    def prepare(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None
                ) -> Tuple[torch.Tensor, List[Tuple[int, int]], Optional[List[Dict]]]:
        """Check and transform inputs: ``batch (B, 3, Hp, Wp)``, resized sizes, resized targets."""
        check_inputs(images, targets, self.config.num_classes)
        return transform(images, targets, mean=self.backbone.mean, std=self.backbone.std,
                         min_size=self.config.min_size, max_size=self.config.max_size,
                         stride=self.backbone.stride)

    def propose(self, features: torch.Tensor, image_sizes: List[Tuple[int, int]], *,
                train_settings: bool = True) -> List[torch.Tensor]:
        """Proposals ``[(P_i, 4)]`` (constants, no gradient) from this model's RPN.

        ``train_settings`` picks the RPN's training top-N (2000 after NMS) rather
        than the test top-N (300), as the detector is trained on (§3.3).
        """
        was_training = self.rpn.training
        self.rpn.train(train_settings)
        try:
            with torch.no_grad():
                proposals, _ = self.rpn(features, image_sizes)
        finally:
            self.rpn.train(was_training)
        return [p.detach() for p in proposals]

    def losses(self, images: List[torch.Tensor], targets: List[Dict], *,
               rpn: bool = True, detector: bool = True,
               proposer: Optional["FasterRCNN"] = None) -> Dict[str, torch.Tensor]:
        """The training losses of a batch; flags pick the terms (§3.2).

        ``rpn``: the RPN's two losses (Eq. 1). ``detector``: the Fast R-CNN
        head's two losses on proposals from this model's RPN, or from
        ``proposer``'s RPN (step 2 of the four-step training, where the
        detector does not share convs with the RPN yet). Proposals are always
        constants: no gradient flows through their coordinates (approximate
        joint training, §3.2 (ii)).
        """
        check_training_targets(targets)
        batch, sizes, targets = self.prepare(images, targets)
        features = self.backbone(batch)  # (B, C, Hf, Wf)
        losses: Dict[str, torch.Tensor] = {}
        proposals = None
        if rpn:
            proposals, rpn_losses = self.rpn(features, sizes, targets)
            losses.update(rpn_losses)
        if detector:
            if proposer is not None:
                _check_same_transform(self, proposer)
                with torch.no_grad():
                    proposals = proposer.propose(proposer.backbone(batch), sizes)
            elif proposals is None:
                proposals = self.propose(features.detach(), sizes)
            proposals = [p.detach() for p in proposals]
            _, det_losses = self.roi_heads(features, proposals, sizes, targets)
            losses.update(det_losses)
        return losses

    @torch.no_grad()
    def predict(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Detections ``[{"boxes" (D, 4), "labels" (D,), "scores" (D,)}]`` in original coordinates."""
        batch, sizes, _ = self.prepare(images)
        features = self.backbone(batch)
        proposals, _ = self.rpn(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        for det, image, size in zip(detections, images, sizes):
            det["boxes"] = map_boxes_back(det["boxes"], size, tuple(image.shape[-2:]))
        return detections

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None):
        """Train mode: dict of the four losses. Eval mode: list of predictions."""
        if self.training:
            return self.losses(images, targets)
        return self.predict(images)

    def extra_repr(self) -> str:
        return f"num_classes={self.config.num_classes}, min_size={self.config.min_size}, " \
               f"max_size={self.config.max_size}"


def _check_same_transform(model: FasterRCNN, proposer: FasterRCNN) -> None:
    """A proposer must see the same resized, normalised batch as the model it feeds."""
    ours = (model.backbone.mean, model.backbone.std, model.backbone.stride,
            model.config.min_size, model.config.max_size)
    theirs = (proposer.backbone.mean, proposer.backbone.std, proposer.backbone.stride,
              proposer.config.min_size, proposer.config.max_size)
    if ours != theirs:
        raise ValueError(f"the proposer's input transform (mean, std, stride, min_size, max_size) "
                         f"= {theirs} differs from the model's {ours}; its proposals would be in "
                         f"other coordinates. Build both from the same FasterRCNNConfig.")


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> FasterRCNN:
    """Rebuild the :class:`FasterRCNN` a checkpoint was saved from, in eval mode."""
    payload = read_checkpoint(path, "cpu")
    config = config_from_checkpoint(FasterRCNNConfig, payload, path)  # names the file
    # The weights come from the file: never download ImageNet weights here.
    model = FasterRCNN(dataclasses.replace(config, pretrained=False))
    model.config = config
    load_checkpoint(path, model)
    return model.to(device).eval()


def load_demo_model(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu"
                    ) -> FasterRCNN:
    """The shipped detector (tiny backbone, trained on the shapes dataset), in eval mode.

    ``model = load_demo_model()``; ``data/demo_model.pt`` is made by
    ``python -m frcnn_lite train --recipe demo --out data/demo_model.pt``.
    """
    path = Path(path) if path is not None else DEMO_MODEL_PATH
    if not path.exists():
        raise FileNotFoundError(f"no demo model at {path}; train it with `python -m frcnn_lite "
                                f"train --recipe demo --out {path}` (about 15 minutes on a CPU).")
    return load_model(path, device=device).eval()
