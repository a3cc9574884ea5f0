"""Graders for chapter 11's ablation assignments: anchor choices and results tables.

They grade the student's *choices* (anchor scales) and *results tables*
(rows from :func:`frcnn_lite.book.experiments.run_grid`) rather than a function.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch

from frcnn_lite.anchors import base_anchors, grid_anchors
from frcnn_lite.boxes import box_iou
from frcnn_lite.book.exercises._common import WrongAnswer, _correct


def grade_anchor_coverage(scales: Sequence[float], ratios: Sequence[float] = (0.5, 1.0, 2.0), *,
                          dataset=None, num_images: int = 40, stride: int = 16,
                          max_side: float = 32.0, iou: float = 0.5, required: float = 0.2,
                          max_anchors: int = 15) -> str:
    """Assignment: choose anchor scales so that small boxes get a good anchor.

    Passes when at least ``required`` of the ground-truth boxes with
    sqrt(area) < ``max_side`` have an anchor (inside the image) with IoU >=
    ``iou``, using at most ``max_anchors`` anchors per position. ``dataset``
    defaults to the small-objects shapes variant of chapter 11.
    """
    from frcnn_lite.datasets import ShapesDataset

    scales, ratios = [float(s) for s in scales], [float(r) for r in ratios]
    if len(scales) * len(ratios) > max_anchors:
        raise WrongAnswer(f"{len(scales)} scales x {len(ratios)} ratios = "
                          f"{len(scales) * len(ratios)} anchors per position; the assignment "
                          f"allows at most {max_anchors} (each adds RPN outputs and compute).")
    dataset = dataset or ShapesDataset("val", num_images, min_size=8, max_size=64,
                                       objects_per_image=(3, 8))
    base = base_anchors(scales, ratios)
    covered, total = 0, 0
    for index in range(min(num_images, len(dataset))):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        boxes = target["boxes"]
        sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
        small = boxes[sides < max_side]
        if len(small) == 0:
            continue
        anchors = grid_anchors((math.ceil(height / stride), math.ceil(width / stride)), stride, base)
        inside = (anchors[:, :2] >= 0).all(1) & (anchors[:, 2] <= width) & (anchors[:, 3] <= height)
        anchors = anchors[inside]
        best = box_iou(small, anchors, validate=False).max(dim=1).values if len(anchors) \
            else torch.zeros(len(small))
        covered += int((best >= iou).sum())
        total += len(small)
    if total == 0:
        raise ValueError(f"the dataset has no boxes smaller than {max_side} px.")
    coverage = covered / total
    if coverage < required:
        hint = (" Your smallest scale is larger than the objects: add a scale near their size."
                if min(scales) > max_side else
                " Anchors need to match small boxes at IoU 0.5: with stride 16 a small box "
                "falls between anchor centres, so try scales a little above the objects' size.")
        raise WrongAnswer(f"only {coverage:.0%} ({covered}/{total}) of the boxes under "
                          f"{max_side:g} px have an anchor with IoU >= {iou} (needed "
                          f"{required:.0%}) with scales {scales}.{hint}")
    return _correct(f"{coverage:.0%} ({covered}/{total}) of the boxes under {max_side:g} px "
                    f"have an anchor with IoU >= {iou}, with {len(scales) * len(ratios)} "
                    f"anchors per position.")


def grade_anchor_scale_ablation(rows: List[dict], *, small_scale: float,
                                metric: str = "AP_small", min_gain: float = 0.0) -> str:
    """Assignment: show with your own runs that an extra small anchor scale helps small objects.

    ``rows`` is a results table as :func:`frcnn_lite.book.experiments.run_grid`
    returns it (dicts with ``"config"`` holding ``"scales"``, and ``metric``).
    It must hold a run with ``small_scale`` among its scales and one without
    it, otherwise identical; passes when ``metric`` rises by more than
    ``min_gain`` (the direction the paper predicts, §4.2: 64² anchors for COCO's
    small objects).
    """
    if not isinstance(rows, (list, tuple)) or not rows:
        raise WrongAnswer("pass the list of result rows (dicts) that run_grid returned.")
    for i, row in enumerate(rows):
        if "config" not in row or "scales" not in row["config"] or metric not in row:
            raise WrongAnswer(f"row {i} must have row['config']['scales'] and row[{metric!r}]; "
                              f"got keys {sorted(row)}.")
    def scales_of(row):  # a run with scales=None used its checkpoint's, kept in "scales_used"
        return [float(s) for s in (row["config"]["scales"] or row.get("scales_used") or [])]

    with_small = [r for r in rows if float(small_scale) in scales_of(r)]
    without = [r for r in rows if r not in with_small]
    if not with_small or not without:
        raise WrongAnswer(f"need a run with the {small_scale:g} px scale and one without it; got "
                          f"{len(with_small)} with and {len(without)} without.")

    def others(row):
        config = dict(row["config"])
        config.pop("scales")
        scales = [s for s in scales_of(row) if s != float(small_scale)]
        return sorted((k, repr(v)) for k, v in config.items()), scales

    pairs = [(a, b) for a in with_small for b in without if others(a) == others(b)]
    if not pairs:
        raise WrongAnswer(f"no pair of runs differs only by the {small_scale:g} px scale: keep "
                          f"every other setting (ratios, iterations, seed, ...) the same, so the "
                          f"comparison measures the anchors alone.")
    a, b = pairs[0]
    gain = float(a[metric]) - float(b[metric])
    if not math.isfinite(gain):
        raise WrongAnswer(f"{metric} is NaN in one of the runs: the evaluation set has no boxes in "
                          f"that size range; use the small-objects dataset.")
    if gain <= min_gain:
        raise WrongAnswer(f"adding the {small_scale:g} px scale changed {metric} by {gain:+.3f} "
                          f"(from {float(b[metric]):.3f} to {float(a[metric]):.3f}); the paper "
                          f"predicts a gain above {min_gain:g}. Check that the small objects are "
                          f"smaller than your other scales and that both runs trained as long.")
    return _correct(f"the {small_scale:g} px anchors raise {metric} from {float(b[metric]):.3f} "
                    f"to {float(a[metric]):.3f} ({gain:+.3f}).")
