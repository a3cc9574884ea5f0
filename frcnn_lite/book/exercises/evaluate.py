"""Checker for chapter 10: VOC average precision (11-point and area rules).

The oracle is :func:`frcnn_lite.evaluate.voc_ap`; ``_ap`` is VOC AP with the
typical mistakes switchable.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from frcnn_lite.book.exercises._common import WrongAnswer, _call, _correct


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
