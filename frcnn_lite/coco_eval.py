"""The bridge to pycocotools: our detections and targets in COCO's format, COCOeval run
in memory, its numbers read back (used by :func:`frcnn_lite.evaluate.evaluate_coco`).

COCO's conventions: boxes ``[x, y, w, h]``; ids start at 1 for annotations and
categories (ours: image id = position in the list, category id = label 1..K);
``iscrowd`` regions are ignored (our VOC ``difficult`` boxes become them); a
box's ``area`` decides its size bucket (small < 32², medium, large > 96²).
``COCOeval.eval["precision"]`` is ``(T, 101, K, 4, 3)``: ``T`` IoU thresholds
0.50:0.05:0.95, 101 recall points, ``K`` classes, 4 area ranges (all, small,
medium, large), 3 detection limits (1, 10, 100); -1 where nothing is measured.

Built in chapter 10.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import List, Tuple

# pycocotools' COCOeval.stats, in order.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco(preds: List[dict], gts: List[dict], names: Tuple[str, ...]
            ) -> Tuple[dict, List[dict]]:
    """``(ground truth as a COCO dataset dict, detections as COCO result dicts)``.

    ``preds``/``gts`` are checked CPU dicts (targets with ``"difficult"``),
    one per image; ``names`` the K class names.
    """
    images = [{"id": i} for i in range(len(gts))]
    categories = [{"id": k, "name": name} for k, name in enumerate(names, start=1)]
    annotations, results = [], []
    for i, (p, t) in enumerate(zip(preds, gts)):
        gt = zip(t["boxes"].tolist(), t["labels"].tolist(), t["difficult"].tolist())
        for box, label, hard in gt:
            annotations.append({"id": len(annotations) + 1,  # COCOeval needs ids > 0
                                "image_id": i, "category_id": label, "bbox": xywh(box),
                                "area": (box[2] - box[0]) * (box[3] - box[1]),
                                "iscrowd": int(hard)})
        for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                     p["scores"].tolist()):
            results.append({"image_id": i, "category_id": label, "bbox": xywh(box),
                            "score": score})
    return {"images": images, "categories": categories, "annotations": annotations}, results


def run_cocoeval(ground_truth: dict, results: List[dict]):
    """``(COCOeval after evaluate, accumulate and summarize, its printed summary)``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; an empty result set scores 0
            coco_dt = COCO()
            coco_dt.dataset = {**ground_truth, "annotations": []}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        summary_start = printed.tell()
        coco_eval.summarize()
    return coco_eval, printed.getvalue()[summary_start:]


def coco_stats(coco_eval) -> Tuple[dict, List[str]]:
    """``({metric: value}, notes)`` from ``COCOeval.stats``; -1 (undefined) becomes NaN."""
    stats, notes = {}, []
    for metric, value in zip(COCO_METRICS, coco_eval.stats.tolist()):
        stats[metric] = math.nan if value < 0 else value
        if value < 0:
            notes.append(f"{metric} is undefined (pycocotools reports -1): no ground-truth box "
                         f"falls in its area range or class set.")
    return stats, notes


def per_class_ap(coco_eval, names: Tuple[str, ...]) -> dict:
    """``{name: {"AP", "AP50"}}`` read from ``COCOeval.eval["precision"]``."""
    precision = coco_eval.eval["precision"]  # (T, 101 recalls, K, 4 areas, 3 maxDets)
    per_class = {}
    for k, name in enumerate(names):
        every_iou = precision[:, :, k, 0, -1]  # (T, 101), area "all", 100 detections
        at_50 = precision[0, :, k, 0, -1]  # (101,), IoU 0.5
        per_class[name] = {"AP": float(every_iou.mean()) if (every_iou > -1).all() else math.nan,
                           "AP50": float(at_50.mean()) if (at_50 > -1).all() else math.nan}
    return per_class


def xywh(box: List[float]) -> List[float]:
    """``(x1, y1, x2, y2)`` as COCO's ``[x, y, w, h]``."""
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]
