"""Kernel-free explorers: figures whose controls work in the static rendered book.

The ipywidgets explorers of :mod:`frcnn_lite.book.widgets` need a running
kernel, which the rendered book does not have. The explorers here compute every
state in the notebook (one per combination of the controls' values) and hand
them to Bokeh; in the browser a control only picks which precomputed rows are
drawn. The picking is declarative (one ``GroupFilter`` per control, linked to
its slider or buttons with ``js_link``), so no JavaScript is written by hand.

- :class:`Explorer`: an image with state-dependent boxes, points, a text line
  and an optional bar chart; displays as HTML (Bokeh) with a PNG of the default
  state inside for viewers that run no scripts (GitHub, an untrusted Jupyter).
- :func:`anchor_explorer` (chapter 3), :func:`labelling_explorer` (chapter 5),
  :func:`proposal_explorer` (chapter 6), :func:`detection_explorer` (chapter 9).

The book's Sphinx extension (``tools/book_assets.py``) ships BokehJS with the
site and hides the PNG there. Nothing outside ``frcnn_lite.book`` imports this.
"""

from __future__ import annotations

import base64
import io
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from frcnn_lite.anchors import (IGNORED, NEGATIVE, POSITIVE, anchor_coverage, base_anchors,
                                grid_anchors, label_anchors)
from frcnn_lite.boxes import box_iou
from frcnn_lite.book.viz import CLASS_COLORS, COLORS, draw_boxes, show_image
from frcnn_lite.book.widgets import coverage_summary, default_feature_size
from frcnn_lite.rpn import generate_proposals
from frcnn_lite.book.explorer import (CSS_CLASS, Control, Explorer, buttons, slider)  # noqa: F401


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.2g}" if v < 1 else f"{v:g}" for v in values)


def anchor_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, coverage_boxes: torch.Tensor,
                    scale_sets: Sequence[Sequence[float]], ratio_sets: Sequence[Sequence[float]],
                    strides: Sequence[int] = (8, 16, 24, 32), *, default=(0, 0, 16)) -> Explorer:
    """Chapter 3: scales, ratios and stride; anchor count and dataset coverage update.

    Draws the anchors of the cells holding each ground-truth box's centre and
    every anchor centre; the caption gives the count and the coverage summary
    of ``coverage_boxes`` ``(M, 4)`` (best-anchor IoU, §3.1.1), the bars its
    histogram. ``default`` is (scale set index, ratio set index, stride).
    """
    size = tuple(image.shape[-2:])
    controls = [buttons("scales", "scales", [_fmt(s) for s in scale_sets], default[0]),
                buttons("ratios", "ratios (h/w)", [_fmt(r) for r in ratio_sets], default[1]),
                slider("stride", "stride (px)", strides, default[2])]
    ex = Explorer(image, controls, title="anchors at the objects' cells", gt_boxes=gt_boxes,
                  bars_title=f"best-anchor IoU of {len(coverage_boxes)} dataset boxes",
                  bars_xlabel="IoU with the best anchor")
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    for state in ex.states():
        scales, ratios = scale_sets[state["scales"]], ratio_sets[state["ratios"]]
        stride, base = state["stride"], base_anchors(scales, ratios)
        fh, fw = default_feature_size(size, stride)
        anchors = grid_anchors((fh, fw), stride, base)  # (fh * fw * A, 4)
        cells = (centres // stride).long()  # (G, 2) as (j, i)
        first = (cells[:, 1] * fw + cells[:, 0]) * len(base)  # row, then column, then anchor
        index = (first[:, None] + torch.arange(len(base))[None]).reshape(-1)
        ex.boxes(state, anchors[index], "anchor", width=1.0)
        ex.points(state, (anchors[:: len(base), :2] + anchors[:: len(base), 2:]) / 2, "anchor",
                  size=2.0)
        best = anchor_coverage(anchors, coverage_boxes, size)
        inside = int(((anchors[:, :2] >= 0) & (anchors[:, 2] <= size[1])[:, None]
                      & (anchors[:, 3] <= size[0])[:, None]).all(dim=1).sum())
        ex.text(state, f"{len(anchors)} anchors = {fh}x{fw} cells x {len(base)} per cell, "
                       f"{inside} inside the image\ncoverage: {coverage_summary(best)}")
        hist = torch.histc(best, bins=10, min=0, max=1).tolist()
        ex.bars(state, [0.05 + 0.1 * k for k in range(10)], hist)
    return ex


def labelling_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor,
                       fg_values: Sequence[int] = range(50, 95, 5),
                       bg_values: Sequence[int] = range(10, 55, 5), *, default=(70, 30),
                       band: float = 0.1) -> Explorer:
    """Chapter 5: the IoU thresholds fg_iou and bg_iou (in %) move anchors between labels.

    Draws the positives (red), the ignored anchors inside the image (grey) and
    the negatives within ``band`` of ``bg_iou`` (blue: the next to become
    ignored; the others are counted only), labelled by :func:`label_anchors`
    (§3.1.2).
    """
    size = tuple(image.shape[-2:])
    controls = [slider("fg", "positive if IoU >= (%)", fg_values, default[0]),
                slider("bg", "negative if IoU < (%)", bg_values, default[1])]
    ex = Explorer(image, controls, title="anchor labels", gt_boxes=gt_boxes)
    best = box_iou(anchors, gt_boxes).max(dim=1).values  # (N,)
    for state in ex.states():
        labels, _ = label_anchors(anchors, gt_boxes, size, fg_iou=state["fg"] / 100,
                                  bg_iou=state["bg"] / 100)
        inside = ((anchors[:, :2] >= 0).all(dim=1) & (anchors[:, 2] <= size[1])
                  & (anchors[:, 3] <= size[0]))
        near = (labels == NEGATIVE) & (best >= state["bg"] / 100 - band)
        ex.boxes(state, anchors[near], "negative", width=0.8, alpha=0.7)
        ex.boxes(state, anchors[(labels == IGNORED) & inside], "ignored", width=1.0)
        ex.boxes(state, anchors[labels == POSITIVE], "positive", width=1.5)
        counts = [int((labels == v).sum()) for v in (POSITIVE, NEGATIVE, IGNORED)]
        note = "  (bg_iou > fg_iou: no ignored band)" if state["bg"] > state["fg"] else ""
        ex.text(state, f"{counts[0]} positive (red), {counts[1]} negative, {counts[2]} ignored"
                       f"{note}\nblue: the {int(near.sum())} negatives with IoU within "
                       f"{band:g} of bg_iou\ngrey: {int(((labels == IGNORED) & inside).sum())}"
                       f" ignored inside the image ({int((~inside).sum())} cross the border)")
    return ex


def proposal_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor,
                      objectness: torch.Tensor, deltas: torch.Tensor, *,
                      pre_values: Sequence[int] = (100, 300, 1000, 6000),
                      nms_values: Sequence[int] = range(30, 110, 10),
                      post_values: Sequence[int] = (10, 30, 100), min_size: float = 4.0,
                      default=(3, 70, 1)) -> Explorer:
    """Chapter 6: top-N before NMS, the NMS IoU threshold (in %) and top-N after NMS.

    Every state runs :func:`generate_proposals` (§3.3) on one image's
    ``anchors (N, 4)``, ``objectness (N,)`` and ``deltas (N, 4)``; the caption
    gives the recall of the ground-truth boxes at IoU 0.5. ``default`` is (pre
    index, NMS %, post index); NMS at 100% keeps every box.
    """
    size = tuple(image.shape[-2:])
    controls = [buttons("pre", "top-N before NMS", [str(v) for v in pre_values], default[0]),
                slider("nms", "NMS IoU threshold (%)", nms_values, default[1]),
                buttons("post", "top-N after NMS", [str(v) for v in post_values], default[2])]
    ex = Explorer(image, controls, title="proposals", gt_boxes=gt_boxes)
    for state in ex.states():
        pre, post = pre_values[state["pre"]], post_values[state["post"]]
        boxes, _ = generate_proposals(anchors, objectness, deltas, size, pre_nms_top_n=pre,
                                      post_nms_top_n=post, nms_thresh=state["nms"] / 100,
                                      min_size=min_size)
        ex.boxes(state, boxes, "proposal", width=1.0)
        found = 0
        if len(gt_boxes) and len(boxes):
            found = int((box_iou(boxes, gt_boxes).max(dim=0).values >= 0.5).sum())
        ex.text(state, f"{len(boxes)} proposals (best {pre} by objectness, NMS at "
                       f"{state['nms'] / 100:.1f}, first {post} kept)\n"
                       f"recall at IoU 0.5: {found} of {len(gt_boxes)} objects")
    return ex


def detection_explorer(model, image: torch.Tensor, target: dict, class_names: Sequence[str], *,
                       score_values: Sequence[int] = range(10, 100, 10),
                       nms_values: Sequence[int] = range(10, 110, 10),
                       default=(50, 30)) -> Explorer:
    """Chapter 9: the score threshold and the per-class NMS threshold (both in %).

    Runs ``model`` (a :class:`FasterRCNN` in eval mode) once per NMS threshold
    with its ``roi_heads.nms_thresh`` set to it and ``score_thresh`` at the
    smallest slider value (restored afterwards), then keeps the detections
    scoring at least the slider's threshold (§3.2, the paper's test-time
    post-processing). NMS at 100% keeps every box.
    """
    controls = [slider("score", "score threshold (%)", score_values, default[0]),
                slider("nms", "per-class NMS IoU (%)", nms_values, default[1])]
    ex = Explorer(image, controls, title="detections", gt_boxes=target["boxes"])
    heads = model.roi_heads
    saved = heads.score_thresh, heads.nms_thresh
    runs = {}
    try:
        heads.score_thresh = min(score_values) / 100 - 1e-6
        for t in nms_values:
            heads.nms_thresh = t / 100
            with torch.no_grad():
                runs[t] = {k: v.cpu() for k, v in model([image.to(_device_of(model))])[0].items()}
    finally:
        heads.score_thresh, heads.nms_thresh = saved
    for state in ex.states():
        det = runs[state["nms"]]
        keep = det["scores"] >= state["score"] / 100
        labels, scores = det["labels"][keep].tolist(), det["scores"][keep].tolist()
        for c in sorted(set(labels)):
            rows = [i for i, label in enumerate(labels) if label == c]
            ex.boxes(state, det["boxes"][keep][rows], color=CLASS_COLORS[(c - 1) % 10],
                     labels=[f"{class_names[c - 1]} {scores[i]:.2f}" for i in rows],
                     key=f"class{c}")
        ex.text(state, f"{len(labels)} detections with score >= {state['score'] / 100:.2f} "
                       f"after per-class NMS at {state['nms'] / 100:.1f}\n"
                       f"(at most {heads.detections_per_img} per image; ground truth dashed)")
    return ex


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
