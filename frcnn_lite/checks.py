"""Input validation shared by the library: clear errors instead of wrong answers.

Every check raises ``ValueError`` (bad values or shapes) or ``TypeError`` (bad
dtypes) with a message that says what was wrong and how to fix it. Checks on
shapes and dtypes are free; checks on values (finite, x2 > x1) read the tensor,
so hot paths inside ``forward`` skip them on data the library made itself.
"""

from __future__ import annotations

import torch

from frcnn_lite.run_checks import (check_choice, check_int, check_number,  # noqa: F401
                                   check_numbers, check_order)  # (their home is run_checks.py)


def check_boxes(boxes: torch.Tensor, name: str = "boxes", *, allow_empty: bool = True,
                allow_degenerate: bool = False) -> None:
    """Check that ``boxes`` is an ``(N, 4)`` float tensor of valid ``(x1, y1, x2, y2)``.

    Raises when the shape is not ``(N, 4)``, the dtype is not floating point,
    a coordinate is NaN or infinite, or (unless ``allow_degenerate``) a box has
    ``x2 <= x1`` or ``y2 <= y1``.
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}; "
                        f"wrap it with torch.as_tensor(..., dtype=torch.float32).")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}; "
                         f"a single box needs a leading dimension: box[None].")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (continuous pixel coordinates), "
                        f"got {boxes.dtype}; convert with .float().")
    if boxes.shape[0] == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty, but at least one box is needed here.")
        return
    finite = torch.isfinite(boxes).all(dim=1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise ValueError(f"{name}[{i}] = {boxes[i].tolist()} has a NaN or infinite coordinate; "
                         f"remove or fix that box.")
    if not allow_degenerate:
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{name}[{i}] = {boxes[i].tolist()} is degenerate: boxes are (x1, y1, x2, y2) with "
                f"x2 > x1 and y2 > y1. If your boxes are (x, y, w, h), convert them with "
                f"torchvision.ops.box_convert(boxes, 'xywh', 'xyxy'); otherwise drop empty boxes.")


def check_image(image: torch.Tensor, name: str = "image") -> None:
    """Check that ``image`` is a ``(3, H, W)`` floating-point RGB tensor in ``[0, 1]``."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (3, H, W); got {type(image).__name__}. "
                        f"Convert a PIL image or array with torchvision.transforms.functional.to_tensor.")
    if image.dim() != 3:
        raise ValueError(f"{name} must have shape (3, H, W), got {tuple(image.shape)}. "
                         f"Pass images one at a time (a list of (3, H, W) tensors), not a (B, 3, H, W) batch."
                         if image.dim() == 4 else
                         f"{name} must have shape (3, H, W), got {tuple(image.shape)}.")
    channels = image.shape[0]
    if channels == 1:
        raise ValueError(f"{name} is grayscale (1, H, W); the library expects RGB. "
                         f"Repeat the channel: image.expand(3, -1, -1).")
    if channels == 4:
        raise ValueError(f"{name} is RGBA (4, H, W); drop the alpha channel: image[:3].")
    if channels != 3:
        if image.shape[-1] in (1, 3, 4):
            raise ValueError(f"{name} has shape {tuple(image.shape)}, which looks channels-last (H, W, C); "
                             f"use image.permute(2, 0, 1).")
        raise ValueError(f"{name} must have 3 channels first, (3, H, W); got {tuple(image.shape)}.")
    if not image.is_floating_point():
        raise TypeError(f"{name} has dtype {image.dtype}; the library expects floats in [0, 1]. "
                        f"Convert an 8-bit image with image.float() / 255.")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name} has shape {tuple(image.shape)}: an image needs at least one "
                         f"row and one column; drop it from the data.")
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        c, y, x = (int(v) for v in (~finite).nonzero()[0])
        raise ValueError(f"{name} has a NaN or infinite pixel ({float(image[c, y, x])} at "
                         f"channel {c}, row {y}, column {x}); fix or drop that image.")
    if float(image.min()) < 0.0 or float(image.max()) > 1.0:
        raise ValueError(f"{name} has values in [{float(image.min()):.3g}, {float(image.max()):.3g}], "
                         f"but [0, 1] is expected. Divide 0..255 images by 255; undo any normalisation "
                         f"(the model normalises internally).")


def check_labels(labels: torch.Tensor, num_classes: int, num_boxes: int, name: str = "labels") -> None:
    """Check ``(N,)`` int64 labels in ``1..num_classes`` (0 is background) matching ``num_boxes``."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor (N,), got {shape}.")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 class indices, got {labels.dtype}; use .long().")
    if labels.shape[0] != num_boxes:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {num_boxes} boxes; "
                         f"give one label per box.")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 1 or hi > num_classes:
            raise ValueError(f"{name} must lie in 1..{num_classes} (0 is reserved for background), "
                             f"got values in [{lo}, {hi}]; check the class vocabulary.")


def check_target(target: dict, num_classes: int, name: str = "target") -> None:
    """Check a detection target ``{"boxes": (N, 4) float, "labels": (N,) int64}``."""
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"{name} must be a dict with keys 'boxes' (N, 4) and 'labels' (N,), "
                         f"got {type(target).__name__}"
                         f"{' with keys ' + str(sorted(target)) if isinstance(target, dict) else ''}.")
    check_boxes(target["boxes"], f"{name}['boxes']")
    check_labels(target["labels"], num_classes, target["boxes"].shape[0], f"{name}['labels']")


def check_detection_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    """Check model-made boxes ``(N, 4)`` (detections, proposals): finite, never inverted.

    Unlike ground truth they may have zero width or height (clipping to the
    image makes some), but ``x2 < x1`` or ``y2 < y1`` is always a mistake.
    """
    check_boxes(boxes, name, allow_degenerate=True)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bool(inverted.any()):
        i = int(inverted.nonzero()[0])
        raise ValueError(f"{name}[{i}] = {boxes[i].tolist()} has x2 < x1 or y2 < y1; boxes are "
                         f"(x1, y1, x2, y2). Convert (x, y, w, h) boxes with "
                         f"torchvision.ops.box_convert(boxes, 'xywh', 'xyxy').")


def check_prediction(prediction: dict, num_classes: int, name: str = "prediction") -> None:
    """Check a detection ``{"boxes": (D, 4), "labels": (D,) int64 in 1..K, "scores": (D,)}``.

    Scores must be probabilities in ``[0, 1]`` (not logits) and never NaN.
    """
    if not isinstance(prediction, dict) or not {"boxes", "labels", "scores"} <= set(prediction):
        found = sorted(prediction) if isinstance(prediction, dict) else type(prediction).__name__
        raise ValueError(f"{name} must be a dict with 'boxes' (D, 4), 'labels' (D,) and 'scores' "
                         f"(D,), got {found}.")
    boxes, scores = prediction["boxes"], prediction["scores"]
    check_detection_boxes(boxes, f"{name}['boxes']")
    check_labels(prediction["labels"], num_classes, boxes.shape[0], f"{name}['labels']")
    if not isinstance(scores, torch.Tensor) or scores.shape != (boxes.shape[0],):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name}['scores'] must be a tensor of shape ({boxes.shape[0]},), one "
                         f"score per box, got {shape}.")
    if not scores.is_floating_point():
        raise TypeError(f"{name}['scores'] must be floating point, got {scores.dtype}.")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"{name}['scores'] contains NaN; a NaN score cannot be ranked. "
                         f"Check the model's outputs.")
    if scores.numel() and (float(scores.min()) < 0.0 or float(scores.max()) > 1.0):
        raise ValueError(f"{name}['scores'] must be probabilities in [0, 1], got values in "
                         f"[{float(scores.min()):.3g}, {float(scores.max()):.3g}]; pass softmax "
                         f"scores, not logits.")


def check_boxes_inside(boxes: torch.Tensor, image_size, name: str = "boxes") -> None:
    """Check that boxes ``(N, 4)`` lie inside an image of ``image_size = (H, W)``.

    Boxes may touch the border (``x2 == W``); nothing is clipped here: a box
    outside its image is a mistake in the annotation, and clipping it must be
    asked for (the loaders' ``clip_boxes=True``, or :func:`frcnn_lite.boxes.clip_boxes`).
    """
    height, width = int(image_size[0]), int(image_size[1])
    if boxes.shape[0] == 0:
        return
    outside = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width)
               | (boxes[:, 3] > height))
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise ValueError(f"{name}[{i}] = {boxes[i].tolist()} reaches outside its {width}x{height} "
                         f"image (W x H; boxes are (x1, y1, x2, y2) in [0, W] x [0, H]). Fix the "
                         f"annotation, or clip it on purpose with "
                         f"frcnn_lite.boxes.clip_boxes(boxes, (H, W)).")
