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

Bad input fails loudly with the file named: malformed XML or JSON, missing
images, unknown class names, boxes outside the image (``clip_boxes=True``
clips them instead and drops the ones left empty). :class:`HorizontalFlips`
adds the mirror images (the paper's code's only augmentation). Downloads live
in :mod:`frcnn_lite.downloads` and are re-exported here.

Built in chapter 12.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
from xml.etree import ElementTree as ET

import numpy as np
import torch

from frcnn_lite.downloads import (DownloadError, RESOURCES, download, download_coco_val2017,
                                  download_pennfudan, download_voc2007, download_voc2012,
                                  network_available)

__all__ = ["VOC_CLASSES", "VOCDetection", "COCODetection", "PennFudanDataset", "HorizontalFlips",
           "load_image", "parse_voc_xml", "DownloadError", "RESOURCES", "download",
           "download_voc2007", "download_voc2012", "download_coco_val2017", "download_pennfudan",
           "network_available"]

PathLike = Union[str, Path]

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")


def load_image(path: PathLike, listed_in: Optional[PathLike] = None) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float tensor in [0, 1], RGB."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    if not path.is_file():
        raise FileNotFoundError(f"image file {path}{where} is missing; put the image there or "
                                f"remove it from the annotations / image list.")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3); L, P, RGBA -> RGB
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}{where}: {err}. Is it a truncated download?"
                         ) from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def _check_or_clip(boxes: np.ndarray, size: Tuple[int, int], clip: bool, what: str, source: str,
                   ids: Sequence) -> np.ndarray:
    """Boxes ``(N, 4)`` inside ``[0, W] x [0, H]``: raise naming ``source``, or clip.

    ``ids`` (N,) name the boxes in messages (their place in the file). Returns
    a ``(N,)`` bool mask of the boxes to keep (all True unless clipping emptied
    some). Clips ``boxes`` in place.
    """
    height, width = size
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise ValueError(f"{source}: {what} {ids[i]} has an empty or inverted box {boxes[i].tolist()} "
                         f"(x1, y1, x2, y2); fix or delete that annotation.")
    outside = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width)
               | (boxes[:, 3] > height))
    if outside.any() and not clip:
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{source}: {what} {ids[i]} has box {boxes[i].tolist()} outside the "
                         f"{width}x{height} image (W x H); fix the annotation, or pass "
                         f"clip_boxes=True to clip boxes to the image.")
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _target(boxes: np.ndarray, labels: Sequence[int], image_id, difficult: Sequence[bool],
            **extra) -> Dict[str, object]:
    target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1),
              "image_id": image_id,
              "difficult": torch.as_tensor(np.asarray(difficult, dtype=bool)).reshape(-1)}
    target.update(extra)
    return target


# -- PASCAL VOC --------------------------------------------------------------------------
def parse_voc_xml(path: PathLike) -> Dict[str, object]:
    """Parse one VOC annotation file.

    Returns ``{"filename": str or None, "size": (H, W) or None, "objects":
    [{"name", "difficult": bool, "bndbox": (xmin, ymin, xmax, ymax)}]}`` with
    VOC's own 1-based inclusive coordinates (converted by :class:`VOCDetection`).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: malformed XML ({err}); re-extract the annotation or delete "
                         f"the image from the split's ImageSets list.") from err

    def number(node, tag, where):
        text = node.findtext(tag)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where} needs a numeric <{tag}>, got {text!r}.") from None

    size = None
    if root.find("size") is not None:
        size = (int(number(root.find("size"), "height", "<size>")),
                int(number(root.find("size"), "width", "<size>")))
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{path}: object {i} needs a <name> and a <bndbox>.")
        objects.append({"name": name.strip(), "difficult": obj.findtext("difficult", "0").strip()
                        == "1", "bndbox": tuple(number(box, t, f"object {i} <bndbox>")
                                               for t in ("xmin", "ymin", "xmax", "ymax"))})
    return {"filename": root.findtext("filename"), "size": size, "objects": objects}


class VOCDetection(torch.utils.data.Dataset):
    """PASCAL VOC detection (paper §4: VOC 2007 trainval/test, 2012 trainval).

    Args:
        root: the year folder holding ``Annotations/``, ``JPEGImages/`` and
            ``ImageSets/Main/`` (e.g. ``.../VOCdevkit/VOC2007``).
        split: a list in ``ImageSets/Main/`` (``"trainval"``, ``"test"``, ...).
        classes: the class names; label ``k`` is ``classes[k - 1]``.
        keep_difficult: keep VOC's "difficult" objects (flagged in
            ``target["difficult"]``, which VOC evaluation ignores); the paper's
            code trains without them (``keep_difficult=False``).
        unknown_classes: ``"error"`` on a name not in ``classes``, or
            ``"skip"`` to drop those objects (train on a subset of classes).
        clip_boxes: clip boxes outside the image (else raise).
        skip_empty: leave out images with no objects left.

    Annotations are parsed once, here, so a bad file fails before training.
    """

    def __init__(self, root: PathLike, split: str = "trainval", *,
                 classes: Sequence[str] = VOC_CLASSES, keep_difficult: bool = True,
                 unknown_classes: str = "error", clip_boxes: bool = False,
                 skip_empty: bool = False):
        self.root, self.split, self.classes = Path(root), split, tuple(classes)
        if unknown_classes not in ("error", "skip"):
            raise ValueError(f"unknown_classes must be 'error' or 'skip', got {unknown_classes!r}.")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"classes must be distinct names, got {self.classes}.")
        if not (self.root / "Annotations").is_dir():
            nested = sorted(self.root.glob("VOCdevkit/VOC*")) + sorted(self.root.glob("VOC2*"))
            hint = f" Did you mean root={nested[0]}?" if nested else ""
            raise FileNotFoundError(f"{self.root} has no Annotations/ folder: root must be a VOC "
                                    f"year folder (Annotations/, JPEGImages/, ImageSets/Main/)."
                                    + hint)
        index = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not index.is_file():
            lists = sorted(p.stem for p in (self.root / "ImageSets" / "Main").glob("*.txt")
                           if "_" not in p.stem)
            raise FileNotFoundError(f"no image list {index} for split {split!r}; "
                                    f"available: {lists}.")
        self.keep_difficult, self.clip_boxes = keep_difficult, clip_boxes
        label_of = {name: k + 1 for k, name in enumerate(self.classes)}
        self.ids, self.records = [], []
        for image_name in index.read_text().split():
            record = self._record(image_name, label_of, unknown_classes)
            if skip_empty and len(record["labels"]) == 0:
                continue
            self.ids.append(image_name)
            self.records.append(record)

    def _record(self, name: str, label_of: Dict[str, int], unknown: str) -> dict:
        xml = self.root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"annotation {xml} (listed in {self.split}.txt) is missing.")
        ann = parse_voc_xml(xml)
        objects = []
        for i, obj in enumerate(ann["objects"]):
            if obj["name"] not in label_of:
                if unknown == "skip":
                    continue
                raise ValueError(f"{xml}: object {i} has class {obj['name']!r}, not one of "
                                 f"{list(label_of)}; pass classes=... with it, or "
                                 f"unknown_classes='skip' to drop such objects.")
            if obj["difficult"] and not self.keep_difficult:
                continue
            objects.append({**obj, "index": i})
        xmin, ymin, xmax, ymax = np.array([o["bndbox"] for o in objects],
                                          dtype=np.float64).reshape(-1, 4).T
        boxes = np.stack([xmin - 1, ymin - 1, xmax, ymax], axis=1)  # 1-based inclusive -> ours
        image_path = self._image_path(name, ann["filename"])
        size = ann["size"]
        keep = np.ones(len(objects), dtype=bool)
        if size is not None and min(size) > 0:
            keep = _check_or_clip(boxes, size, self.clip_boxes, "object", str(xml),
                                  [o["index"] for o in objects])
        return {"xml": xml, "image": image_path, "size": size, "boxes": boxes[keep],
                "index": [o["index"] for o, k in zip(objects, keep) if k],
                "labels": [label_of[o["name"]] for o, k in zip(objects, keep) if k],
                "difficult": [o["difficult"] for o, k in zip(objects, keep) if k]}

    def _image_path(self, name: str, filename: Optional[str]) -> Path:
        folder = self.root / "JPEGImages"
        candidates = ([folder / filename.strip()] if filename else []) + \
            [folder / f"{name}{ext}" for ext in (".jpg", ".png", ".jpeg")]
        return next((p for p in candidates if p.is_file()), candidates[0])

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels 1..K; 0 is background)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = load_image(record["image"], record["xml"])
        height, width = image.shape[1:]
        boxes = record["boxes"].copy()
        known = record["size"] is not None and min(record["size"]) > 0
        if known and tuple(record["size"]) != (height, width):
            raise ValueError(f"{record['xml']} says the image is {record['size'][1]}x"
                             f"{record['size'][0]} (W x H) but {record['image']} is "
                             f"{width}x{height}; the annotation does not belong to this image.")
        if not known:  # no <size> in the file: check against the pixels
            keep = _check_or_clip(boxes, (height, width), self.clip_boxes, "object",
                                  str(record["xml"]), record["index"])
            boxes = boxes[keep]
            record = {**record, "labels": np.asarray(record["labels"])[keep],
                      "difficult": np.asarray(record["difficult"], dtype=bool)[keep]}
        return image, _target(boxes, record["labels"], index, record["difficult"])

    def __repr__(self) -> str:
        return (f"VOCDetection(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"classes={len(self.classes)}, keep_difficult={self.keep_difficult})")


# -- COCO -----------------------------------------------------------------------------------
class COCODetection(torch.utils.data.Dataset):
    """COCO-format detection, read with pycocotools (paper §4.2: COCO 2014/2015).

    Args:
        ann_file: the instances JSON (or a folder holding ``annotations.json``,
            as :func:`frcnn_lite.datasets.export_coco` writes).
        images_dir: the image folder (default: ``images/`` beside the JSON).
        include_crowd: keep ``iscrowd`` boxes (flagged in ``target["iscrowd"]``
            and ``target["difficult"]``, so evaluation ignores them); by default
            they are left out, as the detector must not learn crowds as objects.
        clip_boxes: clip boxes outside the image and drop empty ones (else raise).
        skip_empty: leave out images with no boxes left (else empty targets).

    COCO category ids are not contiguous (1..90 for 80 classes): label ``k``
    is ``cat_ids[k - 1]``; ``cat_id_to_label`` and ``label_to_cat_id`` keep the
    mapping (to write results back in COCO ids). ``image_id`` is COCO's id.
    """

    def __init__(self, ann_file: PathLike, images_dir: Optional[PathLike] = None, *,
                 include_crowd: bool = False, clip_boxes: bool = False, skip_empty: bool = False):
        from pycocotools.coco import COCO

        ann_file = Path(ann_file)
        if ann_file.is_dir():
            ann_file = ann_file / "annotations.json"
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {ann_file} is missing.")
        self.ann_file = ann_file
        self.images_dir = Path(images_dir) if images_dir is not None else ann_file.parent / "images"
        try:
            data = json.loads(ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{ann_file}: malformed JSON ({err}).") from err
        if not isinstance(data, dict) or "images" not in data or "categories" not in data:
            raise ValueError(f"{ann_file}: a COCO detection file needs 'images' and 'categories' "
                             f"lists (and 'annotations'); found keys "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}.")
        data.setdefault("annotations", [])
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: k + 1 for k, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {k: c for c, k in self.cat_id_to_label.items()}
        self.classes = tuple(self.coco.cats[c]["name"] for c in self.cat_ids)
        self.include_crowd, self.clip_boxes = include_crowd, clip_boxes
        self.records = [self._record(i) for i in sorted(self.coco.imgs)]
        if skip_empty:
            self.records = [r for r in self.records if len(r["labels"])]

    def _record(self, image_id: int) -> dict:
        info = self.coco.imgs[image_id]
        source = f"{self.ann_file} image id {image_id} ({info.get('file_name')})"
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if self.include_crowd or not a.get("iscrowd", 0)]
        for a in anns:
            if a.get("category_id") not in self.cat_id_to_label:
                raise ValueError(f"{source}: annotation {a.get('id')} has category_id "
                                 f"{a.get('category_id')!r}, not in the file's categories "
                                 f"{self.cat_ids}; add it to 'categories' or drop the box.")
            if len(a.get("bbox", ())) != 4:
                raise ValueError(f"{source}: annotation {a.get('id')} needs 'bbox': [x, y, w, h].")
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (N, 4) xyxy
        keep = np.ones(len(anns), dtype=bool)
        if "height" in info and "width" in info:
            keep = _check_or_clip(boxes, (int(info["height"]), int(info["width"])),
                                  self.clip_boxes, "annotation", source,
                                  [a.get("id") for a in anns])
        crowd = [bool(a.get("iscrowd", 0)) for a, k in zip(anns, keep) if k]
        return {"id": image_id, "image": self.images_dir / info["file_name"], "boxes": boxes[keep],
                "labels": [self.cat_id_to_label[a["category_id"]] for a, k in zip(anns, keep) if k],
                "iscrowd": crowd, "size": (info.get("height"), info.get("width"))}

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels 1..K; 0 is background)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = load_image(record["image"], self.ann_file)
        if record["size"] != (None, None) and tuple(record["size"]) != tuple(image.shape[1:]):
            raise ValueError(f"{self.ann_file}: image id {record['id']} is listed as "
                             f"{record['size'][1]}x{record['size'][0]} (W x H) but "
                             f"{record['image']} is {image.shape[2]}x{image.shape[1]}.")
        crowd = torch.as_tensor(np.asarray(record["iscrowd"], dtype=bool)).reshape(-1)
        return image, _target(record["boxes"], record["labels"], record["id"], record["iscrowd"],
                              iscrowd=crowd)

    def __repr__(self) -> str:
        return (f"COCODetection(ann_file={str(self.ann_file)!r}, images={len(self)}, "
                f"classes={len(self.classes)}, include_crowd={self.include_crowd})")


# -- Penn-Fudan -------------------------------------------------------------------------
class PennFudanDataset(torch.utils.data.Dataset):
    """Penn-Fudan pedestrians (170 images, 345 people; Wang et al., 2007).

    ``root`` holds ``PNGImages/<name>.png`` and ``PedMasks/<name>_mask.png``;
    each mask pixel is 0 (background) or the index of a pedestrian. One class,
    ``"pedestrian"`` (label 1); boxes are tight around each instance's pixels.
    ``return_masks=True`` adds ``target["masks"]`` ``(N, H, W)`` bool.
    """

    classes = ("pedestrian",)

    def __init__(self, root: PathLike, *, return_masks: bool = False):
        self.root, self.return_masks = Path(root), return_masks
        images, masks = self.root / "PNGImages", self.root / "PedMasks"
        if not images.is_dir() or not masks.is_dir():
            raise FileNotFoundError(f"{self.root} must hold PNGImages/ and PedMasks/ (the "
                                    f"PennFudanPed folder of PennFudanPed.zip).")
        self.names = sorted(p.stem for p in images.glob("*.png"))
        if not self.names:
            raise FileNotFoundError(f"no .png images in {images}.")
        missing = [n for n in self.names if not (masks / f"{n}_mask.png").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) have no mask in {masks}, e.g. "
                                    f"{missing[0]}_mask.png; re-extract the dataset.")

    @property
    def num_classes(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        from PIL import Image

        name = self.names[index]
        image = load_image(self.root / "PNGImages" / f"{name}.png")
        mask_path = self.root / "PedMasks" / f"{name}_mask.png"
        with Image.open(mask_path) as im:
            mask = torch.from_numpy(np.array(im.convert("L") if im.mode not in ("L", "P") else im,
                                             dtype=np.int64))  # (H, W) instance indices
        if mask.dim() != 2 or tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask {mask_path} has shape {tuple(mask.shape)}, but the image is "
                             f"{tuple(image.shape[1:])} (H, W).")
        ids = mask.unique()
        ids = ids[ids != 0]  # (N,) instance indices; 0 is background
        masks = mask[None] == ids[:, None, None]  # (N, H, W)
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
        height, width = mask.shape
        ar_h, ar_w = torch.arange(height), torch.arange(width)
        y1 = torch.where(rows, ar_h, height).min(dim=1).values
        y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
        x1 = torch.where(cols, ar_w, width).min(dim=1).values
        x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
        boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (N, 4)
        extra = {"masks": masks} if self.return_masks else {}
        return image, _target(boxes.numpy(), [1] * len(ids), index, [False] * len(ids), **extra)

    def __repr__(self) -> str:
        return f"PennFudanDataset(root={str(self.root)!r}, images={len(self)})"


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
