"""The exercise checkers: each accepts a right answer and diagnoses each planted mistake.

Every planted mistake is written the way a student would write it (a whole
function, not a variant flag), so the tests check the checkers end to end.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frcnn_lite.book import exercises as ex
from frcnn_lite.anchors import base_anchors, grid_anchors, label_anchors
from frcnn_lite.boxes import box_iou, decode_boxes, encode_boxes
from frcnn_lite.evaluate import voc_ap
from frcnn_lite.rpn import rpn_loss


def wrong(check, answer, match, **kwargs):
    with pytest.raises(ex.WrongAnswer, match=match):
        check(answer, **kwargs)


def test_wrong_answer_is_an_assertion_error_and_success_prints(capsys):
    assert issubclass(ex.WrongAnswer, AssertionError)
    verdict = ex.check_box_iou(box_iou)
    assert verdict.startswith("correct:") and verdict in capsys.readouterr().out


# -- IoU --------------------------------------------------------------------------------------
def iou_student(plus_one=0.0, clamp=True, union=True):
    def iou(a, b):
        area_a = (a[:, 2] - a[:, 0] + plus_one) * (a[:, 3] - a[:, 1] + plus_one)
        area_b = (b[:, 2] - b[:, 0] + plus_one) * (b[:, 3] - b[:, 1] + plus_one)
        lt = torch.max(a[:, None, :2], b[None, :, :2])
        rb = torch.min(a[:, None, 2:], b[None, :, 2:])
        wh = rb - lt + plus_one
        wh = wh.clamp(min=0) if clamp else wh
        inter = wh[..., 0] * wh[..., 1]
        denominator = area_a[:, None] + area_b[None, :] - (inter if union else 0)
        return inter / denominator
    return iou


def test_check_box_iou():
    ex.check_box_iou(box_iou)
    ex.check_box_iou(iou_student())
    wrong(ex.check_box_iou, iou_student(plus_one=1.0), r"\+ 1")
    wrong(ex.check_box_iou, iou_student(clamp=False), "clamp the intersection")
    wrong(ex.check_box_iou, iou_student(union=False), "area1 \\+ area2 - intersection")
    wrong(ex.check_box_iou, lambda a, b: box_iou(a, b).T, "transposed")
    wrong(ex.check_box_iou, lambda a, b: box_iou(a[:2], b).diagonal(), "every box of boxes1")
    wrong(ex.check_box_iou, lambda a, b: box_iou(a, b) * 0.9, "wrong at index")
    wrong(ex.check_box_iou, lambda a, b: box_iou(a, b).tolist(), "must return a torch.Tensor")
    wrong(ex.check_box_iou, box_iou(torch.zeros(0, 4), torch.zeros(0, 4)), "pass your function")

    def crashes(a, b):
        raise IndexError("oops")
    wrong(ex.check_box_iou, crashes, "raised IndexError: oops")


# -- anchors ----------------------------------------------------------------------------------
def anchors_student(mistake=None):
    def anchors(scales, ratios):
        rows = []
        pairs = ([(s, r) for s in scales for r in ratios] if mistake == "scale_major"
                 else [(s, r) for r in ratios for s in scales])
        for s, r in pairs:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            if mistake == "inverted":
                w, h = h, w
            if mistake == "double":
                w, h = 2 * w, 2 * h
            if mistake == "area":
                w, h = s / r, s  # not area preserving
            if mistake == "shape":
                w, h = s * r ** 0.25, s / r ** 0.25  # right area, wrong ratio
            c = 7.5 if mistake == "centre" else 0.0
            rows.append([c - w / 2, c - h / 2, c + w / 2, c + h / 2])
        return torch.tensor(rows)
    return anchors


def test_check_base_anchors():
    ex.check_base_anchors(base_anchors)
    ex.check_base_anchors(anchors_student())
    ex.check_base_anchors(base_anchors((16, 32), (0.5, 1.0, 2.0)), scales=(16, 32))  # a tensor
    ex.check_base_anchors(anchors_student(), scales=(8, 16, 32, 64), ratios=(1 / 3, 1, 3))
    wrong(ex.check_base_anchors, anchors_student("inverted"), "right areas but h and w are swapped")
    wrong(ex.check_base_anchors, anchors_student("scale_major"), "scale-major")
    wrong(ex.check_base_anchors, anchors_student("centre"), r"not centred on \(0, 0\).*7\.5")
    wrong(ex.check_base_anchors, anchors_student("double"), "twice too large")
    wrong(ex.check_base_anchors, anchors_student("area"), "areas are wrong")
    wrong(ex.check_base_anchors, anchors_student("shape"), "right areas but not the right shapes")
    wrong(ex.check_base_anchors, lambda s, r: base_anchors(s, r)[:3], r"shape \(3, 4\)")


def grid_student(offset=0.5, order="cell", swap=False):
    def grid(feature_size, stride, base):
        height, width = feature_size
        rows = []
        cells = [(i, j) for i in range(height) for j in range(width)]
        if order == "column":
            cells = [(i, j) for j in range(width) for i in range(height)]
        pairs = ([(a, i, j) for a in range(len(base)) for i, j in cells] if order == "anchor"
                 else [(a, i, j) for i, j in cells for a in range(len(base))])
        for a, i, j in pairs:
            cx, cy = (j + offset) * stride, (i + offset) * stride
            if swap:
                cx, cy = cy, cx
            rows.append((base[a] + torch.tensor([cx, cy, cx, cy])).tolist())
        return torch.tensor(rows)
    return grid


def test_check_grid_anchors():
    ex.check_grid_anchors(grid_anchors)
    ex.check_grid_anchors(grid_student())
    wrong(ex.check_grid_anchors, grid_student(offset=0.0), "top-left corners")
    wrong(ex.check_grid_anchors, grid_student(swap=True), "x and y are swapped")
    wrong(ex.check_grid_anchors, grid_student(order="anchor"), "base anchors outermost")
    wrong(ex.check_grid_anchors, grid_student(order="column"), "down columns first")
    one_per_cell = lambda fs, stride, base: grid_anchors(fs, stride, base[:1])
    wrong(ex.check_grid_anchors, one_per_cell, "one per cell")
    flipped = lambda fs, stride, base: grid_anchors(fs, stride, base).flip(0)
    wrong(ex.check_grid_anchors, flipped, "wrong order")


# -- Eq. 2 ------------------------------------------------------------------------------------
def encode_student(mistake=None):
    def encode(reference, target, weights=(1.0, 1.0, 1.0, 1.0)):
        wa, ha = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        xa, ya = reference[:, 0] + wa / 2, reference[:, 1] + ha / 2
        w, h = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        x, y = target[:, 0] + w / 2, target[:, 1] + h / 2
        tx, ty = (x - xa) / wa, (y - ya) / ha
        tw, th = torch.log(w / wa), torch.log(h / ha)
        if mistake == "swapped_log":
            tw, th = torch.log(wa / w), torch.log(ha / h)
        if mistake == "no_log":
            tw, th = w / wa, h / ha
        if mistake == "target_norm":
            tx, ty = (x - xa) / w, (y - ya) / h
        if mistake == "corners":
            tx, ty = (target[:, 0] - reference[:, 0]) / wa, (target[:, 1] - reference[:, 1]) / ha
        t = torch.stack((tx, ty, tw, th), dim=1)
        if mistake == "no_weights":
            return t
        return t * torch.tensor(weights)
    return encode


def test_check_encode_boxes():
    ex.check_encode_boxes(encode_boxes)
    ex.check_encode_boxes(encode_student())
    wrong(ex.check_encode_boxes, encode_student("swapped_log"), "ratio upside down")
    wrong(ex.check_encode_boxes, encode_student("no_log"), "need a log")
    wrong(ex.check_encode_boxes, encode_student("target_norm"), "reference's \\(anchor's\\) size")
    wrong(ex.check_encode_boxes, encode_student("corners"), "use centres")
    wrong(ex.check_encode_boxes, encode_student("no_weights"), "weights are ignored")
    wrong(ex.check_encode_boxes, lambda r, t: encode_boxes(r, t), "raised TypeError")


def decode_student(mistake=None):
    def decode(reference, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
        d = deltas if mistake == "no_weights" else deltas / torch.tensor(weights)
        wa, ha = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        xa, ya = reference[:, 0] + wa / 2, reference[:, 1] + ha / 2
        tw, th = d[:, 2], d[:, 3]
        if mistake != "no_clamp":
            tw, th = tw.clamp(max=math.log(1000 / 16)), th.clamp(max=math.log(1000 / 16))
        x, y = d[:, 0] * wa + xa, d[:, 1] * ha + ya
        w, h = (wa * tw, ha * th) if mistake == "no_exp" else (wa * tw.exp(), ha * th.exp())
        if mistake == "centres":
            return torch.stack((x, y, w, h), dim=1)
        return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), dim=1)
    return decode


def test_check_decode_boxes():
    ex.check_decode_boxes(decode_boxes)
    ex.check_decode_boxes(decode_student())
    wrong(ex.check_decode_boxes, decode_student("no_exp"), "exp\\(t_w\\)")
    wrong(ex.check_decode_boxes, decode_student("centres"), "return corners")
    wrong(ex.check_decode_boxes, decode_student("no_weights"), "weights are ignored")
    wrong(ex.check_decode_boxes, decode_student("no_clamp"), "clamp t_w and t_h")


# -- anchor labels ----------------------------------------------------------------------------
def labels_student(mistake=None):
    def label(anchors, gt, image_size, fg_iou=0.7, bg_iou=0.3):
        height, width = image_size
        labels = torch.full((len(anchors),), -1, dtype=torch.int64)
        inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= width) \
            & (anchors[:, 3] <= height)
        if mistake == "border":
            inside = torch.ones_like(inside)
        if len(gt) == 0:
            labels[inside] = 0
            return labels if mistake != "empty" else labels.fill_(-1)
        iou = box_iou(anchors, gt)
        iou[~inside] = -1
        best = iou.max(dim=1).values
        negative = inside & ((best <= bg_iou) if mistake == "le" else (best < bg_iou))
        positive = (best > fg_iou) if mistake == "gt" else (best >= fg_iou)
        best_anchor = (iou == iou.max(dim=0).values[None]).any(dim=1)
        if mistake != "no_best":
            labels[best_anchor] = 1
        labels[positive & inside] = 1
        if mistake == "negatives_last":
            labels[negative] = 0
        elif mistake != "negatives_first_wrong":
            labels[negative & (labels != 1)] = 0
        return labels
    return label


def test_check_label_anchors():
    ex.check_label_anchors(label_anchors)
    ex.check_label_anchors(labels_student())
    wrong(ex.check_label_anchors, labels_student("border"), "cross the image border")
    wrong(ex.check_label_anchors, labels_student("no_best"), "best anchor.*must be positive")
    wrong(ex.check_label_anchors, labels_student("negatives_last"), "order of the rules")
    wrong(ex.check_label_anchors, labels_student("gt"), "IoU >= fg_iou, not >")
    wrong(ex.check_label_anchors, labels_student("le"), "IoU < bg_iou strictly")
    wrong(ex.check_label_anchors, labels_student("empty"), "no boxes")
    wrong(ex.check_label_anchors, lambda *a: label_anchors(*a)[0] * 2, "must be 1 \\(positive\\)")


# -- Eq. 1 ------------------------------------------------------------------------------------
def loss_student(mistake=None, as_dict=True):
    def loss(logits, deltas, labels, targets, *, num_locations, lambda_reg=10.0):
        cls_labels = labels.clamp(min=0) if mistake == "ignored" else labels
        sampled = cls_labels >= 0
        l_cls = F.cross_entropy(logits[sampled], cls_labels[sampled], reduction="sum")
        l_cls = l_cls / (len(labels) if mistake == "n_cls" else sampled.sum())
        pos = labels == 1
        box = F.smooth_l1_loss(deltas[pos], targets[pos], reduction="sum")
        if mistake == "l2":
            box = ((deltas[pos] - targets[pos]) ** 2).sum()
        n_reg = {"n_reg": int((labels >= 0).sum()), "positives": int(pos.sum())}.get(
            mistake, num_locations)
        l_box = (1.0 if mistake == "lambda" else lambda_reg) * box / n_reg
        if as_dict:
            return {"loss_objectness": l_cls, "loss_rpn_box_reg": l_box}
        return l_cls + l_box
    return loss


def test_check_rpn_loss():
    ex.check_rpn_loss(rpn_loss)
    ex.check_rpn_loss(loss_student())
    ex.check_rpn_loss(loss_student(as_dict=False))
    ex.check_rpn_loss(lambda *a, **k: rpn_loss(*a, **k, normalization="batch"),
                      normalization="batch")
    wrong(ex.check_rpn_loss, loss_student("n_cls"), "N_cls is the number of \\*sampled\\*")
    wrong(ex.check_rpn_loss, loss_student("ignored"), "ignored anchors \\(label -1\\)")
    wrong(ex.check_rpn_loss, loss_student("n_reg"), "wrong N_reg.*sampled anchors")
    wrong(ex.check_rpn_loss, loss_student("positives"), "number of positives")
    wrong(ex.check_rpn_loss, loss_student("lambda"), "lambda is missing")
    wrong(ex.check_rpn_loss, loss_student("l2"), "not squared")
    wrong(ex.check_rpn_loss, loss_student("n_reg", as_dict=False), "wrong N_reg")
    wrong(ex.check_rpn_loss, loss_student(), "wrong N_reg.*anchor locations",
          normalization="batch")


# -- RoI pooling ------------------------------------------------------------------------------
def pool_student(mistake=None):
    def pool(features, rois, output_size, spatial_scale):
        out_h, out_w = output_size
        _, c, height, width = features.shape
        out = torch.zeros(len(rois), c, out_h, out_w)

        def rnd(v):
            if mistake == "torch_round":
                return int(torch.round(torch.tensor(v)))
            return int(math.floor(v + 0.5))
        for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
            xs, ys, xe, ye = (rnd(v * spatial_scale) for v in (x1, y1, x2, y2))
            one = 0 if mistake == "no_plus_one" else 1
            bw, bh = max(xe - xs + one, 1) / out_w, max(ye - ys + one, 1) / out_h
            for i in range(out_h):
                y_lo = min(max(math.floor(i * bh) + ys, 0), height)
                y_hi = min(max(math.ceil((i + 1) * bh) + ys, 0), height)
                for j in range(out_w):
                    x_lo = min(max(math.floor(j * bw) + xs, 0), width)
                    x_hi = min(max(math.ceil((j + 1) * bw) + xs, 0), width)
                    cells = features[int(b), :, y_lo:y_hi, x_lo:x_hi].reshape(c, -1)
                    if cells.shape[1] == 0:
                        out[r, :, i, j] = float("-inf") if mistake == "empty" else 0.0
                    elif mistake == "mean":
                        out[r, :, i, j] = cells.mean(dim=1)
                    else:
                        out[r, :, i, j] = cells.amax(dim=1)
        return out
    return pool


def test_check_roi_pool():
    from torchvision.ops import roi_pool
    from frcnn_lite.roi_pool import roi_pool as ours

    ex.check_roi_pool(roi_pool)
    ex.check_roi_pool(ours)
    ex.check_roi_pool(pool_student())
    wrong(ex.check_roi_pool, pool_student("torch_round"), "halves to even")
    wrong(ex.check_roi_pool, pool_student("no_plus_one"), "both ends")
    wrong(ex.check_roi_pool, pool_student("mean"), "average pooling")
    wrong(ex.check_roi_pool, pool_student("empty"), "must output 0")
    wrong(ex.check_roi_pool, lambda f, r, s, k: roi_pool(f, r, s, 1.0), "spatial_scale")
    wrong(ex.check_roi_pool, lambda f, r, s, k: roi_pool(f, r, s[::-1], k), "out_w, out_h")
    no_batch = lambda f, r, s, k: roi_pool(f, torch.cat([r[:, :1] * 0, r[:, 1:]], 1), s, k)
    wrong(ex.check_roi_pool, no_batch, "batch index")


def test_roi_pool_reference_variant_matches_torchvision():
    from torchvision.ops import roi_pool

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 2, 9, 11, generator=generator, dtype=torch.float64)
    rois = torch.tensor([[0., 3., 1., 17., 15.], [1., 0., 5., 9., 7.], [1., 15., 2., 30., 20.]],
                        dtype=torch.float64)
    assert torch.allclose(ex._roi_pool(features, rois, (2, 3), 0.5),
                          roi_pool(features, rois, (2, 3), 0.5))


# -- VOC AP -----------------------------------------------------------------------------------
def ap_student(mistake=None):
    def ap(recall, precision, use_07_metric=True):
        r, p = np.asarray(recall), np.asarray(precision)
        if mistake != "no_envelope":
            p = np.maximum.accumulate(p[::-1])[::-1]
        if mistake == "always_07":
            use_07_metric = True
        if use_07_metric:
            grid = np.arange(0.0, 1.1, 0.1) if mistake == "arange" else np.arange(11) / 10
            vals = [p[r >= t].max() if (r >= t).any() else 0.0 for t in grid]
            return float(np.sum(vals) / (10 if mistake == "ten" else 11))
        mrec, mpre = np.concatenate(([0.0], r)), np.concatenate(([0.0], p))
        return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
    return ap


def test_check_voc_ap():
    ex.check_voc_ap(voc_ap)
    ex.check_voc_ap(ap_student())
    wrong(ex.check_voc_ap, ap_student("no_envelope"), "envelope")
    wrong(ex.check_voc_ap, ap_student("arange"), "np.arange\\(11\\) / 10")
    wrong(ex.check_voc_ap, ap_student("ten"), "divide by 11")
    wrong(ex.check_voc_ap, ap_student("always_07"), "11-point rule when the area rule")


# -- chapter 11 graders -----------------------------------------------------------------------
def test_grade_anchor_coverage():
    from frcnn_lite.datasets import ShapesDataset
    from frcnn_lite.recipes import CachedDataset

    # The grader's default data, drawn once for the three calls.
    data = CachedDataset(ShapesDataset("val", 40, min_size=8, max_size=64, objects_per_image=(3, 8)))
    ex.grade_anchor_coverage((16, 32, 64), dataset=data)
    wrong(ex.grade_anchor_coverage, (32, 64, 128), "only 18%", dataset=data)
    wrong(ex.grade_anchor_coverage, (128, 256, 512), "smallest scale is larger", dataset=data)
    wrong(ex.grade_anchor_coverage, (8, 16, 24, 32, 48, 64), "at most 15")


def test_grade_anchor_scale_ablation():
    base = {"ratios": (0.5, 1, 2), "iterations": 100}
    rows = [{"config": {**base, "scales": (32, 64, 128)}, "AP_small": 0.10},
            {"config": {**base, "scales": (16, 32, 64, 128)}, "AP_small": 0.25}]
    ex.grade_anchor_scale_ablation(rows, small_scale=16)
    worse = [rows[0], {**rows[1], "AP_small": 0.05}]
    wrong(ex.grade_anchor_scale_ablation, worse, "changed AP_small by -0.050", small_scale=16)
    other = [rows[0], {"config": {**base, "iterations": 50, "scales": (16, 32, 64, 128)},
                       "AP_small": 0.3}]
    wrong(ex.grade_anchor_scale_ablation, other, "differs only by", small_scale=16)
    wrong(ex.grade_anchor_scale_ablation, rows[:1], "one without it", small_scale=16)
    wrong(ex.grade_anchor_scale_ablation, [{"mAP": 1}], "must have row", small_scale=16)
