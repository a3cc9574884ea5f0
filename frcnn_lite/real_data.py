"""Real detection datasets: PASCAL VOC (XML), COCO (JSON) and Penn-Fudan (masks).

Every loader returns the same samples as :class:`frcnn_lite.datasets.ShapesDataset`,
so the rest of the library cannot tell them apart:

- ``image``: ``(3, H, W)`` float in [0, 1], RGB (grayscale, palette and RGBA
  files are converted to RGB; the alpha channel is dropped).
- ``target``: ``{"boxes": (N, 4) float, "labels": (N,) int64 in 1..K,
  "image_id": int, "difficult": (N,) bool}``, boxes ``(x1, y1, x2, y2)`` in the
  book's continuous pixel coordinates (:mod:`frcnn_lite.boxes`). COCO targets
  also carry ``"iscrowd": (N,) bool``; Penn-Fudan ones ``"masks"`` on request.

Coordinate conventions of the formats (paper §4 uses VOC 2007/2012 and COCO):

- VOC: 1-based, inclusive pixel indices, so ``x1 = xmin - 1``, ``x2 = xmax``
  (a one-pixel box ``xmin == xmax`` has width 1).
- COCO: ``[x, y, w, h]`` in continuous coordinates: ``x2 = x + w``.
- Penn-Fudan: an instance mask per pedestrian; the box is tight around the
  mask's pixels, ``x2 = last column + 1``.

Bad input fails loudly with the file named: malformed XML or JSON, XML with
entity declarations, missing images, unknown class names, NaN or missing
coordinates, duplicate ids, boxes outside the image (``clip_boxes=True``
clips them instead and drops the ones left empty). :class:`HorizontalFlips`
adds the mirror images (the paper's code's only augmentation).

The loaders live in :mod:`frcnn_lite.voc`, :mod:`frcnn_lite.coco` and
:mod:`frcnn_lite.pennfudan` (shared pieces in :mod:`frcnn_lite.annotations`),
the downloads in :mod:`frcnn_lite.downloads`; all are re-exported here.

Built in chapter 12.
"""

from __future__ import annotations

import torch

from frcnn_lite.annotations import check_or_clip as _check_or_clip  # noqa: F401 (old name)
from frcnn_lite.annotations import load_image, make_target as _target  # noqa: F401
from frcnn_lite.coco import COCODetection
from frcnn_lite.downloads import (DownloadError, RESOURCES, download, download_coco_val2017,
                                  download_pennfudan, download_voc2007, download_voc2012,
                                  network_available)
from frcnn_lite.pennfudan import PennFudanDataset
from frcnn_lite.voc import VOC_CLASSES, VOCDetection, parse_voc_xml

__all__ = ["VOC_CLASSES", "VOCDetection", "COCODetection", "PennFudanDataset", "HorizontalFlips",
           "load_image", "parse_voc_xml", "DownloadError", "RESOURCES", "download",
           "download_voc2007", "download_voc2012", "download_coco_val2017", "download_pennfudan",
           "network_available"]


# -- augmentation -----------------------------------------------------------------------
class HorizontalFlips(torch.utils.data.Dataset):
    """``dataset`` followed by its mirror images: ``2 N`` samples (N = ``len(dataset)``).

    The only augmentation of the paper's code (py-faster-rcnn flips every
    training image once). Sample ``N + i`` is sample ``i`` flipped left-right:
    a box ``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)``; masks flip too.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples.")
        image, target = self.dataset[index % len(self.dataset)]
        if index < len(self.dataset):
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"]
        flipped = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                              dim=1)  # (N, 4)
        target = {**target, "boxes": flipped}
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __getattr__(self, name):  # classes, num_classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
