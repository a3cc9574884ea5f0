"""Checkers for chapter 5 (and 6): anchor labels (§3.1.2) and the RPN loss (Eq. 1).

The oracles are :func:`frcnn_lite.anchors.label_anchors` and
:func:`frcnn_lite.rpn.rpn_loss`; ``_rpn_terms`` is Eq. 1 with the typical
mistakes switchable.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from frcnn_lite.anchors import IGNORED, NEGATIVE, POSITIVE, label_anchors
from frcnn_lite.book.exercises._common import WrongAnswer, _call, _correct, _known_mistake, \
    _same, _tensor


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
