"""The shapes dataset: determinism, realism, splits and exports (chapter 1)."""

import json
import math
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch

from frcnn_lite.boxes import box_iou
from frcnn_lite.checks import check_image, check_target
from frcnn_lite.datasets import CLASSES, ShapesDataset, box_statistics, collate, export_coco, export_voc


def test_deterministic_same_seed():
    a, b = ShapesDataset("train", seed=3), ShapesDataset("train", seed=3)
    for i in (0, 7, 123):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])


def test_different_seeds_and_splits_differ():
    base = ShapesDataset("train", seed=0)[0][0]
    assert not torch.equal(base, ShapesDataset("train", seed=1)[0][0])
    assert not torch.equal(base, ShapesDataset("test", seed=0)[0][0])


def test_samples_are_valid_targets():
    ds = ShapesDataset("val", num_images=20)
    for i in range(len(ds)):
        image, target = ds[i]
        check_image(image)
        check_target(target, num_classes=ds.num_classes)
        boxes = target["boxes"]
        assert image.shape == (3, 256, 256)
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 256).all())
        assert bool((boxes == boxes.round()).all())  # tight integer pixel boxes


def test_statistics_are_realistic():
    stats = box_statistics(ShapesDataset("train"), num_images=200)
    assert stats["boxes_per_image"].min() >= 1 and stats["boxes_per_image"].max() <= 6
    assert stats["boxes_per_image"].mean() > 2.5
    assert set(np.unique(stats["labels"])) == set(range(1, len(CLASSES) + 1))
    assert stats["sizes"].min() < 16 and stats["sizes"].max() > 150  # ~12 px to most of the image
    assert stats["ratios"].min() < 0.45 and stats["ratios"].max() > 2.2  # ~1:3 to 3:1


def test_objects_overlap_sometimes_but_not_too_much():
    ds = ShapesDataset("train", num_images=100)
    overlapping = 0
    for i in range(len(ds)):
        boxes = ds[i][1]["boxes"]
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        overlapping += int((iou > 0).any())
        assert float(iou.max()) < 0.67  # max_overlap=0.4 of the smaller box bounds IoU
    assert overlapping >= 10


def test_configurable_sizes():
    ds = ShapesDataset("train", num_images=30, image_size=(128, 192), min_size=8, max_size=24)
    stats = box_statistics(ds)
    assert ds[0][0].shape == (3, 128, 192)
    assert stats["sizes"].max() <= 24 * math.sqrt(1.0) * 1.3


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "training"}, "split"),
    ({"min_size": 50, "max_size": 20}, "min_size"),
    ({"image_size": (16, 16)}, "image_size"),
    ({"max_ratio": 0.5}, "max_ratio"),
    ({"objects_per_image": (3, 1)}, "objects_per_image"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesDataset("val", num_images=5)[5]


def test_collate_keeps_lists():
    ds = ShapesDataset("val", num_images=3)
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2


def test_voc_export_round_trip(tmp_path):
    ds = ShapesDataset("val", num_images=3)
    root = export_voc(ds, tmp_path / "voc")
    names = (root / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert len(names) == 3
    tree = ET.parse(root / "Annotations" / f"{names[1]}.xml")
    objs = tree.findall("object")
    boxes = torch.tensor([[float(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
                          for o in objs])
    boxes[:, :2] -= 1  # VOC is 1-based
    target = ds[1][1]
    assert torch.equal(boxes, target["boxes"])
    assert [o.find("name").text for o in objs] == [CLASSES[k - 1] for k in target["labels"].tolist()]
    assert (root / "JPEGImages" / f"{names[0]}.png").exists()


def test_coco_export(tmp_path):
    ds = ShapesDataset("val", num_images=2)
    path = export_coco(ds, tmp_path / "coco")
    data = json.loads(path.read_text())
    assert len(data["images"]) == 2 and len(data["categories"]) == len(CLASSES)
    anns = [a for a in data["annotations"] if a["image_id"] == 0]
    target = ds[0][1]
    got = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    assert torch.equal(got, target["boxes"])
    assert [a["category_id"] for a in anns] == target["labels"].tolist()
