"""The detector's input transform: normalise, resize, batch, and map boxes back.

Paper: §3.3 ("Implementation Details"): images are rescaled so that their
shorter side is s = 600 pixels, with the longer side capped at 1000 (the
py-faster-rcnn rule). A batch of images of different sizes is made into one
``(B, 3, H, W)`` tensor by zero-padding at the bottom and right, so every image
keeps its top-left origin and the anchors of §3.1.1 line up with its pixels;
the padded size is rounded up to a multiple of the backbone's ``stride``.
After detection, boxes are scaled back to each original image.

Shape glossary: ``B`` images in a batch; ``(H, W)`` an original image size,
``(h, w)`` its resized size, ``(Hp, Wp)`` the padded batch size; ``N`` boxes.
Sizes are ``(H, W)``, height first. Conventions as in :mod:`frcnn_lite.boxes`.

Built in chapter 9 (the assembled detector).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from frcnn_lite.boxes import clip_boxes
from frcnn_lite.checks import check_boxes_inside, check_image, check_target

Size = Tuple[int, int]


def resized_size(image_size: Size, min_size: int = 600,
                 max_size: int = 1000) -> Size:
    """The ``(h, w)`` an image of size ``(H, W)`` is resized to (§3.3).

    The scale makes the shorter side ``min_size``, unless that would make the
    longer side exceed ``max_size``; then the longer side is ``max_size``.
    Examples: (375, 500) -> (600, 800); (300, 1200) -> (250, 1000), capped.
    """
    height, width = image_size
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize(image: torch.Tensor, boxes: torch.Tensor | None = None, *, min_size: int = 600,
           max_size: int = 1000) -> Tuple[torch.Tensor, torch.Tensor | None]:
    """Resize one image ``(3, H, W) -> (3, h, w)`` and its boxes ``(N, 4)`` with it.

    Bilinear interpolation (as ``cv2.resize`` in py-faster-rcnn). Boxes are
    scaled by ``w / W`` in x and ``h / H`` in y, the exact ratios of the pixel
    grids, so a box touching the right border still touches it after rounding.
    """
    height, width = image.shape[-2:]
    new_h, new_w = resized_size((height, width), min_size, max_size)
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                              align_corners=False)[0]  # (3, h, w)
    if boxes is not None:
        ratios = boxes.new_tensor([new_w / width, new_h / height, new_w / width, new_h / height])
        boxes = boxes * ratios  # (N, 4)
    return image, boxes


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] -> ``(image - mean) / std`` per channel (the backbone's input)."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean_t) / std_t


def batch_images(images: Sequence[torch.Tensor], stride: int = 16) -> torch.Tensor:
    """Stack images ``[(3, h_i, w_i)]`` into ``(B, 3, Hp, Wp)``, zero-padded at bottom/right.

    ``Hp`` and ``Wp`` are the largest height and width rounded up to a multiple
    of ``stride``, so the feature map has exactly ``Hp / stride`` rows. Zero is
    the dataset mean after :func:`normalize`, so padding looks like "nothing".
    """
    max_h = max(int(im.shape[-2]) for im in images)
    max_w = max(int(im.shape[-1]) for im in images)
    padded_h = int(math.ceil(max_h / stride) * stride)
    padded_w = int(math.ceil(max_w / stride) * stride)
    batch = images[0].new_zeros((len(images), 3, padded_h, padded_w))  # (B, 3, Hp, Wp)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch


def map_boxes_back(boxes: torch.Tensor, resized: Size, original: Size) -> torch.Tensor:
    """Boxes ``(N, 4)`` on the resized image ``(h, w)`` -> on the original ``(H, W)``, clipped."""
    ratios = boxes.new_tensor([original[1] / resized[1], original[0] / resized[0],
                               original[1] / resized[1], original[0] / resized[0]])
    return clip_boxes(boxes * ratios, original)


def check_inputs(images, targets, num_classes: int) -> None:
    """Clear errors for the common mistakes before any tensor work (see :mod:`checks`)."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        raise ValueError(f"images must be a list of (3, H, W) tensors, got one tensor of shape "
                         f"{tuple(images.shape)}; pass list(images) instead.")
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of (3, H, W) tensors, got {type(images).__name__}.")
    if len(images) == 0:
        raise ValueError("the batch is empty: pass at least one (3, H, W) image.")
    for i, image in enumerate(images):
        check_image(image, f"images[{i}]")
    if targets is not None:
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be a list of dicts, one per image, got "
                            f"{type(targets).__name__}; wrap a single target as [target].")
        if len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets; "
                             f"give one target dict per image.")
        for i, target in enumerate(targets):
            check_target(target, num_classes, f"targets[{i}]")
            check_boxes_inside(target["boxes"], tuple(images[i].shape[-2:]),
                               f"targets[{i}]['boxes']")


def transform(images: Sequence[torch.Tensor], targets: Sequence[Dict] | None, *,
              mean: Sequence[float], std: Sequence[float], min_size: int, max_size: int,
              stride: int, dtype: torch.dtype = torch.float32
              ) -> Tuple[torch.Tensor, List[Size], List[Dict] | None]:
    """The whole input pipeline for a list of images (and targets in training).

    Returns ``batch (B, 3, Hp, Wp)``, the resized sizes ``[(h_i, w_i)]`` (the
    "image size" the RPN clips proposals to) and the targets with resized
    boxes (new dicts; the caller's targets are not changed). Images of another
    floating dtype (float16, float64) are converted to ``dtype``, the model's.
    """
    resized, sizes, new_targets = [], [], [] if targets is not None else None
    for i, image in enumerate(images):
        boxes = targets[i]["boxes"] if targets is not None else None
        image = image.to(dtype)  # float16 / float64 images -> the weights' dtype
        if boxes is not None:
            boxes = boxes.to(dtype)
        image, boxes = resize(normalize(image, mean, std), boxes,
                              min_size=min_size, max_size=max_size)
        resized.append(image)
        sizes.append((int(image.shape[-2]), int(image.shape[-1])))
        if targets is not None:
            new_targets.append({**targets[i], "boxes": boxes})
    return batch_images(resized, stride), sizes, new_targets
