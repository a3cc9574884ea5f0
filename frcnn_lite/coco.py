"""COCO-format detection (JSON annotations), paper §4.2: COCO 2014/2015.

COCO boxes are ``[x, y, w, h]`` in continuous coordinates: ``x2 = x + w``.
The whole file is validated before use, so nothing in it is silently
ignored or merged: every image needs a unique ``id`` and a ``file_name``,
every category a unique ``id`` and ``name``, every annotation a unique
``id``, a listed ``image_id``, a known ``category_id`` and a ``bbox`` of four
finite numbers. Re-exported by :mod:`frcnn_lite.real_data`.

Built in chapter 12.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from frcnn_lite.annotations import (PathLike, check_or_clip, load_image, make_target,
                                    size_mismatch)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _unique_ids(items: list, kind: str, source: str) -> None:
    """Every ``item["id"]`` an integer, none repeated."""
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not _is_int(item.get("id")):
            raise ValueError(f"{source}: {kind} entry {i} needs an integer 'id', got "
                             f"{item.get('id') if isinstance(item, dict) else item!r}.")
        if item["id"] in seen:
            raise ValueError(f"{source}: two {kind} entries have id {item['id']} (the second is "
                             f"entry {i}); ids must be unique: renumber or merge them by hand.")
        seen.add(item["id"])


def validate_coco(data, source: str) -> None:
    """Raise ``ValueError`` naming the entry for anything a COCO detection file must not hold."""
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{source}: a COCO detection file needs 'images' and 'categories' "
                         f"lists (and 'annotations'); found keys "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}.")
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{source}: '{key}' must be a list, got "
                             f"{type(data[key]).__name__}.")
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations", [])
    _unique_ids(images, "images", source)
    _unique_ids(categories, "categories", source)
    _unique_ids(annotations, "annotations", source)
    files = {}
    for im in images:
        if not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
            raise ValueError(f"{source}: image id {im['id']} needs a 'file_name'.")
        if im["file_name"] in files:
            raise ValueError(f"{source}: images {files[im['file_name']]} and {im['id']} are both "
                             f"{im['file_name']!r}; merge them into one image entry (and move "
                             f"the annotations) or fix the file name.")
        files[im["file_name"]] = im["id"]
        sizes = [im.get("height"), im.get("width")]
        if sizes != [None, None] and not all(_is_number(v) and v > 0 and v == int(v)
                                             for v in sizes):
            raise ValueError(f"{source}: image id {im['id']} ({im['file_name']}) has height "
                             f"{sizes[0]!r} and width {sizes[1]!r}; give both as whole numbers "
                             f"> 0, or neither (then the image file is measured).")
    names = {}
    for cat in categories:
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: category id {cat['id']} needs a 'name'.")
        if name in names:
            raise ValueError(f"{source}: categories {names[name]} and {cat['id']} are both named "
                             f"{name!r}; give them distinct names, or merge them (one id) "
                             f"and update the annotations.")
        names[name] = cat["id"]
    file_of = {im["id"]: im["file_name"] for im in images}
    image_ids, cat_ids = set(file_of), {cat["id"] for cat in categories}
    for ann in annotations:
        what = f"{source}: annotation {ann['id']}"
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{what} refers to image_id {ann.get('image_id')!r}, which is not in "
                             f"'images'; add that image or delete the annotation.")
        if ann.get("category_id") not in cat_ids:
            raise ValueError(f"{source} image id {ann['image_id']} ({file_of[ann['image_id']]}): "
                             f"annotation {ann['id']} has "
                             f"category_id {ann.get('category_id')!r}, not in the file's "
                             f"categories {sorted(cat_ids)}; add it to 'categories' or drop the "
                             f"box.")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise ValueError(f"{what} (image id {ann['image_id']}) needs 'bbox': [x, y, w, h], "
                             f"four finite numbers, got {bbox!r}; fix or delete it.")
        if ann.get("iscrowd", 0) not in (0, 1):  # False and True compare equal to 0 and 1
            raise ValueError(f"{what} has iscrowd={ann['iscrowd']!r}; COCO uses 0 or 1.")


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
    Images listed without ``height``/``width`` have their boxes checked against
    the pixels when read.
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
            data = json.loads(ann_file.read_text(encoding="utf-8-sig"))  # a BOM is harmless
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{ann_file}: malformed JSON ({err}).") from err
        validate_coco(data, str(ann_file))
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
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        xy, wh = xywh[:, :2], xywh[:, 2:]
        boxes = np.concatenate([xy, xy + wh], axis=1)  # (N, 4) x1, y1, x2, y2
        keep = np.ones(len(anns), dtype=bool)
        size = (info.get("height"), info.get("width"))
        if size != (None, None):
            size = (int(size[0]), int(size[1]))
            keep = check_or_clip(boxes, size, self.clip_boxes, "annotation", source,
                                 [a["id"] for a in anns])
        anns = [a for a, k in zip(anns, keep) if k]
        return {"id": image_id, "image": self.images_dir / info["file_name"],
                "boxes": boxes[keep], "size": size, "source": source,
                "labels": [self.cat_id_to_label[a["category_id"]] for a in anns],
                "iscrowd": [bool(a.get("iscrowd", 0)) for a in anns],
                "ann_ids": [a["id"] for a in anns]}

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels 1..K; 0 is background)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = load_image(record["image"], self.ann_file)
        actual = tuple(image.shape[1:])
        boxes, labels, crowd = record["boxes"], record["labels"], record["iscrowd"]
        if record["size"] == (None, None):  # no height/width listed: check against the pixels
            boxes = boxes.copy()
            keep = check_or_clip(boxes, actual, self.clip_boxes, "annotation", record["source"],
                                 record["ann_ids"])
            boxes, labels = boxes[keep], np.asarray(labels, dtype=np.int64)[keep]
            crowd = np.asarray(crowd, dtype=bool)[keep]
        elif tuple(record["size"]) != actual:
            raise size_mismatch(f"{self.ann_file}: image id {record['id']}", record["size"],
                                record["image"], actual)
        crowd_t = torch.as_tensor(np.asarray(crowd, dtype=bool)).reshape(-1)
        return image, make_target(boxes, labels, record["id"], crowd, iscrowd=crowd_t)

    def __repr__(self) -> str:
        return (f"COCODetection(ann_file={str(self.ann_file)!r}, images={len(self)}, "
                f"classes={len(self.classes)}, include_crowd={self.include_crowd})")
