"""PASCAL VOC detection (XML annotations), paper §4: VOC 2007 and 2012.

VOC coordinates are 1-based, inclusive pixel indices, so ``x1 = xmin - 1``,
``x2 = xmax`` (a one-pixel box ``xmin == xmax`` has width 1). Samples are as
:mod:`frcnn_lite.real_data` describes; bad files fail loudly with the file
named. Re-exported by :mod:`frcnn_lite.real_data`.

Built in chapter 12.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from frcnn_lite.annotations import (PathLike, check_or_clip, finite_number, load_image,
                                    make_target, safe_xml_root, size_mismatch)

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")


def parse_voc_xml(path: PathLike) -> Dict[str, object]:
    """Parse one VOC annotation file.

    Returns ``{"filename": str or None, "size": (H, W) or None, "objects":
    [{"name", "difficult": bool, "bndbox": (xmin, ymin, xmax, ymax)}]}`` with
    VOC's own 1-based inclusive coordinates (converted by :class:`VOCDetection`).
    Files with a DOCTYPE or entity declarations are refused (XXE, billion laughs).
    """
    path = Path(path)
    root = safe_xml_root(path, path.read_bytes())
    if root.tag != "annotation":
        raise ValueError(f"{path}: a VOC annotation's root element is <annotation>, this file's "
                         f"is <{root.tag}>; it is not a VOC annotation (an error page saved by "
                         f"a download?). Replace it.")

    def number(node, tag, where):
        return finite_number(node.findtext(tag), f"{path}: {where} needs a numeric <{tag}>")

    size = None
    if root.find("size") is not None:
        size = tuple(number(root.find("size"), tag, "<size>") for tag in ("height", "width"))
        if any(v < 0 or v != int(v) for v in size):
            raise ValueError(f"{path}: <size> needs whole, non-negative <height> and <width>, "
                             f"got {size}; fix them or delete <size> (then the image is measured).")
        size = (int(size[0]), int(size[1]))
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if not name or not name.strip() or box is None:
            raise ValueError(f"{path}: object {i} needs a <name> and a <bndbox>.")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise ValueError(f"{path}: object {i} has <difficult>{difficult}</difficult>; VOC "
                             f"uses 0 or 1.")
        objects.append({"name": name.strip(), "difficult": difficult == "1",
                        "bndbox": tuple(number(box, t, f"object {i} <bndbox>")
                                        for t in ("xmin", "ymin", "xmax", "ymax"))})
    return {"filename": root.findtext("filename"), "size": size, "objects": objects}


def read_image_list(index: Path) -> list:
    """The image names of a VOC ``ImageSets`` list (UTF-8, with or without a BOM)."""
    try:
        names = index.read_text(encoding="utf-8-sig").split()
    except UnicodeDecodeError as err:
        raise ValueError(f"{index} is not UTF-8 text ({err}); save it as UTF-8.") from err
    if not names:
        raise ValueError(f"{index} lists no images; write one image name per line.")
    seen = set()
    for line, name in enumerate(names, 1):
        if name in seen:
            raise ValueError(f"{index} lists image {name!r} twice (again at entry {line}); "
                             f"remove the duplicate.")
        seen.add(name)
    return names


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
        if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
            raise TypeError(f"classes must be a sequence of class names such as ('cat', 'dog'), "
                            f"got {classes!r}.")
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
        for image_name in read_image_list(index):
            record = self._record(image_name, label_of, unknown_classes)
            if skip_empty and len(record["labels"]) == 0:
                continue
            self.ids.append(image_name)
            self.records.append(record)

    def _record(self, name: str, label_of: Dict[str, int], unknown: str) -> dict:
        xml = self.root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"annotation {xml} (listed in "
                                    f"{self.split}.txt) is missing.")
        ann = parse_voc_xml(xml)
        objects = []
        for i, obj in enumerate(ann["objects"]):
            if obj["name"] not in label_of:
                if unknown == "skip":
                    continue
                raise ValueError(f"{xml}: object {i} has class {obj['name']!r}, "
                                 f"not one of {list(label_of)}; pass classes=... "
                                 f"with it, or unknown_classes='skip' to drop "
                                 f"such objects.")
            if obj["difficult"] and not self.keep_difficult:
                continue
            objects.append({**obj, "index": i})
        xmin, ymin, xmax, ymax = np.array([o["bndbox"] for o in objects],
                                          dtype=np.float64).reshape(-1, 4).T
        # 1-based inclusive pixel indices -> our continuous coordinates
        boxes = np.stack([xmin - 1, ymin - 1, xmax, ymax], axis=1)  # (N, 4)
        image_path = self._image_path(name, ann["filename"])
        size = ann["size"]
        keep = np.ones(len(objects), dtype=bool)
        if size is not None and min(size) > 0:
            keep = check_or_clip(boxes, size, self.clip_boxes, "object", str(xml),
                                 [o["index"] for o in objects])
        return {"xml": xml, "image": image_path, "size": size, "boxes": boxes[keep],
                "index": [o["index"] for o, k in zip(objects, keep) if k],
                "labels": [label_of[o["name"]] for o, k in zip(objects, keep) if k],
                "difficult": [o["difficult"] for o, k in zip(objects, keep) if k]}

    def _image_path(self, name: str, filename: Optional[str]) -> Path:
        folder = self.root / "JPEGImages"
        candidates = ([folder / filename.strip()] if filename and filename.strip() else []) + \
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
            raise size_mismatch(str(record["xml"]), record["size"], record["image"],
                                (height, width))
        if not known:  # no <size> in the file: check against the pixels
            keep = check_or_clip(boxes, (height, width), self.clip_boxes, "object",
                                 str(record["xml"]), record["index"])
            boxes = boxes[keep]
            record = {**record, "labels": np.asarray(record["labels"])[keep],
                      "difficult": np.asarray(record["difficult"], dtype=bool)[keep]}
        return image, make_target(boxes, record["labels"], index, record["difficult"])

    def __repr__(self) -> str:
        return (f"VOCDetection(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"classes={len(self.classes)}, keep_difficult={self.keep_difficult})")
