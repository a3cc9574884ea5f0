"""Checkers for chapter 1 (IoU) and chapter 4 (Eq. 2, encode and decode).

The oracle is :mod:`frcnn_lite.boxes`; ``_iou``, ``_encode`` and ``_decode``
are the right computations with the typical mistakes switchable.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from frcnn_lite.boxes import BBOX_XFORM_CLIP, box_iou, decode_boxes, encode_boxes
from frcnn_lite.book.exercises._common import (WrongAnswer, _call, _centres_sizes, _correct,
                                               _first_difference, _known_mistake, _same,
                                               _tensor)


def _iou(a, b, *, plus_one=False, clamp=True, union="union"):
    """IoU with the typical mistakes switchable: (N, 4), (M, 4) -> (N, M)."""
    one = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)  # (N,)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)  # (M,)
    wh = torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2]) + one
    wh = wh.clamp(min=0) if clamp else wh  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]
    if union == "sum":
        return inter / (area_a[:, None] + area_b[None, :])
    if union == "first":
        return inter / area_a[:, None].expand_as(inter)
    if union == "min":
        return inter / torch.min(area_a[:, None], area_b[None, :])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def check_box_iou(answer: Callable) -> str:
    """Chapter 1: ``answer(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)`` IoU of every pair."""
    a = torch.tensor([[0., 0., 10., 10.], [5., 5., 15., 15.], [20., 20., 30., 30.]])
    b = torch.tensor([[0., 0., 10., 10.], [10., 0., 20., 10.]])  # b[1] touches a[0] at x = 10
    inputs = f"boxes1 = {a.tolist()}, boxes2 = {b.tolist()}"
    result = _call(answer, "box_iou", a.clone(), b.clone())
    if isinstance(result, torch.Tensor) and result.dim() == 1:
        raise WrongAnswer("your box_iou returned one value per pair of rows (boxes1[i] with "
                          "boxes2[i]); it must compare every box of boxes1 with every box of boxes2, "
                          "an (N, M) table: broadcast boxes1[:, None, :] against boxes2[None, :, :].")
    expected = box_iou(a, b)  # (3, 2)
    if isinstance(result, torch.Tensor) and tuple(result.shape) == (2, 3) \
            and _same(result, expected.T):
        raise WrongAnswer("your IoU table is transposed: row i must be boxes1[i] and column j "
                          "boxes2[j], so the result is (N, M) = (3, 2), not (2, 3).")
    got = _tensor(result, "box_iou", (3, 2))
    mistake = _known_mistake(got, {
        "you add 1 to widths and heights (VOC's inclusive pixel convention); the book's boxes are "
        "continuous, so the width is x2 - x1 with no + 1 (see frcnn_lite.boxes).":
            _iou(a, b, plus_one=True),
        "disjoint boxes get a non-zero IoU: clamp the intersection's width and height at 0 "
        "(two negative sides multiply to a positive 'area').": _iou(a, b, clamp=False),
        "you divide by area1 + area2; the union counts the intersection once: "
        "area1 + area2 - intersection.": _iou(a, b, union="sum"),
        "you divide by the first box's area (that is the fraction of boxes1 covered, not IoU); "
        "divide by the union area1 + area2 - intersection.": _iou(a, b, union="first"),
        "you divide by the smaller area; IoU divides by the union.": _iou(a, b, union="min"),
    })
    if mistake:
        raise WrongAnswer(mistake)
    if not _same(got, expected):
        if got[2].abs().sum() > 0:
            raise WrongAnswer(f"boxes1[2] = {a[2].tolist()} overlaps nothing, so its IoUs must be "
                              f"0; got {got[2].tolist()}. Clamp the intersection sides at 0.")
        if abs(got[0, 1]) > 1e-6:
            raise WrongAnswer(f"boxes that only touch along an edge ({a[0].tolist()} and "
                              f"{b[1].tolist()}) have IoU 0; got {got[0, 1].item():.4g}.")
        raise WrongAnswer(_first_difference(got, expected, "IoU", inputs))
    return _correct("IoU of every pair, (N, M), continuous coordinates, disjoint and touching "
                    "boxes give 0.")


# -- chapter 4: Eq. 2 -------------------------------------------------------------------------
def _encode(ref, tgt, weights, *, log="right", norm="reference", corners=False, weighting="mul",
            swap_xy=False):
    """Eq. 2 encode with mistakes switchable: (N, 4), (N, 4) -> (N, 4)."""
    xa, ya, wa, ha = _centres_sizes(ref)
    x, y, w, h = _centres_sizes(tgt)
    if corners:
        xa, ya, x, y = ref[:, 0], ref[:, 1], tgt[:, 0], tgt[:, 1]
    nw, nh = (w, h) if norm == "target" else (wa, ha)
    if swap_xy:
        nw, nh = nh, nw
    tx, ty = (x - xa) / nw, (y - ya) / nh
    if log == "right":
        tw, th = torch.log(w / wa), torch.log(h / ha)
    elif log == "swapped":
        tw, th = torch.log(wa / w), torch.log(ha / h)
    else:  # "none"
        tw, th = w / wa, h / ha
    t = torch.stack((tx, ty, tw, th), dim=1)
    weights = torch.as_tensor(weights, dtype=t.dtype)
    return {"mul": t * weights, "div": t / weights, "none": t}[weighting]


_REF = torch.tensor([[10., 20., 50., 40.], [0., 0., 16., 16.], [30., 5., 42., 65.]])
_TGT = torch.tensor([[14., 18., 62., 50.], [2., -3., 12., 21.], [25., 20., 40., 55.]])
_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _encode_mistakes(ref, tgt, weights) -> Dict[str, torch.Tensor]:
    return {
        "the size terms have the ratio upside down: t_w = log(w / w_a) and t_h = log(h / h_a), "
        "target over reference.": _encode(ref, tgt, weights, log="swapped"),
        "t_w and t_h need a log: t_w = log(w / w_a) (a ratio of sizes becomes a difference, so "
        "growing and shrinking are symmetric).": _encode(ref, tgt, weights, log="none"),
        "t_x and t_y must be divided by the reference's (anchor's) size w_a, h_a, not the "
        "target's.": _encode(ref, tgt, weights, norm="target"),
        "t_x divides by w_a and t_y by h_a; you swapped them.": _encode(ref, tgt, weights,
                                                                       swap_xy=True),
        "Eq. 2 moves the centre: use centres x = (x1 + x2) / 2, not the corners x1.": _encode(
            ref, tgt, weights, corners=True),
        "the weights are ignored: multiply (t_x, t_y, t_w, t_h) by (w_x, w_y, w_w, w_h).":
            _encode(ref, tgt, weights, weighting="none"),
        "the weights divide instead of multiply in encode (decode divides).": _encode(
            ref, tgt, weights, weighting="div"),
    }


def check_encode_boxes(answer: Callable) -> str:
    """Chapter 4: ``answer(reference (N, 4), target (N, 4), weights) -> (N, 4)`` Eq. 2 deltas."""
    ref, tgt = _REF.double(), _TGT.double()
    for weights in ((1.0, 1.0, 1.0, 1.0), _WEIGHTS):
        got = _tensor(_call(answer, "encode_boxes", _REF.clone(), _TGT.clone(), weights),
                      "encode_boxes", (3, 4))
        expected = encode_boxes(ref, tgt, weights)
        if _same(got, expected):
            continue
        mistakes = _encode_mistakes(ref, tgt, weights)
        if weights == (1.0, 1.0, 1.0, 1.0):  # weight mistakes cannot show with unit weights
            mistakes = {k: v for k, v in mistakes.items() if "weights" not in k}
        mistake = _known_mistake(got, mistakes)
        raise WrongAnswer(mistake or _first_difference(
            got, expected, "encode_boxes", f"reference={_REF.tolist()}, target={_TGT.tolist()}, "
            f"weights={weights}"))
    return _correct("Eq. 2 deltas of centres over the reference's size, log size ratios, "
                    "weights multiplied.")


def _decode(ref, deltas, weights, *, exp=True, weighting="div", centres=False, clamp=True):
    """Eq. 2 decode with mistakes switchable."""
    xa, ya, wa, ha = _centres_sizes(ref)
    weights = torch.as_tensor(weights, dtype=deltas.dtype)
    d = {"div": deltas / weights, "mul": deltas * weights, "none": deltas}[weighting]
    tw, th = d[:, 2], d[:, 3]
    if clamp:
        tw, th = tw.clamp(max=BBOX_XFORM_CLIP), th.clamp(max=BBOX_XFORM_CLIP)
    x, y = d[:, 0] * wa + xa, d[:, 1] * ha + ya
    w, h = (wa * torch.exp(tw), ha * torch.exp(th)) if exp else (wa * tw, ha * th)
    if centres:
        return torch.stack((x, y, w, h), dim=1)
    return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), dim=1)


def check_decode_boxes(answer: Callable) -> str:
    """Chapter 4: ``answer(reference (N, 4), deltas (N, 4), weights) -> (N, 4)`` boxes.

    Decode must invert encode, divide by the weights, and clamp t_w, t_h at
    log(1000 / 16) so an untrained network's huge deltas cannot overflow.
    """
    ref = _REF.double()
    for weights in ((1.0, 1.0, 1.0, 1.0), _WEIGHTS):
        deltas = encode_boxes(ref, _TGT.double(), weights)
        got = _tensor(_call(answer, "decode_boxes", _REF.clone(), deltas.float(), weights),
                      "decode_boxes", (3, 4))
        if _same(got, _TGT.double(), atol=1e-3):
            continue
        mistakes = {
            "t_w, t_h are log-sizes: w = w_a * exp(t_w), not w_a * t_w.": _decode(
                ref, deltas, weights, exp=False),
            "you return centres and sizes (x, y, w, h); return corners (x1, y1, x2, y2) = "
            "(x - w/2, y - h/2, x + w/2, y + h/2).": _decode(ref, deltas, weights, centres=True),
        }
        if weights != (1.0, 1.0, 1.0, 1.0):
            mistakes.update({
                "the weights are ignored: divide the deltas by (w_x, w_y, w_w, w_h) first.":
                    _decode(ref, deltas, weights, weighting="none"),
                "decode must divide the deltas by the weights (encode multiplied).": _decode(
                    ref, deltas, weights, weighting="mul")})
        raise WrongAnswer(_known_mistake(got, mistakes, atol=1e-3) or _first_difference(
            got, _TGT.double(), "decode_boxes (it should invert encode_boxes)",
            f"reference={_REF.tolist()}, deltas={deltas.tolist()}, weights={weights}", atol=1e-3))
    wild = torch.tensor([[0.0, 0.0, 200.0, 200.0]])  # exp(200) overflows float32
    got = _tensor(_call(answer, "decode_boxes", _REF[:1].clone(), wild, (1.0, 1.0, 1.0, 1.0)),
                  "decode_boxes", (1, 4))
    expected = decode_boxes(_REF[:1].double(), wild.double())
    if not bool(torch.isfinite(got).all()) or not _same(got, expected, atol=1e-2):
        raise WrongAnswer(f"deltas (0, 0, 200, 200) gave {got.tolist()[0]}: clamp t_w and t_h at "
                          f"log(1000 / 16) = {BBOX_XFORM_CLIP:.4f} before exp(), or an untrained "
                          f"RPN's output overflows to inf.")
    return _correct("decode inverts encode, divides by the weights and clamps t_w, t_h at "
                    "log(1000/16).")
