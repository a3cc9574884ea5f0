"""Evaluation: VOC AP (2007 11-point and all-point), COCO AP via pycocotools,
proposal recall, and a breakdown of a detector's errors.

The paper reports mAP at IoU 0.5 on PASCAL VOC 2007 test with that year's
11-point rule (§4.1; VOC 2012 results are scored by its server with the area
rule), COCO's AP averaged over IoU 0.50:0.05:0.95 and AP@0.5 (§4.2, Table 11),
and the recall of proposals against IoU (§4.1, Fig. 4).

Formats: a prediction is ``{"boxes": (D, 4), "labels": (D,) int64 in 1..K,
"scores": (D,) in [0, 1]}``; a target is ``{"boxes": (G, 4), "labels": (G,)
int64}`` with an optional ``"difficult": (G,) bool`` (VOC's hard objects,
neither rewarded nor penalised). Boxes follow :mod:`frcnn_lite.boxes`: IoU is
computed without VOC's ``+ 1`` because our coordinates are continuous.

Shape glossary: ``I`` images; ``D`` detections, ``G`` ground-truth boxes and
``P`` proposals of one image; ``K`` classes; ``T`` IoU thresholds; ``n``
detections of one class over the whole set (one point of a PR curve each).

Built in chapter 10 (``proposal_recall`` is used in chapter 6); the
pycocotools plumbing of :func:`evaluate_coco` is in :mod:`frcnn_lite.coco_eval`.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from frcnn_lite.boxes import box_iou
from frcnn_lite.checks import check_boxes, check_detection_boxes, check_prediction, check_target
from frcnn_lite.coco_eval import COCO_METRICS  # noqa: F401 (it was defined here)
from frcnn_lite.coco_eval import coco_stats, per_class_ap, run_cocoeval, to_coco

# Kinds of detection in error_breakdown, in order of precedence (index = code).
ERROR_KINDS = ("correct", "duplicate", "localisation", "classification", "background", "ignored")
# IoU thresholds of the paper's Fig. 4 (recall vs IoU): 0.5, 0.55, ..., 0.95.
RECALL_IOUS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def voc_ap(recall, precision, use_07_metric: bool = True) -> float:
    """Average precision of one class from its PR curve, by PASCAL VOC's rules.

    ``recall (n,)`` (non-decreasing) and ``precision (n,)``: point ``i`` is
    the top ``i + 1`` detections of the class, ranked by descending score.
    Both rules read the precision *envelope*: at recall ``r``, the best
    precision reached at any recall ``>= r``.

    - ``use_07_metric=True`` (VOC 2007's rule, by which the paper's VOC 2007
      results are scored, §4.1): the mean of the envelope at the 11 recalls
      0, 0.1, ..., 1 (0 beyond the last recall).
    - ``use_07_metric=False`` (VOC 2010 and later): the exact area under the
      envelope, summed over the recalls where the curve steps.

    The tenths are exact (``i / 10``), so a recall of exactly 0.3 counts at
    0.3; py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` drifts to
    0.30000000000000004.
    """
    recall, precision = _check_pr_curve(recall, precision)
    if use_07_metric:
        tenths = np.arange(11) / 10.0  # (11,)
        reached = recall[None, :] >= tenths[:, None]  # (11, n)
        best = np.where(reached, precision[None, :], 0.0)  # (11, n)
        return float(best.max(axis=1, initial=0.0).mean())  # envelope at tenths
    mrec = np.concatenate(([0.0], recall, [1.0]))  # (n + 2,) sentinels
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best rightward
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_voc(predictions: Sequence[dict], targets: Sequence[dict], num_classes: int,
                 iou_thresh: float = 0.5, use_07_metric: bool = True,
                 class_names: Optional[Sequence[str]] = None) -> dict:
    """PASCAL VOC evaluation of detections on ``I`` images: the VOC devkit's mAP (the
    benchmark's metric, by which the paper reports its VOC results, §4.1).

    Per class, detections from all images are ranked by descending score (ties
    keep image order). Walking down the list, a detection is a true positive
    when its best-overlapping ground-truth box of the same class (in its image)
    has IoU ``>= iou_thresh`` (the MATLAB devkit's ``>=``) and was not taken by a
    higher-scoring detection; otherwise it is a false positive. As in the
    devkit, a detection whose best box is already taken is a duplicate even if
    another free box overlaps it enough. A detection whose best box is
    ``difficult`` is ignored, and difficult boxes do not count towards recall.

    Returns a dict: ``"mAP"`` (mean AP over classes with ground truth);
    ``"ap"``, ``"num_gt"``, ``"num_det"`` ``{class name: value}``; ``"curves"``
    ``{name: {"precision", "recall", "scores", "tp"}}`` NumPy ``(n,)``;
    ``"undefined"`` (names of classes without ground truth: AP NaN, left out of
    the mean) and ``"notes"`` saying so; ``"matches"``, one dict per image with
    tensors ``"tp"``, ``"ignored"`` (D,) bool, ``"gt_index"`` (D,) int64 (the
    best same-class box, -1 if none), ``"iou"`` (D,) and ``"gt_found"`` (G,) bool.
    """
    preds, gts, names = _check_inputs(predictions, targets, num_classes, class_names,
                                      iou_thresh=iou_thresh)
    matches = [_match_image(p, t, iou_thresh) for p, t in zip(preds, gts)]
    labels = _cat([p["labels"] for p in preds], torch.int64).numpy()  # (sum D,)
    scores = _cat([p["scores"] for p in preds], torch.float64).numpy()
    tp = _cat([m["tp"] for m in matches], torch.bool).numpy()
    ignored = _cat([m["ignored"] for m in matches], torch.bool).numpy()
    rank = np.argsort(-scores, kind="stable")  # one ranking for every class
    gt_labels = _cat([t["labels"][~t["difficult"]] for t in gts], torch.int64).numpy()
    result = {"ap": {}, "num_gt": {}, "num_det": {}, "curves": {}, "undefined": [], "notes": [],
              "matches": matches, "iou_thresh": iou_thresh, "use_07_metric": use_07_metric}
    for k, name in enumerate(names, start=1):
        mine = rank[(labels[rank] == k) & ~ignored[rank]]  # (n,) this class, by score
        hits = tp[mine]
        num_gt = int((gt_labels == k).sum())
        cum_tp = np.cumsum(hits)
        precision = cum_tp / np.arange(1, len(hits) + 1)
        recall = cum_tp / num_gt if num_gt else np.full(len(hits), np.nan)
        ap = voc_ap(recall, precision, use_07_metric) if num_gt else math.nan
        if not num_gt:
            result["undefined"].append(name)
            result["notes"].append(
                f"class {name!r} (label {k}) has no ground-truth boxes (difficult ones aside): "
                f"recall and AP are undefined (NaN) and it is left out of mAP; its {len(hits)} "
                f"detections are all false positives.")
        result["ap"][name], result["num_gt"][name], result["num_det"][name] = ap, num_gt, len(hits)
        result["curves"][name] = {"precision": precision, "recall": recall,
                                  "scores": scores[mine], "tp": hits}
    defined = [ap for name, ap in result["ap"].items() if name not in result["undefined"]]
    result["mAP"] = float(np.mean(defined)) if defined else math.nan
    if not defined:
        result["notes"].append("no class has ground-truth boxes: mAP is undefined (NaN).")
    return result


def evaluate_coco(predictions: Sequence[dict], targets: Sequence[dict],
                  num_classes: int, *,
                  class_names: Optional[Sequence[str]] = None) -> dict:
    """COCO evaluation (§4.2, Table 11) by pycocotools' ``COCOeval``, in memory.

    Our boxes become COCO's ``[x, y, w, h]``; image ids are positions in the
    list, category ids the labels 1..K, a box's area is ``w * h`` (it decides
    small < 32², medium, large > 96²). ``difficult`` boxes become ``iscrowd``
    regions, COCO's only way to ignore a box. Every number comes from
    pycocotools; its prints are captured into ``"summary"``.

    Returns ``"stats"`` ``{name: value}`` for :data:`COCO_METRICS` (AP =
    AP@[.5:.95], AP50, AP75, AP small/medium/large, AR with 1/10/100
    detections per image, AR small/medium/large); a value pycocotools
    reports as -1 (nothing to measure) is NaN and explained in ``"notes"``;
    ``"per_class"`` ``{name: {"AP", "AP50"}}`` read from
    ``COCOeval.eval["precision"]`` (NaN for a class without ground truth);
    ``"summary"`` (pycocotools' table); ``"coco_eval"`` (the ``COCOeval``
    object, for its precision arrays).
    """
    preds, gts, names = _check_inputs(predictions, targets, num_classes,
                                      class_names)
    ground_truth, detections = to_coco(preds, gts, names)
    coco_eval, summary = run_cocoeval(ground_truth, detections)
    stats, notes = coco_stats(coco_eval)
    return {"stats": stats, "per_class": per_class_ap(coco_eval, names),
            "notes": notes, "summary": summary, "coco_eval": coco_eval}


def best_overlaps(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                  top_n: Optional[int] = None) -> torch.Tensor:
    """Best IoU of every ground-truth box with the first ``top_n`` proposals of its image.

    ``proposals``: one ``(P, 4)`` tensor per image, ranked by objectness (the
    proposal layer's order, §3.3); ``gt_boxes``: one ``(G, 4)`` per image.
    Returns ``(sum G,)`` on the CPU, 0 for a box whose image has no proposals.
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"got proposals for {len(proposals)} images but ground truth for "
                         f"{len(gt_boxes)}; pass one (P, 4) and one (G, 4) tensor per image.")
    if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be a positive int (proposals kept per image) or None, "
                         f"got {top_n!r}.")
    best = []
    for i, (props, gt) in enumerate(zip(proposals, gt_boxes)):
        if isinstance(gt, dict):
            raise TypeError(f"gt_boxes[{i}] is a target dict; pass its (G, 4) boxes: t['boxes'].")
        check_boxes(gt, f"gt_boxes[{i}]")
        check_detection_boxes(props, f"proposals[{i}]")
        props = props.detach().cpu()[:top_n]  # (min(P, top_n), 4)
        iou = box_iou(props, gt.detach().cpu(), validate=False).numpy()  # (P, G)
        best.append(iou.max(axis=0, initial=0.0))  # NumPy: see _match_image
    return torch.from_numpy(np.concatenate(best)) if best else torch.zeros(0)


def proposal_recall(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                    iou_thresholds: Sequence[float] = RECALL_IOUS,
                    top_n: Optional[int] = None) -> torch.Tensor:
    """Recall ``(T,)``: the fraction of ground-truth boxes (all images together)
    that at least one of the first ``top_n`` proposals of their image covers
    with IoU ``>= t``, for each ``t`` in ``iou_thresholds`` (default 0.5,
    0.55, ..., 0.95), as in the paper's Fig. 4 (recall vs IoU, §4.1).
    """
    thresholds = torch.as_tensor(iou_thresholds, dtype=torch.float32).reshape(-1)  # (T,)
    if len(thresholds) == 0 or bool(((thresholds <= 0) | (thresholds > 1)).any()):
        raise ValueError(f"iou_thresholds must be values in (0, 1], got {list(iou_thresholds)}.")
    best = best_overlaps(proposals, gt_boxes, top_n)  # (sum G,)
    if len(best) == 0:
        raise ValueError("there are no ground-truth boxes, so recall is undefined.")
    return (best[None, :] >= thresholds[:, None]).double().mean(dim=1)  # (T,)


def error_breakdown(predictions: Sequence[dict], targets: Sequence[dict],
                    num_classes: int, *, iou_thresh: float = 0.5,
                    bg_iou: float = 0.1, score_thresh: float = 0.0,
                    class_names: Optional[Sequence[str]] = None) -> dict:
    """What each detection scoring ``>= score_thresh`` is, and what was missed.

    After VOC matching at ``iou_thresh`` (as :func:`evaluate_voc`), each kept
    detection gets the first kind that fits (after Hoiem et al., 2012):

    - ``correct``: a true positive.
    - ``duplicate``: right class, IoU ``>= iou_thresh``, box already taken.
    - ``localisation``: right class, best IoU in ``[bg_iou, iou_thresh)``.
    - ``classification``: IoU ``>= bg_iou`` with a box of another class,
      ``< bg_iou`` with every box of its own class.
    - ``background``: IoU ``< bg_iou`` with every ground-truth box.
    - ``ignored``: matched a ``difficult`` box.

    ``missed`` are non-difficult boxes no kept detection found. Returns
    ``"counts"`` ``{kind: int}`` (:data:`ERROR_KINDS` and ``"missed"``),
    ``"kinds"`` one ``(D,)`` int64 tensor per image (index into ERROR_KINDS,
    -1 below ``score_thresh``), ``"missed"`` one ``(G,)`` bool per image.
    """
    preds, gts, _ = _check_inputs(predictions, targets, num_classes,
                                  class_names, iou_thresh, bg_iou)
    kinds, missed = [], []
    for p, t in zip(preds, gts):
        keep = p["scores"] >= score_thresh  # (D,)
        kept = {key: p[key][keep] for key in ("boxes", "labels", "scores")}
        match = _match_image(kept, t, iou_thresh)
        codes = torch.full((len(keep),), -1, dtype=torch.int64)  # (D,)
        codes[keep] = _error_kinds(match, iou_thresh, bg_iou)
        kinds.append(codes)
        missed.append(~match["gt_found"] & ~t["difficult"])  # (G,)
    every = torch.cat(kinds) if kinds else torch.zeros(0, dtype=torch.int64)
    counts = {kind: int((every == code).sum())
              for code, kind in enumerate(ERROR_KINDS)}
    counts["missed"] = int(sum(int(m.sum()) for m in missed))
    return {"counts": counts, "kinds": kinds, "missed": missed}


# -- helpers -----------------------------------------------------------------------------
def _match_image(pred: dict, target: dict, iou_thresh: float) -> dict:
    """VOC matching within one image (D detections, G boxes); see :func:`evaluate_voc`.

    Runs in NumPy: evaluation is host-side bookkeeping on small arrays, where
    torch's threaded reductions cost milliseconds each on a busy CPU.
    """
    iou = box_iou(pred["boxes"], target["boxes"], validate=False).numpy()  # (D, G)
    labels, scores = pred["labels"].numpy(), pred["scores"].numpy()  # (D,)
    difficult = target["difficult"].numpy()  # (G,)
    num_det, num_gt = iou.shape
    same = labels[:, None] == target["labels"].numpy()[None, :]  # (D, G) same class
    same_iou = np.where(same, iou, -1.0)
    other_iou = np.where(same, 0.0, iou).max(axis=1, initial=0.0)  # (D,) best other-class IoU
    gt_index = same_iou.argmax(axis=1) if num_gt else np.zeros(num_det, np.int64)  # first on ties
    best_iou = same_iou.max(axis=1, initial=-1.0)  # (D,), -1: no box of that class
    gt_index = np.where(best_iou >= 0, gt_index, -1)
    best_iou = np.maximum(best_iou, 0.0)
    hit = best_iou >= iou_thresh
    ignored = hit & difficult[gt_index] if num_gt else np.zeros(num_det, bool)
    claim = hit & ~ignored  # (D,) wants its box
    # Greedy in score order: the first claimant of each box wins, later ones are duplicates.
    order = np.argsort(-scores, kind="stable")  # (D,)
    claimants = order[claim[order]]  # (C,) claimants by score
    first = np.unique(gt_index[claimants], return_index=True)[1]
    tp = np.zeros(num_det, bool)
    tp[claimants[first]] = True
    gt_found = np.zeros(num_gt, bool)
    gt_found[gt_index[tp]] = True
    as_tensors = {"tp": tp, "ignored": ignored, "gt_index": gt_index, "iou": best_iou,
                  "other_iou": other_iou, "gt_found": gt_found}
    return {key: torch.from_numpy(np.asarray(value)) for key, value in as_tensors.items()}


def _error_kinds(match: dict, iou_thresh: float, bg_iou: float) -> torch.Tensor:
    """``(D,)`` int64 index into ERROR_KINDS of each matched detection (see
    :func:`error_breakdown`): the rules run from the weakest up, each later one
    overriding, so a detection ends with the first kind of ERROR_KINDS that fits."""
    same, code = match["iou"], ERROR_KINDS.index  # same: best same-class IoU
    kind = torch.full((len(same),), code("background"), dtype=torch.int64)
    kind[match["other_iou"] >= bg_iou] = code("classification")
    kind[(same >= bg_iou) & (same < iou_thresh)] = code("localisation")
    kind[same >= iou_thresh] = code("duplicate")
    kind[match["tp"]] = code("correct")
    kind[match["ignored"]] = code("ignored")
    return kind


def _check_inputs(predictions, targets, num_classes, class_names,
                  iou_thresh: Optional[float] = None, bg_iou: Optional[float] = None
                  ) -> Tuple[List[dict], List[dict], Tuple[str, ...]]:
    """Validate and copy to the CPU; targets gain ``"difficult"`` (all False if absent).

    ``iou_thresh`` (and ``bg_iou``, for :func:`error_breakdown`) are checked
    last, when given: ``0 < iou_thresh <= 1`` and ``0 <= bg_iou < iou_thresh``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (K, background excluded), "
                         f"got {num_classes!r}.")
    names = tuple(class_names) if class_names is not None else \
        tuple(str(k) for k in range(1, num_classes + 1))
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but num_classes is {num_classes}; "
                         f"give one name per class 1..K (no background).")
    if isinstance(predictions, dict) or isinstance(targets, dict):
        raise TypeError("predictions and targets must be lists with one dict per image, "
                        "not a dict.")
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets; pass one "
                         f"prediction dict per image, in the same order as the targets.")
    preds, gts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        check_prediction(p, num_classes, f"predictions[{i}]")
        preds.append({key: p[key].detach().cpu() for key in ("boxes", "labels", "scores")})
        check_target(t, num_classes, f"targets[{i}]")
        difficult = t.get("difficult")
        if difficult is None:
            difficult = torch.zeros(len(t["boxes"]), dtype=torch.bool)
        elif not isinstance(difficult, torch.Tensor) or difficult.dtype != torch.bool \
                or difficult.shape != (len(t["boxes"]),):
            raise ValueError(f"targets[{i}]['difficult'] must be a bool tensor of shape "
                             f"({len(t['boxes'])},), one flag per box.")
        gts.append({"boxes": t["boxes"].detach().cpu(), "labels": t["labels"].detach().cpu(),
                    "difficult": difficult.detach().cpu()})
    if bg_iou is not None and not 0.0 <= bg_iou < iou_thresh <= 1.0:
        raise ValueError(f"need 0 <= bg_iou < iou_thresh <= 1, got bg_iou={bg_iou}, "
                         f"iou_thresh={iou_thresh}.")
    if iou_thresh is not None and not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must lie in (0, 1], got {iou_thresh}; VOC uses 0.5.")
    return preds, gts, names


def _check_pr_curve(recall, precision) -> Tuple[np.ndarray, np.ndarray]:
    """``recall``, ``precision`` as float64 ``(n,)`` arrays, checked: finite, in [0, 1],
    the same length, recall non-decreasing."""
    recall = _curve_array(recall, "recall")
    precision = _curve_array(precision, "precision")
    if recall.shape != precision.shape:
        raise ValueError(f"recall and precision must have the same length (one point per "
                         f"detection), got {recall.shape[0]} and {precision.shape[0]}.")
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must be non-decreasing: rank detections by descending score and "
                         "take cumulative sums of true positives.")
    return recall, precision


def _curve_array(values, name: str) -> np.ndarray:
    """A PR-curve array ``(n,)`` as float64 NumPy, checked to be finite and in [0, 1]."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per ranked detection), "
                         f"got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf; recall is undefined for a class without "
                         f"ground truth, so such a class has no AP.")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got values in "
                         f"[{array.min():.3g}, {array.max():.3g}].")
    return array


def _cat(tensors: List[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([t.to(dtype) for t in tensors]) if tensors else torch.zeros(0, dtype=dtype)
