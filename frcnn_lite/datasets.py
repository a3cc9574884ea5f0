"""The synthetic shapes dataset and its exports to VOC XML and COCO JSON.

``ShapesDataset`` draws each image from ``(seed, split, index)`` alone, so it
needs no files, is identical on every machine, and any image can be made
again on demand. It is built to make detection non-trivial on a laptop: five
classes of filled or hollow shapes in random colours, several per image with
some overlap, sizes from about 12 px to most of the image, aspect ratios
(h / w) from 1:3 to 3:1, on textured, cluttered backgrounds with distractor
strokes that are not objects.

A sample is ``(image, target)`` in torchvision's detection format: ``image``
``(3, H, W)`` float in [0, 1]; ``target = {"boxes": (N, 4) float, "labels":
(N,) int64 in 1..K, "image_id": int}``. Boxes are tight around the drawn
shape, in the conventions of :mod:`frcnn_lite.boxes`.

Built in chapter 1; the exports feed chapter 12's real-format loaders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

import numpy as np
import torch

from frcnn_lite.run_checks import check_int, check_number

CLASSES: Tuple[str, ...] = ("ellipse", "rectangle", "triangle", "cross", "ring")
SPLITS: Dict[str, int] = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS: Dict[str, int] = {"train": 2000, "val": 200, "test": 200}


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, flip: bool) -> np.ndarray:
    """Boolean mask of a shape in box coordinates ``u, v`` in [-1, 1] (x right, y down)."""
    if kind == "ellipse":
        return u ** 2 + v ** 2 <= 1.0
    if kind == "rectangle":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if kind == "triangle":
        v = -v if flip else v  # apex up, or apex down when flipped
        return np.abs(u) <= (v + 1.0) / 2.0
    if kind == "cross":
        return (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
    if kind == "ring":
        r2 = u ** 2 + v ** 2
        return (r2 <= 1.0) & (r2 >= 0.3)
    raise ValueError(f"unknown shape {kind!r}; known: {CLASSES}")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


class ShapesDataset(torch.utils.data.Dataset):
    """Synthetic multi-class detection images, generated from ``(seed, split, index)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split draws from its
            own random stream, so the splits never share an image.
        num_images: length of the split (defaults: 2000 / 200 / 200).
        image_size: ``(H, W)`` of every image.
        min_size, max_size: object size ``sqrt(w * h)`` in pixels is drawn
            log-uniformly from ``[min_size, max_size]`` (``max_size`` defaults to
            80% of the shorter image side).
        max_ratio: aspect ratio h / w is drawn log-uniformly from
            ``[1 / max_ratio, max_ratio]``.
        objects_per_image: inclusive range of the number of objects.
        max_overlap: largest fraction of an object another may cover.
        clutter: number of distractor strokes per image (not objects).
        seed: the dataset seed; same seed, same images and boxes.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", num_images: Optional[int] = None,
                 image_size: Tuple[int, int] = (256, 256), min_size: float = 12.0,
                 max_size: Optional[float] = None, max_ratio: float = 3.0,
                 objects_per_image: Tuple[int, int] = (1, 6), max_overlap: float = 0.4,
                 clutter: int = 6, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
        if num_images is not None:
            check_int(num_images, "num_images", minimum=0)
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}.")
        for i, side in enumerate(image_size):
            check_int(side, f"image_size[{i}]", minimum=32)
        check_number(min_size, "min_size", low=4)
        if max_size is not None:
            check_number(max_size, "max_size", low=4)
        check_number(max_ratio, "max_ratio", low=1)
        check_number(max_overlap, "max_overlap", low=0, high=1)
        check_int(clutter, "clutter", minimum=0)
        check_int(seed, "seed", minimum=0)
        if not isinstance(objects_per_image, (tuple, list)) or len(objects_per_image) != 2:
            raise ValueError(f"objects_per_image must be (min, max), got {objects_per_image!r}.")
        for i, count in enumerate(objects_per_image):
            check_int(count, f"objects_per_image[{i}]", minimum=0)
        height, width = (int(image_size[0]), int(image_size[1]))
        if height < 32 or width < 32:
            raise ValueError(f"image_size must be at least (32, 32), got {tuple(image_size)}.")
        max_size = 0.8 * min(height, width) if max_size is None else float(max_size)
        if not 4 <= min_size <= max_size <= min(height, width):
            raise ValueError(f"need 4 <= min_size <= max_size <= the shorter image side "
                             f"({min(height, width)}), got min_size={min_size}, max_size={max_size}.")
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1 (ratios span [1/max_ratio, max_ratio]), got {max_ratio}.")
        lo, hi = objects_per_image
        if not 0 <= lo <= hi:
            raise ValueError(f"objects_per_image must be (min, max) with 0 <= min <= max, got {objects_per_image}.")
        self.split = split
        self.num_images = DEFAULT_LENGTHS[split] if num_images is None else int(num_images)
        self.image_size = (height, width)
        self.min_size, self.max_size, self.max_ratio = float(min_size), max_size, float(max_ratio)
        self.objects_per_image = (int(lo), int(hi))
        self.max_overlap = float(max_overlap)
        self.clutter = int(clutter)
        self.seed = int(seed)

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels run 1..K; 0 is background)."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict]:
        check_int(index, "the index of a ShapesDataset sample")
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of "
                             f"{len(self)} images.")
        index = index % len(self)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        image = self._background(rng)  # (H, W, 3)
        boxes, labels = self._draw_objects(rng, image)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes,  # (N, 4)
                  "labels": torch.as_tensor(labels, dtype=torch.int64),
                  "image_id": index}
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return image, target  # (3, H, W), dict

    # -- drawing -----------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A muted, textured ``(H, W, 3)`` background with distractor strokes."""
        height, width = self.image_size
        base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.75))
        # Low-frequency texture: a coarse random grid upsampled to full size.
        coarse = rng.normal(0.0, 0.08, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
        texture = np.kron(coarse, np.ones((16, 16, 1), dtype=np.float32))[:height, :width]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        stripes = 0.06 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) / rng.uniform(3, 12))
        image = base[None, None, :] + texture + stripes[..., None]
        for _ in range(self.clutter):  # thin strokes in object-like colours: hard negatives
            colour = _hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            theta, length = rng.uniform(0, math.pi), rng.uniform(10, 0.5 * max(height, width))
            thickness = rng.uniform(1.0, 2.5)
            # Only the stroke's bounding window needs testing: far cheaper than the whole image.
            reach = length / 2 + thickness
            r0, r1 = max(int(y0 - reach), 0), min(int(y0 + reach) + 1, height)
            c0, c1 = max(int(x0 - reach), 0), min(int(x0 + reach) + 1, width)
            wy, wx = yy[r0:r1, c0:c1] - y0, xx[r0:r1, c0:c1] - x0
            dist_along = wx * math.cos(theta) + wy * math.sin(theta)
            dist_across = -wx * math.sin(theta) + wy * math.cos(theta)
            stroke = (np.abs(dist_across) <= thickness / 2) & (np.abs(dist_along) <= length / 2)
            image[r0:r1, c0:c1][stroke] = colour
        image += rng.normal(0.0, 0.03, size=image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0).astype(np.float32)

    def _sample_box(self, rng: np.random.Generator) -> Tuple[int, int, int, int]:
        """A random integer box ``(x1, y1, w, h)`` inside the image."""
        height, width = self.image_size
        size = math.exp(rng.uniform(math.log(self.min_size), math.log(self.max_size)))
        ratio = math.exp(rng.uniform(-math.log(self.max_ratio), math.log(self.max_ratio)))
        w = int(round(min(size / math.sqrt(ratio), 0.95 * width)))
        h = int(round(min(size * math.sqrt(ratio), 0.95 * height)))
        w, h = max(w, 4), max(h, 4)
        x1 = int(rng.integers(0, width - w + 1))
        y1 = int(rng.integers(0, height - h + 1))
        return x1, y1, w, h

    def _acceptable(self, box: np.ndarray, placed: List[np.ndarray]) -> bool:
        """Reject a box that would hide, or be hidden by, more than ``max_overlap`` of another."""
        for other in placed:
            iw = min(box[2], other[2]) - max(box[0], other[0])
            ih = min(box[3], other[3]) - max(box[1], other[1])
            if iw <= 0 or ih <= 0:
                continue
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if iw * ih > self.max_overlap * smaller:
                return False
        return True

    def _draw_objects(self, rng: np.random.Generator, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        lo, hi = self.objects_per_image
        wanted = int(rng.integers(lo, hi + 1))
        boxes: List[np.ndarray] = []
        labels: List[int] = []
        for _ in range(30 * max(wanted, 1)):  # rejection sampling of placements
            if len(boxes) == wanted:
                break
            x1, y1, w, h = self._sample_box(rng)
            label = int(rng.integers(1, len(CLASSES) + 1))
            flip = bool(rng.random() < 0.5)
            u = (np.arange(w, dtype=np.float32) + 0.5) / (w / 2) - 1.0  # (w,) pixel centres in [-1, 1]
            v = (np.arange(h, dtype=np.float32) + 0.5) / (h / 2) - 1.0  # (h,)
            mask = _shape_mask(CLASSES[label - 1], u[None, :], v[:, None], flip)  # (h, w)
            rows, cols = np.nonzero(mask)
            box = np.array([x1 + cols.min(), y1 + rows.min(), x1 + cols.max() + 1, y1 + rows.max() + 1],
                           dtype=np.float32)  # tight box around the drawn pixels
            if not self._acceptable(box, boxes):
                continue
            colour = _hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
            shade = 1.0 + rng.normal(0.0, 0.04, size=(h, w, 1)).astype(np.float32)  # uneven paint
            region = image[y1:y1 + h, x1:x1 + w]
            region[mask] = np.clip(colour[None, None, :] * shade, 0.0, 1.0)[mask]
            boxes.append(box)
            labels.append(label)
        return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, num_images={self.num_images}, "
                f"image_size={self.image_size}, min_size={self.min_size}, max_size={self.max_size}, "
                f"objects_per_image={self.objects_per_image}, seed={self.seed})")


def collate(batch: Sequence[Tuple[torch.Tensor, dict]]) -> Tuple[List[torch.Tensor], List[dict]]:
    """DataLoader ``collate_fn``: keep images and targets as lists (sizes may differ)."""
    if len(batch) == 0:
        raise ValueError("collate got an empty batch; a DataLoader batch holds at least one "
                         "(image, target) sample.")
    images, targets = zip(*batch)
    return list(images), list(targets)


def box_statistics(dataset: torch.utils.data.Dataset, num_images: Optional[int] = None
                   ) -> Dict[str, np.ndarray]:
    """Per-box and per-image statistics of the first ``num_images`` images.

    Returns ``{"boxes_per_image": (I,), "sizes": (B,) sqrt(w * h), "ratios": (B,)
    h / w, "labels": (B,), "boxes": (B, 4)}`` as NumPy arrays (for plots).
    """
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    per_image, boxes, labels = [], [], []
    for i in range(count):
        _, target = dataset[i]
        per_image.append(len(target["boxes"]))
        boxes.append(target["boxes"].numpy())
        labels.append(target["labels"].numpy())
    all_boxes = np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32)
    w, h = all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1]
    return {"boxes_per_image": np.array(per_image), "sizes": np.sqrt(w * h), "ratios": h / w,
            "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64), "boxes": all_boxes}


# -- exports -------------------------------------------------------------------
def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # (H, W, 3)
    Image.fromarray(array).save(path)


def _write_voc_box(obj, box) -> None:
    """Add ``<bndbox>`` to a VOC ``<object>``: ``(x1, y1, x2, y2)`` as 1-based inclusive pixels."""
    bnd = ET.SubElement(obj, "bndbox")
    for tag, value in zip(("xmin", "ymin", "xmax", "ymax"),
                          (box[0] + 1, box[1] + 1, box[2], box[3])):
        ET.SubElement(bnd, tag).text = str(int(round(value)))


def export_voc(dataset: ShapesDataset, root: str | Path, num_images: Optional[int] = None) -> Path:
    """Write the dataset as a PASCAL VOC folder: ``JPEGImages/`` (PNG files),
    ``Annotations/*.xml`` and ``ImageSets/Main/<split>.txt``.

    VOC pixel coordinates are 1-based and inclusive, so a box ``(x1, y1, x2, y2)``
    in the book's continuous convention is written ``xmin = x1 + 1, ymin = y1 + 1,
    xmax = x2, ymax = y2``. Returns ``root``.
    """
    if num_images is not None:
        check_int(num_images, "num_images", minimum=1)
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    names = []
    for i in range(count):
        image, target = dataset[i]
        name = f"{dataset.split}_{i:06d}"
        names.append(name)
        _save_png(image, root / "JPEGImages" / f"{name}.png")
        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = "shapes"
        ET.SubElement(ann, "filename").text = f"{name}.png"
        size = ET.SubElement(ann, "size")
        for tag, value in (("width", image.shape[2]), ("height", image.shape[1]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = dataset.classes[label - 1]
            ET.SubElement(obj, "difficult").text = "0"
            _write_voc_box(obj, box)
        ET.ElementTree(ann).write(root / "Annotations" / f"{name}.xml")
    (root / "ImageSets" / "Main" / f"{dataset.split}.txt").write_text("\n".join(names) + "\n")
    return root


def export_coco(dataset: ShapesDataset, root: str | Path, num_images: Optional[int] = None) -> Path:
    """Write the dataset as a COCO folder: ``images/*.png`` and ``annotations.json``.

    COCO boxes are ``[x, y, w, h]`` in the same continuous pixel coordinates as
    the book's; category ids are the labels 1..K. Returns the JSON path.
    """
    if num_images is not None:
        check_int(num_images, "num_images", minimum=1)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    images, annotations = [], []
    for i in range(count):
        image, target = dataset[i]
        file_name = f"{dataset.split}_{i:06d}.png"
        _save_png(image, root / "images" / file_name)
        images.append({"id": i, "file_name": file_name, "height": image.shape[1], "width": image.shape[2]})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(dataset.classes)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
