"""Your own data: a labelled folder (COCO JSON or VOC XML) to datasets a detector trains on.

On top of the loaders of :mod:`frcnn_lite.real_data`: :func:`open_dataset`
takes a COCO JSON file or a VOC folder as CVAT, Label Studio, LabelImg or
Roboflow write them, finds the images and takes the class names from the data;
:func:`check_dataset` reads every image and annotation before training, naming
the file and object of any problem; :func:`data_record` is what a checkpoint
keeps of its data, so ``evaluate`` and ``detect`` use the same classes and input
pipeline; :func:`coco_results` and :func:`coco_ground_truth` write COCO files
that pycocotools reads; :func:`suggest_scales` picks anchor scales for the
boxes. Quirks handled: 1-based VOC pixels, gapped or 0-based COCO category ids,
images without objects, ``iscrowd`` and ``difficult`` (left out of training,
ignored by evaluation), ``file_name`` with subfolders. Built in chapter 14.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, Path]

__all__ = ["DataError", "dataset_kind", "voc_splits", "voc_class_names", "find_coco_images",
           "open_dataset", "check_dataset", "holdout", "data_record", "class_names_of",
           "coco_results", "coco_ground_truth", "suggest_scales"]


class DataError(ValueError):
    """Own-data input that cannot be used; the message names the file and the object."""


def dataset_kind(path: PathLike) -> str:
    """``"coco"`` for a JSON file, ``"voc"`` for a folder with ``Annotations/``."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_dir() and (path / "Annotations").is_dir():
        return "voc"
    if path.is_dir():
        jsons = sorted(p.name for p in path.glob("*.json"))
        nested = sorted(str(p.parent) for p in path.glob("*/Annotations"))
        hint = (f" It holds {jsons}: pass one of them." if jsons else
                f" Did you mean {nested[0]}?" if nested else "")
        raise DataError(f"{path} is neither a COCO JSON file nor a VOC folder (one with "
                        f"Annotations/, JPEGImages/ and ImageSets/Main/).{hint}")
    if not path.exists():
        raise DataError(f"{path} does not exist; give a COCO JSON file or a VOC folder.")
    raise DataError(f"{path} is not a .json file nor a VOC folder; give a COCO JSON file "
                    f"(CVAT, Label Studio, Roboflow 'COCO' export) or a VOC folder.")


def voc_splits(root: PathLike) -> List[str]:
    """The image lists ``ImageSets/Main/<split>.txt`` of a VOC folder (per-class lists aside)."""
    main = Path(root) / "ImageSets" / "Main"
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def _default_voc_split(root: Path, split: Optional[str]) -> str:
    if split is not None:
        return split
    found = voc_splits(root)
    for name in ("trainval", "train", "default"):  # VOC, LabelImg scripts, CVAT's export
        if name in found:
            return name
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root / 'ImageSets' / 'Main'} has no image list. Write the image names "
                        f"(no extension) one per line to {root}/ImageSets/Main/train.txt, e.g. "
                        f"`ls {root}/Annotations | sed 's/\\.xml$//' > "
                        f"{root}/ImageSets/Main/train.txt`.")
    raise DataError(f"{root} has several image lists {found}: pass --split with one of them.")


def voc_class_names(root: PathLike, split: str) -> tuple:
    """Every object ``<name>`` in the split's XML files, sorted (the classes of the data)."""
    from frcnn_lite.real_data import parse_voc_xml

    root = Path(root)
    index = root / "ImageSets" / "Main" / f"{split}.txt"
    if not index.is_file():
        raise DataError(f"no image list {index} for split {split!r}; available: "
                        f"{voc_splits(root)}.")
    names = set()
    listed = index.read_text(encoding="utf-8-sig").split()
    if not listed:
        raise DataError(f"{index} lists no images; put one image name per line in it.")
    for name in listed:
        xml = root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise DataError(f"annotation {xml} (listed in {index.name}) is missing.")
        if xml.stat().st_size == 0:
            raise DataError(f"annotation {xml} (listed in {index.name}) is empty (0 bytes); "
                            f"export it again, or remove {name} from {index.name}.")
        names.update(obj["name"] for obj in _build(parse_voc_xml, xml)["objects"])
    if not names:
        raise DataError(f"the {len(listed)} annotation files of {index} hold no objects: "
                        f"there is nothing to learn; label some objects first.")
    return tuple(sorted(names))


def find_coco_images(ann_file: PathLike, images: Optional[PathLike] = None) -> Path:
    """The folder that ``file_name`` entries are relative to.

    Given: ``images``. Otherwise the first of the JSON's folder (Roboflow, and
    Label Studio whose names start with ``images/``), ``images/`` beside it
    (our exporter), and ``../images`` (CVAT's ``annotations/instances_*.json``)
    that holds the first listed image.
    """
    ann_file = Path(ann_file)
    if images is not None:
        images = Path(images)
        if not images.is_dir():
            raise DataError(f"images folder {images} (--images) does not exist.")
        return images
    data = _read_json(ann_file)
    listed = [i.get("file_name") for i in data.get("images", []) if isinstance(i, dict)]
    candidates = [ann_file.parent, ann_file.parent / "images", ann_file.parent.parent / "images"]
    if not listed:
        return candidates[0]
    for folder in candidates:
        if isinstance(listed[0], str) and (folder / listed[0]).is_file():
            return folder
    raise DataError(f"{ann_file}: cannot find its first image {listed[0]!r} in "
                    f"{[str(c) for c in candidates]}; pass --images with the folder that "
                    f"the 'file_name' entries are relative to.")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} is missing.")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path} is empty (0 bytes of JSON); export the annotations again.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err}); export the annotations again.") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file is a JSON object with 'images', 'annotations' "
                        f"and 'categories'; found a {type(data).__name__}.")
    return data


def open_dataset(path: PathLike, *, images: Optional[PathLike] = None,
                 split: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                 training: bool = True):
    """A COCO JSON file or a VOC folder as a dataset of ``(image, target)``.

    Args:
        path: the COCO JSON file, or the VOC folder (``Annotations/`` ...).
        images: COCO only: the folder ``file_name`` is relative to (found
            by :func:`find_coco_images` when omitted).
        split: VOC only: the list in ``ImageSets/Main/`` (default
            ``trainval``, ``train`` or CVAT's ``default``, whichever exists).
        classes: the class names a model was trained on (evaluation); by
            default they come from the data. A COCO file's categories must
            then have these names in this order.
        training: leave out crowd regions and VOC ``difficult`` objects (the
            paper's code trains without them); else keep them flagged in
            ``target["difficult"]``, which the evaluation ignores.

    The dataset gets ``kind`` (``"coco"`` / ``"voc"``), ``source`` (what the
    messages call it) and ``classes``.
    """
    from frcnn_lite.real_data import COCODetection, VOCDetection

    path = Path(path)
    kind = dataset_kind(path)
    if kind == "coco":
        data = _read_json(path)
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{path}: no {key!r} list; a COCO detection file needs "
                                f"'images', 'annotations' and 'categories'.")
        if not data["images"]:
            raise DataError(f"{path} lists no images; export the annotations again.")
        if not data["categories"]:
            raise DataError(f"{path} lists no categories, so there are no classes to learn.")
        if training and not data.get("annotations"):
            raise DataError(f"{path} has no annotations: none of its {len(data['images'])} "
                            f"images has a labelled object; there is nothing to learn.")
        folder = find_coco_images(path, images)
        dataset = _build(COCODetection, path, folder, include_crowd=not training)
        if classes is not None and tuple(dataset.classes) != tuple(classes):
            raise DataError(f"{path}: its categories {list(dataset.classes)} (in id order) are not "
                            f"the model's classes {list(classes)}; evaluate with a file whose "
                            f"categories match, or retrain on this one.")
        dataset.source = f"COCO file {path}"
    else:
        split = _default_voc_split(path, split)
        names = tuple(classes) if classes is not None else voc_class_names(path, split)
        dataset = _build(VOCDetection, path, split, classes=names, keep_difficult=not training)
        if len(dataset) == 0:
            raise DataError(f"{path}/ImageSets/Main/{split}.txt lists no images.")
        dataset.source = f"VOC folder {path} (split {split!r})"
    dataset.kind = kind
    return dataset


def left_out_of_training(dataset) -> int:
    """How many objects the training mode of :func:`open_dataset` leaves out
    (COCO ``iscrowd`` regions, VOC ``difficult`` objects), to report them."""
    from frcnn_lite.real_data import parse_voc_xml

    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if getattr(base, "kind", None) == "coco":
        return sum(1 for a in base.coco.dataset.get("annotations", []) if a.get("iscrowd"))
    if getattr(base, "kind", None) == "voc":
        return sum(o["difficult"] for name in base.ids for o in
                   parse_voc_xml(base.root / "Annotations" / f"{name}.xml")["objects"])
    return 0


def _build(loader, *args, **kwargs):
    """A loader of :mod:`frcnn_lite.real_data`; its errors (which name the file and the
    object) become :class:`DataError`."""
    try:
        return loader(*args, **kwargs)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        raise DataError(str(error).strip("'\"")) from error


def check_dataset(dataset, role: str = "training data", *, progress: bool = False) -> dict:
    """Read every sample once; raise :class:`DataError` naming the file and object.

    The loaders check the annotations when they are built; images are only
    opened here, so a missing or unreadable image, an image whose size differs
    from its annotation, or a box outside an image whose size the annotation
    does not give, stops the run now rather than an hour into training.
    Returns counts: ``{"images", "objects", "empty_images", "per_class"}``.
    """
    from tqdm.auto import tqdm

    source = getattr(dataset, "source", type(dataset).__name__)
    if len(dataset) == 0:
        raise DataError(f"{role} ({source}) has no images.")
    classes = class_names_of(dataset)
    per_class = {name: 0 for name in classes}
    objects = empty = 0
    for index in tqdm(range(len(dataset)), desc=f"checking {role}", disable=not progress,
                      leave=False):
        try:
            image, target = dataset[index]
        except (OSError, ValueError, KeyError, IndexError) as error:
            raise DataError(f"{role} ({source}), image {index}: {error}") from error
        labels = target["labels"]
        if "difficult" in target:  # flagged objects neither train nor count in evaluation
            labels = labels[~target["difficult"].bool()]
        objects += len(labels)
        empty += int(len(target["labels"]) == 0)
        for label in labels.tolist():
            per_class[classes[label - 1]] += 1
    if objects == 0 and role == "training data":
        raise DataError(f"{role} ({source}): none of its {len(dataset)} images has an object "
                        f"to learn from.")
    return {"images": len(dataset), "objects": objects, "empty_images": empty,
            "per_class": per_class}


class _Subset(torch.utils.data.Subset):
    """A ``Subset`` that keeps the dataset's ``classes``, ``kind`` and ``source``."""

    def __getattr__(self, name):
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def holdout(dataset, fraction: float, seed: int = 0):
    """Split ``dataset`` into ``(train, validation)``: a seeded ``fraction`` held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}.")
    count = len(dataset)
    held = int(round(count * fraction))
    if held < 1 or held >= count:
        raise DataError(f"{getattr(dataset, 'source', 'the data')} has {count} images: holding "
                        f"out {fraction:.0%} leaves {count - held} to train on and {held} to "
                        f"validate; give a separate validation set (--val-data) instead.")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return _Subset(dataset, sorted(order[held:])), _Subset(dataset, sorted(order[:held]))


def class_names_of(dataset) -> tuple:
    """The dataset's class names (``classes``), label ``k`` is ``classes[k - 1]``."""
    names = getattr(dataset, "classes", None)
    if not names:
        raise DataError(f"{type(dataset).__name__} has no 'classes' attribute.")
    return tuple(names)


def data_record(dataset, **extra) -> dict:
    """What a checkpoint keeps about its data (plain JSON values)."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    record = {"kind": getattr(base, "kind", type(base).__name__),
              "classes": list(class_names_of(dataset))}
    if record["kind"] == "coco":
        record.update(path=str(Path(base.ann_file).resolve()),
                      images=str(Path(base.images_dir).resolve()),
                      category_ids=[int(base.label_to_cat_id[k])
                                    for k in range(1, len(record["classes"]) + 1)])
    elif record["kind"] == "voc":
        record.update(path=str(Path(base.root).resolve()), split=base.split)
    record.update(extra)
    return json.loads(json.dumps(record))  # fails here, not in torch.save, if not plain JSON


def _category_ids(dataset, num_classes: int) -> List[int]:
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    mapping = getattr(base, "label_to_cat_id", None)
    return [int(mapping[k]) if mapping else k for k in range(1, num_classes + 1)]


def _image_ids(dataset, targets: Sequence[dict]) -> List[int]:
    """COCO image ids: the file's own for COCO data, else positions 1..I."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if getattr(base, "kind", None) == "coco":
        return [int(t["image_id"]) for t in targets]
    return list(range(1, len(targets) + 1))


def coco_results(predictions: Sequence[dict], targets: Sequence[dict],
                 dataset) -> List[dict]:
    """Detections as a COCO results list (``COCO.loadRes`` reads it).

    One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per
    detection; ids are the COCO file's own (category ids mapped back from
    the labels 1..K) or, for VOC and shapes data, those
    :func:`coco_ground_truth` writes.
    """
    cat_ids = _category_ids(dataset, len(class_names_of(dataset)))
    results = []
    for image_id, pred in zip(_image_ids(dataset, targets), predictions):
        for (x1, y1, x2, y2), label, score in zip(pred["boxes"].tolist(),
                                                  pred["labels"].tolist(),
                                                  pred["scores"].tolist()):
            results.append({"image_id": image_id,
                            "category_id": cat_ids[label - 1],  # c(label)
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    return results


def coco_ground_truth(targets: Sequence[dict], dataset) -> dict:
    """The boxes of ``targets`` as a COCO ground-truth dict (for VOC or shapes data).

    ``difficult`` boxes become ``iscrowd`` regions (COCO's way to ignore a box),
    areas are ``w * h``, as :func:`frcnn_lite.evaluate.evaluate_coco` does.
    """
    names = class_names_of(dataset)
    cat_ids = _category_ids(dataset, len(names))
    images, annotations = [], []
    for image_id, target in zip(_image_ids(dataset, targets), targets):
        images.append({"id": image_id})
        difficult = target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool))
        for box, label, hard in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                    difficult.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat_ids[label - 1], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": int(hard)})
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def suggest_scales(dataset, min_size: int, max_size: int, *, limit: int = 500) -> tuple:
    """Anchor scales (octaves, as the paper's 128-256-512) covering the data's boxes.

    The boxes' sizes ``sqrt(w * h)`` after the model's resize (shorter side to
    ``min_size``, longer at most ``max_size``) are measured on up to ``limit``
    images; the scales are the powers of two from the one at or below the 5th
    percentile to the one at or above the 95th (2 to 5 of them).
    """
    sizes = []
    for index in range(min(limit, len(dataset))):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        factor = min(min_size / min(height, width), max_size / max(height, width))
        boxes = target["boxes"]
        sizes += (((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
                  * factor).tolist()
    if not sizes:
        raise DataError("no boxes to choose anchor scales from; pass --scales.")
    low, high = np.percentile(sizes, [5, 95])
    first = 2 ** math.floor(math.log2(max(low, 8.0)))
    last = 2 ** math.ceil(math.log2(max(high, first * 2)))
    scales = []
    scale = first
    while scale <= last and len(scales) < 5:
        scales.append(float(scale))
        scale *= 2
    return tuple(scales)
