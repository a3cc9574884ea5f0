"""Input checks of the detector's layers: one call at the top of each function.

Each function a chapter shows (anchors, the RPN, RoI pooling, the Fast R-CNN
head, the backbone) starts with one call to a check from here, so that what a
reader sees is the algorithm, while every bad input still stops with an error
that names it and says how to fix it. The checks of data (boxes, images,
targets, predictions) are in :mod:`frcnn_lite.checks`; those of settings in
:mod:`frcnn_lite.run_checks`.
"""

from __future__ import annotations

import torch

from frcnn_lite.checks import check_boxes, check_target


# -- RoI pooling (roi_pool.py) ---------------------------------------------------------------
def output_pair(output_size) -> tuple:
    """``7`` or ``(7, 7)`` -> ``(out_h, out_w)``; anything else is an error."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
            or not all(isinstance(s, int) and s >= 1 for s in output_size)):
        raise ValueError(f"output_size must be a positive int or (out_h, out_w), got "
                         f"{output_size!r}; Fast R-CNN uses 7 (VGG-16) or 6 (ZF).")
    return int(output_size[0]), int(output_size[1])


def check_rois(rois, batched: bool = False) -> None:
    """Check ``(R, 5)`` rois (``batched``) or a non-empty list of per-image ``(R_i, 4)`` boxes."""
    if batched:
        if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[-1] != 5:
            shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois).__name__
            raise ValueError(f"rois must be (R, 5) rows of [batch_index, x1, y1, x2, y2], got "
                             f"{shape}; for per-image (R_i, 4) boxes pass a list, or use "
                             f"rois_from_boxes.")
        return
    if isinstance(rois, torch.Tensor) or len(rois) == 0:
        raise ValueError("need one (R_i, 4) box tensor per image, got "
                         + ("a tensor" if isinstance(rois, torch.Tensor) else "an empty list")
                         + ".")
    for i, b in enumerate(rois):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be an (R_i, 4) tensor of (x1, y1, x2, y2), "
                             f"got {shape}.")


def check_roi_pool_inputs(features: torch.Tensor, rois: torch.Tensor, output_size,
                          spatial_scale: float, validate: bool = True) -> tuple:
    """All of :func:`~frcnn_lite.roi_pool.roi_pool`'s input checks; returns ``(out_h, out_w)``.

    Shapes, dtypes and devices always; with ``validate`` also the RoI values
    (finite, batch index an integer in ``[0, B)``), which reads the tensor.
    """
    size = output_pair(output_size)
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = (tuple(features.shape) if isinstance(features, torch.Tensor)
                 else type(features).__name__)
        raise ValueError(f"features must be a (B, C, H, W) tensor, got {shape}; "
                         f"a single map needs a batch dimension: features[None].")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}.")
    check_rois(rois, batched=True)
    if rois.dtype != features.dtype or rois.device != features.device:
        raise TypeError(f"rois ({rois.dtype}, {rois.device}) must have the dtype and device of "
                        f"features ({features.dtype}, {features.device}); use rois.to(features).")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be positive (feature cells per input pixel, 1/16 "
                         f"for stride 16), got {spatial_scale}.")
    if not validate or rois.shape[0] == 0:
        return size
    if not bool(torch.isfinite(rois).all()):
        i = int((~torch.isfinite(rois)).any(dim=1).nonzero()[0])
        raise ValueError(f"rois[{i}] = {rois[i].tolist()} has a NaN or infinite value.")
    index = rois[:, 0]
    bad = (index != index.floor()) | (index < 0) | (index >= features.shape[0])
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"rois[{i}] has batch index {rois[i, 0].item():g}, but features hold "
                         f"{features.shape[0]} image(s): the first column must be an integer in "
                         f"[0, {features.shape[0] - 1}], the image each box belongs to.")
    return size


# -- the Fast R-CNN head (fast_rcnn.py) --------------------------------------------------------
def check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi,
                           bg_iou_lo) -> None:
    """RoI sampling settings: a positive batch, a fraction, ordered IoU thresholds."""
    if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"need batch_size_per_image >= 1 and 0 <= positive_fraction <= 1, got "
                         f"{batch_size_per_image} and {positive_fraction} (the paper: 128 and "
                         f"0.25).")
    if not 0.0 <= bg_iou_lo < bg_iou_hi <= fg_iou <= 1.0:
        raise ValueError(f"need 0 <= bg_iou_lo < bg_iou_hi <= fg_iou <= 1, got bg_iou_lo="
                         f"{bg_iou_lo}, bg_iou_hi={bg_iou_hi}, fg_iou={fg_iou} (the paper: 0.1, "
                         f"0.5, 0.5).")


def check_roi_sampling(proposals, targets, num_classes, batch_size_per_image, positive_fraction,
                       fg_iou, bg_iou_hi, bg_iou_lo) -> None:
    """All of :func:`~frcnn_lite.fast_rcnn.sample_rois`' input checks."""
    if len(proposals) != len(targets):
        raise ValueError(f"got proposals for {len(proposals)} images but targets for "
                         f"{len(targets)}; give one (P_i, 4) proposal tensor and one target dict "
                         f"per image.")
    check_sampler_settings(batch_size_per_image, positive_fraction, fg_iou, bg_iou_hi, bg_iou_lo)
    for i, (props, target) in enumerate(zip(proposals, targets)):
        check_boxes(props, f"proposals[{i}]", allow_degenerate=True)
        if num_classes is not None:
            check_target(target, num_classes, f"targets[{i}]")


def check_head_settings(num_classes: int, roi_pool_impl: str) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes is the number of object classes K >= 1 (background is "
                         f"added by the head), got {num_classes}.")
    if roi_pool_impl not in ("ours", "torchvision"):
        raise ValueError(f"roi_pool_impl must be 'ours' or 'torchvision', got "
                         f"{roi_pool_impl!r}.")


def check_head_features(features: torch.Tensor, rois, in_channels: int) -> None:
    """Features ``(B, in_channels, Hf, Wf)`` and one ``(R_i, 4)`` box tensor per image."""
    if features.dim() != 4 or features.shape[1] != in_channels:
        raise ValueError(f"features must be (B, {in_channels}, Hf, Wf) for this head, got "
                         f"{tuple(features.shape)}; build the head with the backbone's "
                         f"out_channels.")
    if len(rois) != features.shape[0]:
        raise ValueError(f"got RoIs for {len(rois)} images but features for "
                         f"{features.shape[0]}; give one (R_i, 4) tensor per image, empty ones "
                         f"included.")


def check_head_state_dict(state_dict: dict, prefix: str, num_classes: int) -> None:
    """A checkpoint for another class count: say what it means and how to use it."""
    key = prefix + "cls_score.weight"
    if key in state_dict and state_dict[key].shape[0] != num_classes + 1:
        k = state_dict[key].shape[0] - 1
        raise ValueError(
            f"checkpoint has K={k} classes, head has K={num_classes} ({key} has {k + 1} "
            f"rows: K classes + background). Build the model with num_classes={k} to use this "
            f"checkpoint, or to fine-tune on {num_classes} classes drop the keys "
            f"'{prefix}cls_score.*' and '{prefix}bbox_pred.*' and load with strict=False.")


def check_fast_rcnn_loss_inputs(class_logits, box_deltas, labels, regression_targets):
    """Shapes of Fast R-CNN's loss inputs; per-image lists are joined. Returns
    ``(labels (R,), regression_targets (R, 4))``."""
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
        raise ValueError(f"labels must be (R,) and regression_targets (R, 4) with R = "
                         f"{num_rois}, got {tuple(labels.shape)} and "
                         f"{tuple(regression_targets.shape)}.")
    return labels, regression_targets


def check_head_outputs(class_logits, box_deltas, rois, image_sizes) -> None:
    """The head's outputs ``(R, K + 1)``, ``(R, 4K)`` for the given RoIs and images."""
    if len(rois) != len(image_sizes):
        raise ValueError(f"got RoIs for {len(rois)} images but {len(image_sizes)} image sizes.")
    total = sum(r.shape[0] for r in rois)
    num_classes = class_logits.shape[1] - 1
    if class_logits.shape[0] != total or box_deltas.shape != (total, 4 * num_classes):
        raise ValueError(f"class_logits {tuple(class_logits.shape)} and box_deltas "
                         f"{tuple(box_deltas.shape)} must be (R, K + 1) and (R, 4K) with R = "
                         f"{total}, the number of RoIs given.")


# -- boxes.py ---------------------------------------------------------------------------------
def check_nms_top_n(boxes: torch.Tensor, scores: torch.Tensor, top_n: int, chunk_size) -> int:
    """:func:`~frcnn_lite.boxes.nms_top_n`'s inputs; returns the chunk size to use."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"need boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}.")
    if top_n < 0:
        raise ValueError(f"top_n is how many boxes to keep, >= 0; got {top_n}.")
    if chunk_size is None:  # see nms_top_n's docstring
        n = boxes.shape[0]
        chunk_size = max(2 * top_n, 1) if boxes.device.type == "cpu" else max(n, 1)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    return chunk_size


# -- anchors.py -------------------------------------------------------------------------------
def check_anchor_shapes(scales, ratios) -> None:
    """At least one scale and one ratio, all positive and finite."""
    if len(scales) == 0 or len(ratios) == 0:
        raise ValueError(f"anchors need at least one scale and one ratio, got scales="
                         f"{list(scales)}, ratios={list(ratios)}; the paper uses scales (128, "
                         f"256, 512), ratios (0.5, 1, 2).")
    scales_t = torch.as_tensor(scales, dtype=torch.float64)
    ratios_t = torch.as_tensor(ratios, dtype=torch.float64)
    if bool((scales_t <= 0).any()) or not bool(torch.isfinite(scales_t).all()):
        raise ValueError(f"anchor scales must be positive and finite (side lengths in pixels), "
                         f"got {list(scales)}.")
    if bool((ratios_t <= 0).any()) or not bool(torch.isfinite(ratios_t).all()):
        raise ValueError(f"anchor ratios (h / w) must be positive and finite, got "
                         f"{list(ratios)}.")


def check_grid(feature_size, stride, base: torch.Tensor) -> None:
    """A feature map of at least one cell, a positive stride, ``(A, 4)`` base anchors."""
    height, width = int(feature_size[0]), int(feature_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"feature_size must be (H, W) with H, W >= 1, got "
                         f"{tuple(feature_size)}; the image may be smaller than the backbone's "
                         f"stride.")
    if not stride > 0:
        raise ValueError(f"stride must be positive (input pixels per feature cell), got "
                         f"{stride}.")
    if base.dim() != 2 or base.shape[-1] != 4:
        raise ValueError(f"base must be (A, 4) anchors from base_anchors, got "
                         f"{tuple(base.shape)}.")


def check_gt_inside(gt_boxes: torch.Tensor, image_size, tolerance: float = 1e-3) -> None:
    """Every ground-truth box lies inside its ``(H, W)`` image (the library never clips
    targets silently)."""
    height, width = image_size
    outside = ((gt_boxes[:, 0] < -tolerance) | (gt_boxes[:, 1] < -tolerance)
               | (gt_boxes[:, 2] > width + tolerance) | (gt_boxes[:, 3] > height + tolerance))
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise ValueError(f"gt_boxes[{i}] = {gt_boxes[i].tolist()} lies outside the image of size "
                         f"(H, W) = {tuple(image_size)}; fix the annotation or clip it with "
                         f"boxes.clip_boxes before training (the library never clips targets "
                         f"silently).")


def check_label_inputs(anchors, gt_boxes, image_size) -> None:
    """:func:`~frcnn_lite.anchors.label_anchors`' inputs: one device, valid boxes inside."""
    # Devices first: the value checks below cannot read a tensor on the wrong device.
    if (isinstance(anchors, torch.Tensor) and isinstance(gt_boxes, torch.Tensor)
            and anchors.device != gt_boxes.device):
        raise ValueError(f"anchors are on {anchors.device} but gt_boxes on {gt_boxes.device}; "
                         f"move them to one device, e.g. gt_boxes.to(anchors.device).")
    check_boxes(anchors, "anchors")
    check_boxes(gt_boxes, "gt_boxes")
    check_gt_inside(gt_boxes, image_size)


def check_anchor_sampling(labels: torch.Tensor, batch_size_per_image: int,
                          positive_fraction: float) -> None:
    if labels.dim() != 1:
        raise ValueError(f"labels must be (N,) as returned by label_anchors, got "
                         f"{tuple(labels.shape)}.")
    if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"need batch_size_per_image >= 1 and 0 <= positive_fraction <= 1, got "
                         f"{batch_size_per_image} and {positive_fraction}.")


# -- rpn.py -----------------------------------------------------------------------------------
def check_rpn_head_settings(in_channels: int, num_anchors: int) -> None:
    if in_channels < 1 or num_anchors < 1:
        raise ValueError(f"need in_channels >= 1 and num_anchors >= 1, got {in_channels}, "
                         f"{num_anchors}; in_channels is the backbone's out_channels.")


def check_features(features: torch.Tensor, in_channels: int, who: str) -> None:
    """A ``(B, in_channels, Hf, Wf)`` feature map for the layer named ``who``."""
    if features.dim() != 4 or features.shape[1] != in_channels:
        raise ValueError(f"features must be (B, {in_channels}, Hf, Wf), got "
                         f"{tuple(features.shape)}; build {who} with the backbone's "
                         f"out_channels.")


def check_rpn_loss_inputs(cls_logits, deltas, labels, regression_targets, num_locations,
                          normalization) -> None:
    """Eq. 1's inputs: ``(N, 2)``, ``(N, 4)``, ``(N,)`` int64, ``(N, 4)``; a known normalisation."""
    n = labels.shape[0]
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise TypeError(f"labels must be (N,) int64 (1 / 0 / -1 from sample_anchors), "
                        f"got {tuple(labels.shape)} {labels.dtype}.")
    for name, t, c in (("cls_logits", cls_logits, 2), ("deltas", deltas, 4),
                       ("regression_targets", regression_targets, 4)):
        if t.shape != (n, c):
            raise ValueError(f"{name} must be ({n}, {c}) to match labels (N,) = ({n},), got "
                             f"{tuple(t.shape)}; flatten head outputs with "
                             f"flatten_head_outputs.")
    if normalization not in ("paper", "batch"):
        raise ValueError(f"normalization must be 'paper' or 'batch', got {normalization!r}.")
    if normalization == "paper" and (num_locations is None or num_locations < 1):
        raise ValueError("normalization='paper' divides the box loss by N_reg, the number of "
                         "anchor locations (Hf * Wf summed over images): pass "
                         "num_locations=..., or use normalization='batch'.")


def check_proposal_inputs(anchors, objectness, deltas, image_sizes) -> None:
    """The proposal layer's inputs: shapes, one device, and finite values.

    Non-finite scores or deltas mean training diverged (NMS would silently
    return garbage). One host sync; NMS syncs anyway, since how many boxes it
    keeps depends on the data.
    """
    if objectness.dim() != 2 or deltas.shape != (*objectness.shape, 4):
        raise ValueError(f"need objectness (B, N) and deltas (B, N, 4), got "
                         f"{tuple(objectness.shape)} and {tuple(deltas.shape)}.")
    if anchors.shape != (objectness.shape[1], 4):
        raise ValueError(f"anchors must be (N, 4) = ({objectness.shape[1]}, 4) to match "
                         f"objectness, got {tuple(anchors.shape)}; were they made for another "
                         f"feature size?")
    if len(image_sizes) != objectness.shape[0]:
        raise ValueError(f"got {len(image_sizes)} image sizes for {objectness.shape[0]} images.")
    if not anchors.device == objectness.device == deltas.device:
        raise ValueError(f"anchors ({anchors.device}), objectness ({objectness.device}) and "
                         f"deltas ({deltas.device}) must be on one device; move them with "
                         f".to(device).")
    # x * 0 is 0 for finite x and NaN for NaN or inf: one cheap pass finds either.
    if not bool(torch.isfinite((objectness * 0).sum() + (deltas * 0).sum())):
        raise ValueError("NaN or inf objectness scores or deltas reached the proposal layer: "
                         "training has diverged (try a lower learning rate, check that images "
                         "are in [0, 1] and targets are valid), or the backbone produced "
                         "non-finite features.")


def check_batch(features: torch.Tensor, image_sizes, targets=None) -> None:
    """One ``(H, W)`` image size, and (when given) one target, per feature map."""
    if len(image_sizes) != features.shape[0]:
        raise ValueError(f"got {len(image_sizes)} image sizes for a batch of "
                         f"{features.shape[0]} feature maps; pass one (H, W) per image.")
    if targets is not None and len(targets) != features.shape[0]:
        raise ValueError(f"got {len(targets)} targets for {features.shape[0]} images.")


# -- backbones.py -----------------------------------------------------------------------------
def check_declared_stride(ops, stride: int, name: str) -> None:
    """The product of a backbone's layer strides is the stride it declares."""
    total = 1
    for _, s, _, _, _ in ops:
        total *= s
    if total != stride:
        raise ValueError(f"backbone {name!r}: its layers have total stride {total}, "
                         f"but stride={stride} was declared.")


def check_image_size(image_size) -> None:
    if int(image_size[0]) < 1 or int(image_size[1]) < 1:
        raise ValueError(f"image_size must be (H, W) with H, W >= 1, got {tuple(image_size)}.")


def check_fits(span: int, n_out: int, image_size, backbone) -> None:
    """A layer's window still fits the (shrunk) input: the image is not too small."""
    if span < 0 or n_out < 1:
        raise ValueError(f"an image of size (H, W) = {tuple(image_size)} is too small for "
                         f"backbone {backbone.name!r} (stride {backbone.stride}); resize it so "
                         f"both sides are at least {backbone.stride} pixels.")


def check_tiny_settings(pretrained: bool, widths, strides) -> None:
    if pretrained:
        raise RuntimeError("the 'tiny' backbone has no pretrained weights: it is meant to be "
                           "trained from scratch (chapter 9). Use pretrained=False.")
    if len(widths) != len(strides):
        raise ValueError(f"widths and strides must have the same length, got {len(widths)} and "
                         f"{len(strides)}.")


# -- model.py ---------------------------------------------------------------------------------
def check_training_targets(targets) -> None:
    if targets is None:
        raise ValueError("training needs targets: call model(images, targets), or model.eval() "
                         "to predict.")
