"""A labelling tool's export, made from the shapes: data for chapter 14 and the tests.

:func:`write_tool_export` writes shapes images the way CVAT (COCO JSON) or
LabelImg (VOC XML) export them, quirks included, so that the own-data path
(:mod:`frcnn_lite.own_data`, the command line) is exercised on files like the
ones a reader brings, without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from frcnn_lite.datasets import _save_png, _write_voc_box
from frcnn_lite.own_data import class_names_of

PathLike = Union[str, Path]

TOOL_CATEGORY_IDS = (5, 0, 12, 9, 31)  # gaps, out of order, one 0 (Label Studio numbers from 0)


def write_tool_export(dataset, root: PathLike, fmt: str, *, empty_images: int = 2,
                      crowd: int = 1, difficult: int = 1, split: str = "train",
                      labelled: Optional[Sequence[str]] = None) -> Path:
    """Write shapes images as a labelling tool exports them; returns the file to pass.

    ``fmt="coco"``: CVAT's layout, ``annotations/instances_<split>.json`` with
    the images in ``images/<split>/`` (``file_name`` has the subfolder), the
    categories numbered :data:`TOOL_CATEGORY_IDS` (not 1..K, listed out of
    order), ``segmentation``/``attributes`` fields, the first ``crowd`` boxes
    marked ``iscrowd``. ``fmt="voc"``: LabelImg's XML (``<path>``, ``<pose>``,
    ``<truncated>``, 1-based pixel indices) in a VOC folder with
    ``ImageSets/Main/<split>.txt``, the first ``difficult`` objects marked
    difficult. Both end with ``empty_images`` images that hold no object (the
    tool lists them with no boxes). ``labelled``: the classes the labeller was
    asked to mark (default all); objects of the other classes stay unlabelled.
    """
    from xml.etree import ElementTree as ET

    root = Path(root)
    names = [f"{split}_{i:04d}" for i in range(len(dataset) + empty_images)]
    samples = [dataset[i] for i in range(len(dataset))]
    if empty_images:
        from frcnn_lite.datasets import ShapesDataset

        height, width = samples[0][0].shape[1:]
        blank = ShapesDataset("test", empty_images, image_size=(height, width),
                              objects_per_image=(0, 0), seed=99)
        samples += [blank[i] for i in range(empty_images)]
    drawn = class_names_of(dataset)
    classes = tuple(labelled) if labelled is not None else drawn
    unknown = sorted(set(classes) - set(drawn))
    if unknown:
        raise ValueError(f"labelled={list(classes)}: {unknown} are not classes of the dataset "
                         f"{list(drawn)}.")
    samples = [(image, _relabel(target, drawn, classes)) for image, target in samples]
    if fmt == "coco":
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id, (name, (image, target)) in enumerate(zip(names, samples), start=1):
            _save_png(image, folder / f"{name}.png")
            images.append({"id": image_id, "file_name": f"{split}/{name}.png",
                           "height": int(image.shape[1]), "width": int(image.shape[2])})
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": TOOL_CATEGORY_IDS[label - 1],
                                    "bbox": [box[0], box[1], w, h], "area": w * h,
                                    "iscrowd": int(len(annotations) < crowd),
                                    "segmentation": [], "attributes": {"occluded": False}})
        categories = [{"id": c, "name": n, "supercategory": ""}
                      for c, n in sorted(zip(TOOL_CATEGORY_IDS, classes), key=lambda p: p[1])]
        path = root / "annotations" / f"instances_{split}.json"  # CVAT: one per subset
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"licenses": [], "info": {"description": "export"},
                                    "categories": categories, "images": images,
                                    "annotations": annotations}))
        return path
    if fmt != "voc":
        raise ValueError(f"fmt must be 'coco' or 'voc', got {fmt!r}.")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    marked = 0
    for name, (image, target) in zip(names, samples):
        _save_png(image, root / "JPEGImages" / f"{name}.png")
        ann = ET.Element("annotation")
        for tag, text in (("folder", "JPEGImages"), ("filename", f"{name}.png"),
                          ("path", f"/home/me/labelling/{name}.png")):
            ET.SubElement(ann, tag).text = text
        ET.SubElement(ET.SubElement(ann, "source"), "database").text = "Unknown"
        size = ET.SubElement(ann, "size")
        for tag, value in (("width", image.shape[2]), ("height", image.shape[1]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        ET.SubElement(ann, "segmented").text = "0"
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = classes[label - 1]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(int(marked < difficult))
            marked += 1
            _write_voc_box(obj, box)  # 1-based inclusive pixels, as VOC writes them
        ET.ElementTree(ann).write(root / "Annotations" / f"{name}.xml")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def _relabel(target: dict, drawn: Sequence[str], classes: Sequence[str]) -> dict:
    """Keep the boxes of ``classes``, labelled by their place in ``classes`` (1..K)."""
    names = [drawn[k - 1] for k in target["labels"].tolist()]
    keep = torch.tensor([n in classes for n in names], dtype=torch.bool)
    labels = [classes.index(n) + 1 for n in names if n in classes]
    return {"boxes": target["boxes"][keep], "labels": torch.tensor(labels, dtype=torch.int64)}
