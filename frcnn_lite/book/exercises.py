"""Checkers for the book's coding exercises: run the student's answer, say what is wrong.

Every checker has the same shape::

    check_<thing>(answer, **settings) -> str

- ``answer`` is the student's *function* (the checker calls it on its own
  hand-made cases, chosen so that each typical mistake shows); the anchor
  checkers also accept the *tensor* the function returned for the default
  settings.
- On a right answer the checker prints a one-line verdict starting with
  ``"correct:"`` and returns it.
- On a wrong answer it raises :class:`WrongAnswer` (a subclass of
  ``AssertionError``, so a notebook cell, pytest and ``nbval`` all fail
  loudly) whose message names the mistake and how to fix it, e.g. "your
  anchors have the right areas but h and w are swapped". When the answer is
  wrong in no way the checker recognises, the message shows the first
  differing value, what was expected and the input that produced it.

The library itself is the oracle (``frcnn_lite.boxes``, ``anchors``, ``rpn``,
``evaluate``; ``torchvision.ops.roi_pool`` for RoI pooling). Each known
mistake is a small variant of the right computation (``_iou(..., plus_one=True)``,
...); a checker compares the answer with every variant and reports the one it
matches. tests/test_exercises.py plants each mistake and checks its diagnosis.

Graders for chapter 11's ablation assignments (:func:`grade_anchor_coverage`,
:func:`grade_anchor_scale_ablation`) follow the same convention; they grade
the student's *choices* (anchor scales) and *results tables* rather than a
function.

Chapters: 1 (IoU), 3 (anchors), 4 (Eq. 2), 5 (labels, Eq. 1), 7 (RoI
pooling), 10 (VOC AP), 11 (ablations).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from frcnn_lite.anchors import IGNORED, NEGATIVE, POSITIVE, base_anchors, grid_anchors, label_anchors
from frcnn_lite.boxes import BBOX_XFORM_CLIP, box_iou, decode_boxes, encode_boxes

__all__ = ["WrongAnswer", "check_box_iou", "check_base_anchors", "check_grid_anchors",
           "check_encode_boxes", "check_decode_boxes", "check_label_anchors", "check_rpn_loss",
           "check_roi_pool", "check_voc_ap", "grade_anchor_coverage",
           "grade_anchor_scale_ablation"]

Answer = Union[Callable, torch.Tensor]


class WrongAnswer(AssertionError):
    """An exercise answer is wrong; the message is the diagnosis."""


# -- shared plumbing -------------------------------------------------------------------------
def _correct(message: str) -> str:
    verdict = f"correct: {message}"
    print(verdict)
    return verdict


def _call(fn: Callable, what: str, *args, **kwargs):
    """Call the student's function; turn its exceptions into a diagnosis."""
    if not callable(fn):
        raise WrongAnswer(f"pass your function itself (e.g. my_{what}, without parentheses), "
                          f"got a {type(fn).__name__}.")
    try:
        return fn(*args, **kwargs)
    except WrongAnswer:
        raise
    except Exception as error:  # the student's bug, reported with the input that caused it
        raise WrongAnswer(f"your {what} raised {type(error).__name__}: {error}\n"
                          f"on the input {_show(args)} {_show(kwargs) if kwargs else ''}") from error


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.tolist()})"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _tensor(result, what: str, shape: Tuple[int, ...]) -> torch.Tensor:
    """The answer as a float tensor of ``shape``, or a diagnosis."""
    if isinstance(result, np.ndarray):
        result = torch.from_numpy(result)
    if not isinstance(result, torch.Tensor):
        raise WrongAnswer(f"your {what} must return a torch.Tensor of shape {shape}, got "
                          f"{type(result).__name__}.")
    if tuple(result.shape) != tuple(shape):
        raise WrongAnswer(f"your {what} returned shape {tuple(result.shape)}; expected {shape}.")
    return result.detach().to(torch.float64).cpu()


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> bool:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-4, equal_nan=True))


def _known_mistake(got: torch.Tensor, variants: Dict[str, torch.Tensor], atol: float = 1e-4
                   ) -> Optional[str]:
    """The diagnosis of the first mistake variant ``got`` reproduces, else None."""
    for diagnosis, value in variants.items():
        if _same(got, value, atol):
            return diagnosis
    return None


def _first_difference(got: torch.Tensor, expected: torch.Tensor, what: str, inputs: str,
                      atol: float = 1e-4) -> str:
    bad = ~torch.isclose(got.to(torch.float64), expected.to(torch.float64), atol=atol, rtol=1e-4)
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (f"your {what} is wrong at index {index}: got {got[index].item():.6g}, expected "
            f"{expected[index].item():.6g}.\nInputs: {inputs}")


# -- chapter 1: IoU ---------------------------------------------------------------------------
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


# -- chapter 3: anchors -----------------------------------------------------------------------
def _anchor_result(answer: Answer, what: str, *args) -> torch.Tensor:
    return answer if isinstance(answer, (torch.Tensor, np.ndarray)) else _call(answer, what, *args)


def _centres_sizes(boxes: torch.Tensor):
    return ((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _sorted_rows(boxes: torch.Tensor) -> torch.Tensor:
    rounded = (boxes * 1000).round()
    order = sorted(range(len(boxes)), key=lambda i: rounded[i].tolist())
    return boxes[order]


def check_base_anchors(answer: Answer, scales: Sequence[float] = (128, 256, 512),
                       ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> str:
    """Chapter 3: ``answer(scales, ratios) -> (A, 4)`` anchors centred on (0, 0), or that tensor.

    Expected: scale ``s`` and ratio ``r = h / w`` give ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)`` (area ``s**2``), ratio-major order (all scales of the
    first ratio first), as :func:`frcnn_lite.anchors.base_anchors`.
    """
    expected = base_anchors(scales, ratios).double()
    n_s, n_r = len(scales), len(ratios)
    got = _tensor(_anchor_result(answer, "base_anchors", tuple(scales), tuple(ratios)),
                  "base anchors", (n_s * n_r, 4))
    cx, cy, w, h = _centres_sizes(got)
    if bool((w <= 0).any() | (h <= 0).any()):
        raise WrongAnswer("some anchors have x2 <= x1 or y2 <= y1: write each as "
                          "(-w/2, -h/2, w/2, h/2), corners (x1, y1, x2, y2).")
    if bool((cx.abs() > 1e-3).any() | (cy.abs() > 1e-3).any()):
        where = "all at ({:.4g}, {:.4g})".format(cx[0].item(), cy[0].item()) \
            if _same(cx, cx[:1].expand_as(cx)) and _same(cy, cy[:1].expand_as(cy)) else "not all equal"
        raise WrongAnswer(f"your base anchors are not centred on (0, 0) (centres {where}). The "
                          f"book's base anchors are (-w/2, -h/2, w/2, h/2); grid_anchors adds each "
                          f"cell's centre later. (py-faster-rcnn centres them on (7.5, 7.5), the "
                          f"middle of a 16-pixel cell with inclusive pixel coordinates.)")
    if _same(got, expected):
        return _correct(f"{n_s * n_r} anchors, area s**2, h / w = ratio, centred on (0, 0), "
                        f"ratio-major order.")
    inverted = base_anchors(scales, [1.0 / r for r in ratios]).double()
    if _same(got, inverted):
        raise WrongAnswer("your anchors have the right areas but h and w are swapped: aspect "
                          "ratio means h / w, so w = s / sqrt(r) and h = s * sqrt(r) (a ratio-2 "
                          "anchor is tall).")
    scale_major = expected.reshape(n_r, n_s, 4).transpose(0, 1).reshape(-1, 4)
    if _same(got, scale_major):
        raise WrongAnswer("right anchors, wrong order: yours are scale-major (all ratios of the "
                          "first scale first). The book (like py-faster-rcnn and torchvision) "
                          "orders them ratio-major: anchor index = ratio_index * len(scales) + "
                          "scale_index.")
    if _same(_sorted_rows(got), _sorted_rows(expected)):
        raise WrongAnswer("right anchors, wrong order: anchor index must be ratio_index * "
                          f"len(scales) + scale_index. Expected {expected.tolist()}.")
    _, _, we, he = _centres_sizes(expected)
    swapped = torch.stack((-he, -we, he, we), dim=1) / 2
    if _same(_sorted_rows(got), _sorted_rows(swapped)):
        raise WrongAnswer("your anchors have the right areas but h and w are swapped: aspect "
                          "ratio means h / w, so w = s / sqrt(r) and h = s * sqrt(r) (a ratio-2 "
                          "anchor is tall).")
    areas, expected_areas = (w * h).sort().values, (we * he).sort().values
    if _same(areas, 4 * expected_areas, atol=1e-2):
        raise WrongAnswer("your anchors are twice too large on each side: (-w, -h, w, h) spans "
                          "2w; use (-w/2, -h/2, w/2, h/2).")
    if _same(areas, expected_areas / 4, atol=1e-2):
        raise WrongAnswer("your anchors are half the size on each side: the scale s is the "
                          "anchor's side (area s**2), not its half-side.")
    if _same(areas, expected_areas, atol=1e-2):
        ratio = (h / w).tolist()
        raise WrongAnswer(f"your anchors have the right areas but not the right shapes: their "
                          f"h / w are {[round(r, 3) for r in ratio]}; expected each ratio r "
                          f"of {list(ratios)} exactly (w = s / sqrt(r), h = s * sqrt(r)).")
    raise WrongAnswer(f"your anchors' areas are wrong: sqrt(area) = "
                      f"{[round(v, 2) for v in areas.sqrt().tolist()]}, expected the scales "
                      f"{sorted(float(s) for s in scales)} (each once per ratio). Scale s "
                      f"means area s**2: w = s / sqrt(r), h = s * sqrt(r).")


def _grid(feature_size, stride, base, *, offset=0.5, order="cell", swap=False):
    """grid_anchors with mistakes switchable: (H * W * A, 4)."""
    height, width = feature_size
    ys = (torch.arange(height, dtype=base.dtype) + offset) * stride  # (H,)
    xs = (torch.arange(width, dtype=base.dtype) + offset) * stride  # (W,)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    if swap:  # x from the row index i and y from the column index j
        cy, cx = cx, cy
    if order == "column":
        cy, cx = cy.T, cx.T
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    anchors = centres + base[None]  # (H * W, A, 4)
    if order == "anchor":
        anchors = anchors.transpose(0, 1)
    return anchors.reshape(-1, 4)


def check_grid_anchors(answer: Answer, feature_size: Tuple[int, int] = (2, 3), stride: float = 16,
                       base: Optional[torch.Tensor] = None) -> str:
    """Chapter 3: ``answer(feature_size (H, W), stride, base (A, 4)) -> (H * W * A, 4)``.

    Cell ``(i, j)`` is centred at ``((j + 0.5) * stride, (i + 0.5) * stride)``;
    anchor ``(i * W + j) * A + a`` is base anchor ``a`` at cell ``(i, j)``. The
    default feature map is not square, so swapping H and W shows.
    """
    base = base_anchors((32, 64), (0.5, 1.0)) if base is None else base
    height, width = feature_size
    count = height * width * base.shape[0]
    result = _anchor_result(answer, "grid_anchors", tuple(feature_size), stride, base.clone())
    if isinstance(result, torch.Tensor) and result.dim() == 2 and result.shape[0] == height * width:
        raise WrongAnswer(f"you returned {height * width} anchors, one per cell; every cell gets "
                          f"all A = {base.shape[0]} base anchors: H * W * A = {count}.")
    got = _tensor(result, "grid anchors", (count, 4))
    expected = grid_anchors(feature_size, stride, base).double()
    if _same(got, expected):
        return _correct(f"{count} anchors, centred at ((j + 0.5) * stride, (i + 0.5) * stride), "
                        f"ordered by row, column, base anchor.")
    b = base.double()
    mistake = _known_mistake(got, {
        "your anchors sit on the cells' top-left corners: cell (i, j) is centred at "
        "((j + 0.5) * stride, (i + 0.5) * stride), half a cell further.": _grid(
            feature_size, stride, b, offset=0.0),
        "x and y are swapped: x comes from the column index j (W of them), y from the row index "
        "i (H of them).": _grid(feature_size, stride, b, swap=True),
        "right anchors, wrong order: yours loop over base anchors outermost; the book orders "
        "row, then column, then base anchor (anchor (i * W + j) * A + a), matching the RPN "
        "head's outputs.": _grid(feature_size, stride, b, order="anchor"),
        "right anchors, wrong order: yours go down columns first; the book orders by row i, "
        "then column j (anchor (i * W + j) * A + a).": _grid(feature_size, stride, b,
                                                                 order="column"),
    })
    if mistake:
        raise WrongAnswer(mistake)
    if _same(_sorted_rows(got), _sorted_rows(expected)):
        raise WrongAnswer("right anchors, wrong order: anchor (i * W + j) * A + a must be base "
                          "anchor a at row i, column j.")
    raise WrongAnswer(_first_difference(got, expected, "grid anchors",
                                        f"feature_size={feature_size}, stride={stride}, "
                                        f"base={base.tolist()}"))


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


# -- chapter 5: anchor labels and Eq. 1 -------------------------------------------------------
# A 60 x 40 image with three boxes and anchors placed so that each labelling rule decides one
# anchor (IoUs are exact in float32: areas are whole numbers).
_LABEL_IMAGE = (40, 60)  # (H, W)
_LABEL_GT = torch.tensor([[10., 10., 20., 20.],    # g0, area 100
                          [40., 20., 56., 36.],    # g1, area 256, near the right border
                          [2., 30., 8., 36.]])     # g2, area 36, small
_LABEL_ANCHORS = torch.tensor([
    [10., 10., 20., 20.],   # 0: IoU 1 with g0                      -> positive
    [10., 10., 20., 17.],   # 1: IoU 0.7 exactly with g0            -> positive (>= fg_iou)
    [10., 10., 20., 13.],   # 2: IoU 0.3 exactly with g0            -> ignored (not < bg_iou)
    [10., 10., 20., 15.],   # 3: IoU 0.5 with g0                    -> ignored
    [30., 0., 40., 10.],    # 4: IoU 0 with everything              -> negative
    [40., 20., 50., 30.],   # 5: IoU 0.39, g1's best inside anchor  -> positive (best-anchor rule)
    [44., 24., 52., 32.],   # 6: IoU 0.25 with g1                   -> negative
    [0., 26., 12., 38.],    # 7: IoU 0.25, g2's best anchor         -> positive (best rule wins)
    [-5., 10., 15., 20.],   # 8: crosses the left border            -> ignored
    [40., 20., 61., 36.],   # 9: IoU 0.76 with g1 but crosses x = 60 -> ignored
])
_ROLES = {1: "an anchor with IoU exactly fg_iou = 0.7", 2: "an anchor with IoU exactly bg_iou = 0.3",
          5: "g1's best anchor inside the image (IoU 0.39)",
          7: "g2's best anchor (IoU 0.25, below bg_iou)"}
_NAMES = {POSITIVE: "positive (1)", NEGATIVE: "negative (0)", IGNORED: "ignored (-1)"}


def check_label_anchors(answer: Callable) -> str:
    """Chapter 5: ``answer(anchors (N, 4), gt_boxes (G, 4), image_size (H, W), fg_iou=0.7,
    bg_iou=0.3) -> labels (N,)`` (or ``(labels, matched)``) with 1 / 0 / -1 (§3.1.2)."""
    expected, _ = label_anchors(_LABEL_ANCHORS, _LABEL_GT, _LABEL_IMAGE)
    result = _call(answer, "label_anchors", _LABEL_ANCHORS.clone(), _LABEL_GT.clone(),
                   _LABEL_IMAGE, 0.7, 0.3)
    result = result[0] if isinstance(result, (tuple, list)) else result
    got = _tensor(result, "label_anchors", (len(_LABEL_ANCHORS),)).long()
    if not set(got.tolist()) <= {POSITIVE, NEGATIVE, IGNORED}:
        raise WrongAnswer(f"labels must be 1 (positive), 0 (negative) or -1 (ignored); got "
                          f"{sorted(set(got.tolist()))}.")
    if not torch.equal(got, expected):
        problems = []
        if got[8] != IGNORED or got[9] != IGNORED:
            problems.append("anchors that cross the image border must be ignored (-1) in "
                            "training, whatever their IoU (§3.1.3): anchor [-5, 10, 15, 20] "
                            f"got {_NAMES[int(got[8])]}, anchor [40, 20, 61, 36] (x2 > W = 60) "
                            f"got {_NAMES[int(got[9])]}. Give them IoU -1 before matching.")
        if got[1] != POSITIVE:
            problems.append(f"{_ROLES[1]} must be positive (IoU >= fg_iou, not >); got "
                            f"{_NAMES[int(got[1])]}.")
        if got[2] == NEGATIVE:
            problems.append(f"{_ROLES[2]} must be ignored: negative means IoU < bg_iou "
                            f"strictly; got negative.")
        for i in (5, 7):
            if got[i] == POSITIVE or (i == 5 and got[9] != IGNORED):
                continue
            if got[i] == NEGATIVE and i == 7 and got[5] == POSITIVE:
                problems.append(f"{_ROLES[7]} ended negative: apply the best-anchor rule after "
                                f"the negative rule, so each box keeps its best anchor even when "
                                f"that IoU is below bg_iou (order of the rules).")
            else:
                problems.append(f"{_ROLES[i]} must be positive: every ground-truth box gets the "
                                f"anchor(s) with the highest IoU as positives, even below fg_iou "
                                f"(§3.1.2, the rule that gives small boxes a positive); got "
                                f"{_NAMES[int(got[i])]}.")
        wrong = [i for i in range(len(got)) if got[i] != expected[i]]
        if not problems:
            problems.append(f"anchors {wrong} are labelled {[int(got[i]) for i in wrong]}, "
                            f"expected {[int(expected[i]) for i in wrong]}.")
        raise WrongAnswer("\n".join(problems) + f"\nInputs: anchors={_LABEL_ANCHORS.tolist()}, "
                          f"gt_boxes={_LABEL_GT.tolist()}, image_size (H, W)={_LABEL_IMAGE}")
    empty = _call(answer, "label_anchors", _LABEL_ANCHORS.clone(), torch.zeros(0, 4),
                  _LABEL_IMAGE, 0.7, 0.3)
    empty = _tensor(empty[0] if isinstance(empty, (tuple, list)) else empty, "label_anchors",
                    (len(_LABEL_ANCHORS),)).long()
    expected_empty, _ = label_anchors(_LABEL_ANCHORS, torch.zeros(0, 4), _LABEL_IMAGE)
    if not torch.equal(empty, expected_empty):
        raise WrongAnswer(f"an image with no boxes: every anchor inside the image is negative "
                          f"(border anchors stay ignored); got {empty.tolist()}.")
    return _correct("border anchors ignored, IoU >= 0.7 positive, < 0.3 negative, every box "
                    "keeps its best anchor, empty images all negative.")


def _rpn_terms(logits, deltas, labels, targets, *, num_locations, lambda_reg, n_cls="sampled",
               ignored_as_negative=False, n_reg="locations", reg_on="positive", loss="smooth_l1",
               per_coordinate=False):
    """Eq. 1's two terms with the typical mistakes switchable: two scalars."""
    cls_labels = labels.clamp(min=0) if ignored_as_negative else labels
    sampled = cls_labels >= 0
    ce = F.cross_entropy(logits[sampled], cls_labels[sampled], reduction="sum")
    cls = ce / {"sampled": sampled.sum(), "all": torch.tensor(len(labels))}[n_cls]
    rows = labels == POSITIVE if reg_on == "positive" else labels >= 0
    diff = deltas[rows] - targets[rows]
    if loss == "smooth_l1":
        box = F.smooth_l1_loss(deltas[rows], targets[rows], reduction="sum", beta=1.0)
    elif loss == "l2":
        box = (diff ** 2).sum()
    else:
        box = diff.abs().sum()
    box = box / 4 if per_coordinate else box
    denominator = {"locations": num_locations, "sampled": int((labels >= 0).sum()),
                   "positives": int((labels == POSITIVE).sum())}[n_reg]
    return cls, lambda_reg * box / denominator


def check_rpn_loss(answer: Callable, normalization: str = "paper", lambda_reg: float = 10.0) -> str:
    """Chapters 5-6: Eq. 1, ``answer(cls_logits (N, 2), deltas (N, 4), labels (N,),
    regression_targets (N, 4), num_locations=..., lambda_reg=...)``.

    Returns the dict ``{"loss_objectness", "loss_rpn_box_reg"}`` (like
    :func:`frcnn_lite.rpn.rpn_loss`) or the scalar sum. ``normalization``:
    ``"paper"`` (N_reg = anchor locations) or ``"batch"`` (N_reg = sampled anchors).
    """
    from frcnn_lite.rpn import rpn_loss

    if normalization not in ("paper", "batch"):
        raise ValueError(f"normalization must be 'paper' or 'batch', got {normalization!r}.")
    generator = torch.Generator().manual_seed(5)
    n, num_locations = 40, 10  # 10 locations x A = 4 anchors
    logits = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    deltas = 2 * torch.randn(n, 4, generator=generator, dtype=torch.float64)  # |diff| both sides of 1
    targets = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    labels = torch.full((n,), IGNORED, dtype=torch.int64)
    labels[torch.arange(0, 12, 2)] = POSITIVE  # 6 positives
    labels[torch.arange(20, 30)] = NEGATIVE  # 10 negatives; 24 ignored
    expected = rpn_loss(logits, deltas, labels, targets, num_locations=num_locations,
                        normalization=normalization, lambda_reg=lambda_reg)
    right_cls, right_box = expected["loss_objectness"], expected["loss_rpn_box_reg"]
    result = _call(answer, "rpn_loss", logits.clone(), deltas.clone(), labels.clone(),
                   targets.clone(), num_locations=num_locations, lambda_reg=lambda_reg)
    terms = dict(num_locations=num_locations, lambda_reg=lambda_reg,
                 n_reg="locations" if normalization == "paper" else "sampled")
    other = "sampled anchors (normalization='batch')" if normalization == "paper" \
        else "anchor locations (normalization='paper')"
    right_n_reg = ("the number of anchor locations Hf * Wf (~2400 in the paper; here "
                   f"{num_locations})" if normalization == "paper"
                   else "the number of sampled anchors (here 16)")
    args = (logits, deltas, labels, targets)
    cls_mistakes = {
        "L_cls is averaged over every anchor; N_cls is the number of *sampled* anchors (labels "
        "0 or 1; 256 per image in the paper).": dict(n_cls="all"),
        "ignored anchors (label -1) entered the classification loss as negatives; leave them out "
        "and divide by the number of sampled anchors.": dict(ignored_as_negative=True, n_cls="all"),
        "ignored anchors (label -1) entered the classification loss as negatives; only labels 0 "
        "and 1 count.": dict(ignored_as_negative=True),
    }
    box_mistakes = {
        f"the box loss is divided by the wrong N_reg: you used the {other}; the setting asks "
        f"for {right_n_reg}.": dict(n_reg="sampled" if normalization == "paper" else "locations"),
        f"the box loss is divided by the number of positives; Eq. 1 divides by N_reg = "
        f"{right_n_reg}.": dict(n_reg="positives"),
        "the box loss counts negative anchors too: p*_i in Eq. 1 switches it off for every "
        "anchor that is not positive.": dict(reg_on="sampled"),
        f"lambda is missing: multiply the box term by lambda_reg = {lambda_reg}.":
            dict(lambda_reg=1.0),
        "the box loss must be smooth L1 (0.5 x**2 below |x| = 1, |x| - 0.5 above), not squared "
        "error.": dict(loss="l2"),
        "the box loss must be smooth L1 (0.5 x**2 below |x| = 1, |x| - 0.5 above), not plain "
        "L1.": dict(loss="l1"),
        "the box loss is averaged over the 4 coordinates; L_reg sums them.":
            dict(per_coordinate=True),
    }

    def cls_variant(flags):
        return _rpn_terms(*args, **terms, **flags)[0]

    def box_variant(flags):
        return _rpn_terms(*args, **{**terms, **flags})[1]

    if isinstance(result, dict):
        missing = {"loss_objectness", "loss_rpn_box_reg"} - set(result)
        if missing:
            raise WrongAnswer(f"your rpn_loss's dict lacks {sorted(missing)}.")
        got_cls = _tensor(torch.as_tensor(result["loss_objectness"]).reshape(()), "rpn_loss", ())
        got_box = _tensor(torch.as_tensor(result["loss_rpn_box_reg"]).reshape(()), "rpn_loss", ())
        problems = []
        if not _same(got_cls, right_cls):
            problems.append(_known_mistake(got_cls, {k: cls_variant(v) for k, v in
                                                     cls_mistakes.items()})
                            or f"loss_objectness is {got_cls.item():.6g}, expected "
                               f"{right_cls.item():.6g} (two-class log loss over sampled anchors "
                               f"/ N_cls).")
        if not _same(got_box, right_box):
            problems.append(_known_mistake(got_box, {k: box_variant(v) for k, v in
                                                     box_mistakes.items()})
                            or f"loss_rpn_box_reg is {got_box.item():.6g}, expected "
                               f"{right_box.item():.6g} (lambda / N_reg x smooth L1 over "
                               f"positive anchors).")
        if problems:
            raise WrongAnswer("\n".join(problems))
    else:
        got = _tensor(torch.as_tensor(result).reshape(()), "rpn_loss", ())
        if not _same(got, right_cls + right_box):
            variants = {k: cls_variant(v) + right_box for k, v in cls_mistakes.items()}
            variants.update({k: right_cls + box_variant(v) for k, v in box_mistakes.items()})
            raise WrongAnswer(_known_mistake(got, variants) or
                              f"your loss is {got.item():.6g}, expected {right_cls.item():.6g} "
                              f"(classification) + {right_box.item():.6g} (boxes) = "
                              f"{(right_cls + right_box).item():.6g}. Return the two terms as a "
                              f"dict to see which one is wrong.")
    return _correct(f"Eq. 1 with N_cls = sampled anchors, N_reg = {right_n_reg}, "
                    f"lambda = {lambda_reg}, smooth L1 on positives.")


# -- chapter 7: RoI pooling -------------------------------------------------------------------
def _roi_pool(features, rois, output_size, scale, *, rounding="half_away", plus_one=True,
              pool="max", use_batch=True, empty=0.0, apply_scale=True):
    """A slow, loop-based RoI pool with mistakes switchable: (R, C, out_h, out_w)."""
    out_h, out_w = output_size
    _, channels, height, width = features.shape
    rnd = {"half_away": lambda v: math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1),
           "half_even": lambda v: float(torch.round(torch.tensor(v))), "floor": math.floor}[rounding]
    out = torch.zeros(len(rois), channels, out_h, out_w, dtype=features.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        s = scale if apply_scale else 1.0
        xs, ys = int(rnd(x1 * s)), int(rnd(y1 * s))
        xe, ye = int(rnd(x2 * s)), int(rnd(y2 * s))
        one = 1 if plus_one else 0
        roi_w, roi_h = max(xe - xs + one, 1), max(ye - ys + one, 1)
        bw, bh = roi_w / out_w, roi_h / out_h
        fmap = features[int(b) if use_batch else 0]
        for i in range(out_h):
            y_lo = min(max(math.floor(i * bh) + ys, 0), height)
            y_hi = min(max(math.ceil((i + 1) * bh) + ys, 0), height)
            for j in range(out_w):
                x_lo = min(max(math.floor(j * bw) + xs, 0), width)
                x_hi = min(max(math.ceil((j + 1) * bw) + xs, 0), width)
                if y_hi <= y_lo or x_hi <= x_lo:
                    out[r, :, i, j] = empty
                    continue
                cells = fmap[:, y_lo:y_hi, x_lo:x_hi].reshape(channels, -1)
                out[r, :, i, j] = cells.amax(dim=1) if pool == "max" else cells.mean(dim=1)
    return out


def check_roi_pool(answer: Callable) -> str:
    """Chapter 7: ``answer(features (B, C, H, W), rois (R, 5), output_size (out_h, out_w),
    spatial_scale) -> (R, C, out_h, out_w)``, equal to ``torchvision.ops.roi_pool``."""
    from torchvision.ops import roi_pool as tv_roi_pool

    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 12, 14, generator=generator)
    # Scale 1/2: x1 = 5 lands on 2.5 (C rounds it to 3, torch.round to 2); an RoI partly
    # off the map; a one-pixel RoI; one in image 1.
    rois = torch.tensor([[0., 5., 3., 21., 17.], [1., 1., 1., 9., 23.], [1., 20., 14., 40., 30.],
                         [0., 8., 8., 9., 9.], [1., 0., 0., 27., 23.]])
    size, scale = (3, 2), 0.5
    expected = tv_roi_pool(features, rois, size, scale).double()
    result = _call(answer, "roi_pool", features.clone(), rois.clone(), size, scale)
    if isinstance(result, torch.Tensor) and tuple(result.shape) == (5, 3, 2, 3):
        raise WrongAnswer("your output is (R, C, out_w, out_h); output_size is (out_h, out_w), "
                          "rows first: the result must be (R, C, out_h, out_w) = (5, 3, 3, 2).")
    got = _tensor(result, "roi_pool", (5, 3) + size)
    if _same(got, expected, atol=1e-5):
        return _correct("RoI max pooling equals torchvision.ops.roi_pool: C rounding, both ends "
                        "included, bins floor/ceil, empty bins 0, per-image batch index.")
    args = (features.double(), rois, size, scale)
    mistake = _known_mistake(got, {
        "rounding: 2.5 must round to 3 (C's round, halves away from zero); torch.round "
        "rounds halves to even (2.5 -> 2). Use floor(x + 0.5) for x >= 0, or "
        "frcnn_lite.roi_pool.round_half_away.": _roi_pool(*args, rounding="half_even"),
        "rounding: RoI corners are rounded to the nearest cell (2.7 -> 3), not floored.":
            _roi_pool(*args, rounding="floor"),
        "the RoI's size in cells includes both ends: roi_w = x_end - x_start + 1.": _roi_pool(
            *args, plus_one=False),
        "spatial_scale is not applied: multiply the RoI's pixel coordinates by it (1/16) to "
        "reach feature cells.": _roi_pool(*args, apply_scale=False),
        "this is average pooling; RoI pooling takes the max of each bin.": _roi_pool(
            *args, pool="mean"),
        "the batch index (rois[:, 0]) is ignored: each RoI must be pooled from its own image.":
            _roi_pool(*args, use_batch=False),
    }, atol=1e-5)
    if mistake:
        raise WrongAnswer(mistake)
    if not bool(torch.isfinite(got).all()):
        raise WrongAnswer("some outputs are -inf or NaN: a bin that falls entirely off the "
                          "feature map is empty and must output 0.")
    raise WrongAnswer(_first_difference(got, expected, "roi_pool",
                                        f"rois={rois.tolist()}, output_size={size}, "
                                        f"spatial_scale={scale}", atol=1e-5))


# -- chapter 10: VOC AP -----------------------------------------------------------------------
def _ap(recall, precision, use_07, *, envelope=True, tenths="exact", points=11, first=True):
    """VOC AP with mistakes switchable."""
    r, p = np.asarray(recall, float), np.asarray(precision, float)
    if envelope:
        p = np.maximum.accumulate(p[::-1])[::-1]
    if use_07:
        grid = np.arange(11) / 10.0 if tenths == "exact" else np.arange(0.0, 1.1, 0.1)
        values = [p[r >= t].max() if (r >= t).any() else 0.0 for t in grid]
        return float(np.sum(values) / points)
    mrec = np.concatenate(([0.0], r)) if first else r
    mpre = np.concatenate(([0.0], p)) if first else p
    return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))


def check_voc_ap(answer: Callable) -> str:
    """Chapter 10: ``answer(recall (n,), precision (n,), use_07_metric) -> float`` (VOC AP).

    The curve has a recall of exactly 0.3 and a precision that rises again,
    so the precision envelope and exact tenths both matter.
    """
    from frcnn_lite.evaluate import voc_ap

    tp = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], dtype=float)  # 6 of 10 ground-truth boxes
    recall = np.cumsum(tp) / 10.0  # reaches exactly 0.3 at detection 4
    precision = np.cumsum(tp) / np.arange(1, 11)
    for use_07 in (True, False):
        expected = voc_ap(recall, precision, use_07)
        got = float(_call(answer, "voc_ap", recall.copy(), precision.copy(), use_07))
        if abs(got - expected) < 1e-6:
            continue
        rule = "the 11-point rule (use_07_metric=True)" if use_07 else \
            "the area rule (use_07_metric=False)"
        mistakes = {
            f"you computed {'the area rule' if use_07 else 'the 11-point rule'} when "
            f"{rule} was asked for.": _ap(recall, precision, not use_07),
            "the precision is not made monotone first: take the envelope, at each recall the "
            "best precision at that recall or beyond (np.maximum.accumulate from the right).":
                _ap(recall, precision, use_07, envelope=False),
        }
        if use_07:
            mistakes["recall thresholds drift: np.arange(0, 1.1, 0.1) gives "
                     "0.30000000000000004, which a recall of exactly 0.3 misses; use "
                     "np.arange(11) / 10."] = _ap(recall, precision, True, tenths="arange")
            mistakes["the 11-point rule averages 11 values (recall 0, 0.1, ..., 1.0): divide "
                     "by 11, not 10."] = _ap(recall, precision, True, points=10)
        else:
            mistakes["the area starts at recall 0: prepend the point (recall 0) so the first "
                     "step counts."] = _ap(recall, precision, False, first=False)
        diagnosis = next((k for k, v in mistakes.items() if abs(got - v) < 1e-6), None)
        raise WrongAnswer(diagnosis or f"for {rule} your AP is {got:.6f}, expected "
                          f"{expected:.6f}.\nInputs: recall={recall.tolist()}, "
                          f"precision={[round(v, 4) for v in precision]}")
    return _correct("VOC AP: precision envelope, 11 exact recall points (2007) and the area "
                    "rule (2010+).")


# -- chapter 11: graded ablation assignments ------------------------------------------------
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
