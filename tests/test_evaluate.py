"""Tests for frcnn_lite.evaluate: VOC AP against a transcription of the VOC devkit,
COCO numbers against pycocotools run directly, hand-built matching cases, proposal
recall, the error breakdown, and every bad input the chapter promises to catch."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou as tv_box_iou

from frcnn_lite.evaluate import (COCO_METRICS, ERROR_KINDS, best_overlaps, error_breakdown,
                                 evaluate_coco, evaluate_voc, proposal_recall, voc_ap)


# -- references: the VOC devkit's definitions written as plain loops ---------------------------
def devkit_ap(rec, prec, use_07_metric):
    """VOCevaldet.m / py-faster-rcnn's voc_ap, transcribed loop by loop.

    The 11 recall levels are the exact tenths i / 10 (the devkit's 0:0.1:1 means
    these; np.arange(0, 1.1, 0.1) would drift to 0.30000000000000004)."""
    rec, prec = list(rec), list(prec)
    if use_07_metric:
        ap = 0.0
        for i in range(11):
            t = i / 10
            p = 0.0
            for r, q in zip(rec, prec):
                if r >= t and q > p:
                    p = q
            ap += p / 11
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = 0.0
    for i in range(len(mrec) - 1):
        if mrec[i + 1] != mrec[i]:
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
    return ap


def iou_loop(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def devkit_eval(predictions, targets, k, iou_thresh, use_07_metric):
    """py-faster-rcnn's voc_eval for class k, one detection at a time (>= as in VOCevaldet.m,
    no +1 in widths: our coordinates are continuous)."""
    gt = {}
    npos = 0
    for i, t in enumerate(targets):
        keep = t["labels"] == k
        diff = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))[keep]
        gt[i] = {"boxes": t["boxes"][keep].tolist(), "difficult": diff.tolist(),
                 "det": [False] * int(keep.sum())}
        npos += int((~diff).sum())
    dets = []
    for i, p in enumerate(predictions):
        for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
            if label == k:
                dets.append((score, i, box))
    dets.sort(key=lambda d: -d[0])
    tp, fp = [], []
    for score, i, box in dets:
        r = gt[i]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(r["boxes"]):
            ov = iou_loop(box, g)
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax >= iou_thresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp.append(1), fp.append(0)
                    r["det"][jmax] = True
                else:
                    tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_ap(rec, prec, use_07_metric)


# -- synthetic data ---------------------------------------------------------------------------
def random_set(seed, num_images=12, num_classes=3, difficult=True, disjoint=False):
    """Ground truth and a noisy detector: jittered copies of GT, wrong labels, random boxes."""
    g = np.random.default_rng(seed)
    targets, predictions = [], []
    for i in range(num_images):
        n = int(g.integers(0, 6))
        if disjoint:  # boxes in separate cells of a 4x4 grid, so no two GT overlap
            cells = g.choice(16, size=n, replace=False)
            xy = np.stack([(cells % 4) * 64 + g.uniform(0, 16, n), (cells // 4) * 64 + g.uniform(0, 16, n)], 1)
            wh = g.uniform(16, 44, (n, 2))
        else:
            xy, wh = g.uniform(0, 200, (n, 2)), g.uniform(8, 80, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = g.integers(1, num_classes + 1, n)
        target = {"boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64)}
        if difficult:
            target["difficult"] = torch.tensor(g.random(n) < 0.15)
        targets.append(target)
        boxes, det_labels = [], []
        for box, label in zip(gt, labels):
            for _ in range(int(g.integers(0, 3))):  # 0-2 detections per object
                w, h = box[2] - box[0], box[3] - box[1]
                jitter = g.normal(0, 0.12, 4) * np.array([w, h, w, h])
                b = box + jitter
                b[2:] = np.maximum(b[2:], b[:2] + 1)
                boxes.append(b)
                det_labels.append(label if g.random() < 0.85 else int(g.integers(1, num_classes + 1)))
        for _ in range(int(g.integers(0, 4))):  # background detections
            xy1 = g.uniform(0, 220, 2)
            boxes.append(np.concatenate([xy1, xy1 + g.uniform(5, 40, 2)]))
            det_labels.append(int(g.integers(1, num_classes + 1)))
        predictions.append({"boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor(det_labels, dtype=torch.int64),
                            "scores": torch.tensor(g.random(len(boxes)), dtype=torch.float32)})
    return predictions, targets


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def pred(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def tgt(boxes, labels, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return t


# -- voc_ap ------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_07_metric", [True, False])
def test_voc_ap_matches_devkit_on_random_curves(use_07_metric):
    g = np.random.default_rng(0)
    for trial in range(300):
        n = int(g.integers(0, 40))
        npos = int(g.choice([1, 2, 5, 10, 20, int(g.integers(1, 50))]))  # 5, 10, 20 hit tenths
        hits = (g.random(n) < g.random()).astype(float)
        cum = np.cumsum(hits)
        cum = np.minimum(cum, npos)  # recall cannot pass 1
        rec = cum / npos
        prec = cum / np.arange(1, n + 1)
        assert voc_ap(rec, prec, use_07_metric) == pytest.approx(
            devkit_ap(rec, prec, use_07_metric), abs=1e-12), (trial, rec, prec)
    for trial in range(200):  # continuous curves: any precision, sorted recall
        n = int(g.integers(1, 30))
        rec, prec = np.sort(g.random(n)), g.random(n)
        assert voc_ap(torch.tensor(rec), prec, use_07_metric) == pytest.approx(
            devkit_ap(rec, prec, use_07_metric), abs=1e-12)


def test_voc_ap_hand_values():
    # one true positive out of two objects: precision 1 up to recall 0.5
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11)
    assert voc_ap([0.5], [1.0], use_07_metric=False) == pytest.approx(0.5)
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == pytest.approx(1.0)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    # envelope: the dip at recall 0.5 is lifted by the later 2/3
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], False) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc07_counts_a_recall_of_exactly_three_tenths():
    # recall 3/10 reaches the level 0.3; np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004 would not.
    assert voc_ap([0.3], [1.0], True) == pytest.approx(4 / 11)


@pytest.mark.parametrize("rec, prec, match", [
    ([0.1, 0.2], [1.0], "same length"),
    ([0.5, 0.2], [1.0, 1.0], "non-decreasing"),
    ([0.1, float("nan")], [1.0, 1.0], "NaN"),
    ([0.1, 1.5], [1.0, 1.0], r"\[0, 1\]"),
    ([[0.1, 0.2]], [[1.0, 1.0]], "1-D"),
])
def test_voc_ap_bad_input(rec, prec, match):
    with pytest.raises(ValueError, match=match):
        voc_ap(rec, prec, True)


# -- evaluate_voc: hand-built cases ------------------------------------------------------------
def test_perfect_detector_gets_ap_one():
    targets = [tgt([box(0, 0, 10, 10), box(20, 20, 50, 40)], [1, 2]), tgt([box(5, 5, 30, 30)], [1])]
    predictions = [pred(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"]))
                   for t in targets]
    for use_07 in (True, False):
        result = evaluate_voc(predictions, targets, 2, use_07_metric=use_07)
        assert result["ap"] == {"1": 1.0, "2": 1.0} and result["mAP"] == 1.0
        assert result["num_gt"] == {"1": 2, "2": 1} and result["notes"] == []
    assert all(bool(m["tp"].all()) and bool(m["gt_found"].all()) for m in result["matches"])


def test_half_the_objects_found():
    targets = [tgt([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)],
                   [1, 1, 1, 1])]
    predictions = [pred([box(0, 0, 10, 10), box(40, 0, 50, 10)], [1, 1], [0.9, 0.8])]
    assert evaluate_voc(predictions, targets, 1, use_07_metric=False)["mAP"] == pytest.approx(0.5)
    result = evaluate_voc(predictions, targets, 1, use_07_metric=True)
    assert result["mAP"] == pytest.approx(6 / 11)
    assert result["matches"][0]["gt_found"].tolist() == [True, False, True, False]
    np.testing.assert_allclose(result["curves"]["1"]["recall"], [0.25, 0.5])
    np.testing.assert_allclose(result["curves"]["1"]["precision"], [1.0, 1.0])


def test_duplicates_are_false_positives():
    targets = [tgt([box(0, 0, 10, 10), box(100, 100, 120, 120)], [1, 1])]
    # the duplicate of A outranks the detection of B: TP, FP, TP
    predictions = [pred([box(100, 100, 120, 120), box(0, 0, 10, 10), box(0, 0, 10, 11)],
                        [1, 1, 1], [0.7, 0.9, 0.8])]
    result = evaluate_voc(predictions, targets, 1, use_07_metric=False)
    assert result["matches"][0]["tp"].tolist() == [True, True, False]
    np.testing.assert_array_equal(result["curves"]["1"]["tp"], [True, False, True])
    np.testing.assert_allclose(result["curves"]["1"]["precision"], [1.0, 0.5, 2 / 3])
    assert result["mAP"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    result07 = evaluate_voc(predictions, targets, 1, use_07_metric=True)
    assert result07["mAP"] == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_best_box_taken_is_a_duplicate_even_if_another_box_is_free():
    # VOC rule: det 2's best box A is taken, so it is a FP although B (IoU 0.54) is free.
    targets = [tgt([box(0, 0, 10, 10), box(0, 5, 10, 15)], [1, 1])]
    predictions = [pred([box(0, 0, 10, 10), box(0, 2, 10, 12)], [1, 1], [0.9, 0.8])]
    m = evaluate_voc(predictions, targets, 1)["matches"][0]
    assert m["tp"].tolist() == [True, False] and m["gt_index"].tolist() == [0, 0]
    assert m["gt_found"].tolist() == [True, False]


def test_iou_threshold_is_inclusive():
    targets = [tgt([box(0, 0, 10, 10)], [1])]
    exactly_half = [pred([box(0, 0, 10, 20)], [1], [0.9])]  # IoU = 100 / 200
    assert evaluate_voc(exactly_half, targets, 1)["mAP"] == 1.0
    assert evaluate_voc(exactly_half, targets, 1, iou_thresh=0.51)["mAP"] == 0.0


def test_difficult_boxes_are_ignored():
    targets = [tgt([box(0, 0, 10, 10), box(50, 50, 60, 60)], [1, 1], difficult=[False, True])]
    # a detection of the difficult box is neither TP nor FP; missing it costs nothing
    both = [pred([box(50, 50, 60, 60), box(0, 0, 10, 10)], [1, 1], [0.95, 0.9])]
    result = evaluate_voc(both, targets, 1)
    assert result["mAP"] == 1.0 and result["num_gt"]["1"] == 1 and result["num_det"]["1"] == 1
    assert result["matches"][0]["ignored"].tolist() == [True, False]
    only_easy = [pred([box(0, 0, 10, 10)], [1], [0.9])]
    assert evaluate_voc(only_easy, targets, 1)["mAP"] == 1.0


def test_class_without_ground_truth_is_undefined_not_averaged():
    targets = [tgt([box(0, 0, 10, 10)], [1])]
    predictions = [pred([box(0, 0, 10, 10), box(30, 30, 40, 40)], [1, 2], [0.9, 0.8])]
    result = evaluate_voc(predictions, targets, 3, class_names=["a", "b", "c"])
    assert result["ap"]["a"] == 1.0
    assert math.isnan(result["ap"]["b"]) and math.isnan(result["ap"]["c"])
    assert result["undefined"] == ["b", "c"] and result["mAP"] == 1.0
    assert any("'b'" in note and "undefined" in note for note in result["notes"])
    no_gt = evaluate_voc(predictions, [tgt([], [])], 2)
    assert math.isnan(no_gt["mAP"]) and "mAP is undefined" in no_gt["notes"][-1]


def test_empty_predictions_score_zero():
    targets = [tgt([box(0, 0, 10, 10)], [1]), tgt([], [])]
    result = evaluate_voc([pred([], [], []), pred([], [], [])], targets, 1)
    assert result["mAP"] == 0.0 and result["num_det"]["1"] == 0


# -- evaluate_voc vs the devkit transcription on random data ----------------------------------
@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_voc_matches_devkit(seed, use_07_metric):
    predictions, targets = random_set(seed)
    result = evaluate_voc(predictions, targets, 3, use_07_metric=use_07_metric)
    for k in (1, 2, 3):
        expected = devkit_eval(predictions, targets, k, 0.5, use_07_metric)
        assert result["ap"][str(k)] == pytest.approx(expected, abs=1e-9)


# -- COCO --------------------------------------------------------------------------------------
def coco_by_hand(predictions, targets, num_classes):
    """The same data written as COCO JSON dicts, evaluated by pycocotools directly."""
    gt = {"images": [{"id": i + 1, "width": 256, "height": 256} for i in range(len(targets))],
          "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)],
          "annotations": []}
    for i, t in enumerate(targets):
        for (x1, y1, x2, y2), c in zip(t["boxes"].tolist(), t["labels"].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    dt = [{"image_id": i + 1, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
          for i, p in enumerate(predictions)
          for (x1, y1, x2, y2), c, s in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                            p["scores"].tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dt), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_coco_numbers_are_pycocotools_numbers():
    predictions, targets = random_set(3, num_images=15, difficult=False)
    ours = evaluate_coco(predictions, targets, 3)
    reference = coco_by_hand(predictions, targets, 3)
    expected = [math.nan if v < 0 else v for v in reference.stats.tolist()]
    np.testing.assert_allclose([ours["stats"][m] for m in COCO_METRICS], expected, equal_nan=True)
    assert "Average Precision" in ours["summary"] and "IoU=0.50:0.95" in ours["summary"]
    assert 0.0 < ours["stats"]["AP50"] <= 1.0


def test_coco_undefined_size_range_is_nan_with_a_note():
    targets = [tgt([box(0, 0, 10, 10)], [1])]  # only a small box: no medium or large
    result = evaluate_coco([pred([box(0, 0, 10, 10)], [1], [0.9])], targets, 1)
    assert result["stats"]["AP"] == pytest.approx(1.0) and result["stats"]["APs"] == pytest.approx(1.0)
    assert math.isnan(result["stats"]["APm"]) and any("APm" in n for n in result["notes"])
    empty = evaluate_coco([pred([], [], [])], targets, 1)  # no detections at all
    assert empty["stats"]["AP"] == 0.0 and empty["stats"]["AR100"] == 0.0


def test_coco_difficult_boxes_are_ignored_as_crowd_regions():
    targets = [tgt([box(0, 0, 10, 10), box(50, 50, 60, 60)], [1, 1], difficult=[False, True])]
    predictions = [pred([box(50, 50, 60, 60), box(0, 0, 10, 10)], [1, 1], [0.95, 0.9])]
    assert evaluate_coco(predictions, targets, 1)["stats"]["AP"] == pytest.approx(1.0)


def test_coco_ap50_close_to_voc_all_point_ap():
    # With no two GT boxes overlapping, VOC's and COCO's matching agree, and both average
    # the same non-increasing precision envelope f(r): VOC integrates it exactly, COCO
    # averages it at r = 0, 0.01, ..., 1. Those 101 samples lie between the left and right
    # Riemann sums of step 0.01, which differ by (f(0) - f(1)) / 100 <= 0.01, and the integral
    # lies between them too: so |AP50 - AP_VOC| <= 0.01, per class and for the mean.
    predictions, targets = random_set(4, num_images=40, difficult=False, disjoint=True)
    voc = evaluate_voc(predictions, targets, 3, use_07_metric=False)
    coco = evaluate_coco(predictions, targets, 3)
    for name in ("1", "2", "3"):
        assert abs(coco["per_class"][name]["AP50"] - voc["ap"][name]) <= 0.01
    assert abs(coco["stats"]["AP50"] - voc["mAP"]) <= 0.01
    assert voc["mAP"] < 0.99  # a detector with errors, so the comparison means something


# -- proposal recall ---------------------------------------------------------------------------
def test_proposal_recall_hand_cases():
    gt = [torch.tensor([box(0, 0, 10, 10), box(100, 100, 110, 110)]), torch.tensor([box(0, 0, 20, 20)])]
    proposals = [torch.tensor([box(0, 0, 10, 12), box(0, 0, 10, 10)]),  # IoU 0.833 then 1.0
                 torch.zeros(0, 4)]
    recall = proposal_recall(proposals, gt, iou_thresholds=[0.5, 0.9])
    assert recall.tolist() == pytest.approx([1 / 3, 1 / 3])
    top1 = proposal_recall(proposals, gt, iou_thresholds=[0.5, 0.9], top_n=1)
    assert top1.tolist() == pytest.approx([1 / 3, 0.0])
    assert best_overlaps(proposals, gt, top_n=1).tolist() == pytest.approx([100 / 120, 0.0, 0.0])
    assert len(proposal_recall(proposals, gt)) == 10  # default thresholds 0.5:0.05:0.95


def test_proposal_recall_matches_torchvision_oracle():
    g = torch.Generator().manual_seed(0)
    proposals, gt = [], []
    for _ in range(5):
        p = torch.rand(50, 2, generator=g) * 200
        proposals.append(torch.cat([p, p + 5 + torch.rand(50, 2, generator=g) * 60], 1))
        b = torch.rand(4, 2, generator=g) * 200
        gt.append(torch.cat([b, b + 10 + torch.rand(4, 2, generator=g) * 50], 1))
    for top_n in (None, 10):
        best = torch.cat([tv_box_iou(p[:top_n], b).max(dim=0).values for p, b in zip(proposals, gt)])
        expected = [(best >= t).float().mean().item() for t in (0.3, 0.5, 0.7)]
        ours = proposal_recall(proposals, gt, iou_thresholds=(0.3, 0.5, 0.7), top_n=top_n)
        assert ours.tolist() == pytest.approx(expected)


def test_proposal_recall_bad_input():
    gt = [torch.tensor([box(0, 0, 10, 10)])]
    with pytest.raises(ValueError, match="2 images but ground truth for 1"):
        proposal_recall([torch.zeros(0, 4), torch.zeros(0, 4)], gt)
    with pytest.raises(ValueError, match="no ground-truth"):
        proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        proposal_recall([torch.zeros(0, 4)], gt, iou_thresholds=[0.0])
    with pytest.raises(ValueError, match="top_n"):
        proposal_recall([torch.zeros(0, 4)], gt, top_n=0)
    with pytest.raises(ValueError, match="x2 < x1"):
        proposal_recall([torch.tensor([box(10, 0, 5, 10)])], gt)
    with pytest.raises(TypeError, match="t\\['boxes'\\]"):
        proposal_recall([torch.zeros(0, 4)], [{"boxes": gt[0]}])


# -- error breakdown ---------------------------------------------------------------------------
def test_error_breakdown_hand_case():
    targets = [tgt([box(0, 0, 10, 10), box(50, 50, 70, 70), box(100, 100, 120, 120),
                    box(200, 200, 220, 220)], [1, 2, 1, 1], difficult=[False, False, False, True])]
    predictions = [pred([box(0, 0, 10, 10),        # correct
                         box(0, 0, 10, 11),        # duplicate of the first
                         box(0, 0, 10, 30),        # right class, IoU 1/3: localisation
                         box(50, 50, 70, 70),      # on the class-2 box, says class 1
                         box(150, 0, 160, 10),     # on nothing: background
                         box(200, 200, 220, 220),  # on the difficult box: ignored
                         box(0, 0, 10, 10)],       # below the score threshold
                        [1, 1, 1, 1, 2, 1, 3], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.01])]
    result = error_breakdown(predictions, targets, 3, score_thresh=0.05)
    assert [ERROR_KINDS[k] if k >= 0 else None for k in result["kinds"][0].tolist()] == [
        "correct", "duplicate", "localisation", "classification", "background", "ignored", None]
    assert result["counts"] == {"correct": 1, "duplicate": 1, "localisation": 1, "classification": 1,
                                "background": 1, "ignored": 1, "missed": 2}
    assert result["missed"][0].tolist() == [False, True, True, False]


# -- bad input ---------------------------------------------------------------------------------
GOOD_T = tgt([box(0, 0, 10, 10)], [1])
GOOD_P = pred([box(0, 0, 10, 10)], [1], [0.9])


@pytest.mark.parametrize("predictions, targets, error, match", [
    ([GOOD_P, GOOD_P], [GOOD_T], ValueError, "2 predictions but 1 targets"),
    ([{"boxes": torch.zeros(1, 3), "labels": torch.ones(1, dtype=torch.int64),
       "scores": torch.ones(1)}], [GOOD_T], ValueError, r"shape \(N, 4\)"),
    ([pred([box(10, 0, 0, 10)], [1], [0.5])], [GOOD_T], ValueError, "x2 < x1"),
    ([pred([box(0, 0, 10, 10)], [1], [1.5])], [GOOD_T], ValueError, "not logits"),
    ([pred([box(0, 0, 10, 10)], [1], [-0.1])], [GOOD_T], ValueError, r"\[0, 1\]"),
    ([pred([box(0, 0, 10, 10)], [1], [float("nan")])], [GOOD_T], ValueError, "NaN"),
    ([pred([box(0, 0, 10, 10)], [1], [0.5, 0.4])], [GOOD_T], ValueError, "one score per box"),
    ([pred([box(0, 0, 10, 10)], [0], [0.5])], [GOOD_T], ValueError, "0 is reserved"),
    ([pred([box(0, 0, 10, 10)], [3], [0.5])], [GOOD_T], ValueError, r"1\.\.2"),
    ([{"boxes": torch.zeros(0, 4)}], [GOOD_T], ValueError, "'scores'"),
    ([GOOD_P], [tgt([box(0, 0, 10, 10)], [5])], ValueError, r"1\.\.2"),
    ([GOOD_P], [tgt([box(0, 0, 0, 10)], [1])], ValueError, "degenerate"),
    ([GOOD_P], [dict(GOOD_T, difficult=torch.zeros(2, dtype=torch.bool))], ValueError, "difficult"),
    (GOOD_P, GOOD_T, TypeError, "one dict per image"),
])
def test_bad_input(predictions, targets, error, match):
    for evaluate in (evaluate_voc, evaluate_coco, error_breakdown):
        with pytest.raises(error, match=match):
            evaluate(predictions, targets, 2)


def test_bad_settings():
    with pytest.raises(ValueError, match="iou_thresh"):
        evaluate_voc([GOOD_P], [GOOD_T], 1, iou_thresh=0.0)
    with pytest.raises(ValueError, match="class_names has 1 names"):
        evaluate_voc([GOOD_P], [GOOD_T], 2, class_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_voc([GOOD_P], [GOOD_T], 0)
    with pytest.raises(ValueError, match="bg_iou"):
        error_breakdown([GOOD_P], [GOOD_T], 1, bg_iou=0.6)
    with pytest.raises(ValueError, match="iou_thresh=1.5"):
        error_breakdown([GOOD_P], [GOOD_T], 1, iou_thresh=1.5)
