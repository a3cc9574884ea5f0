"""Checker for chapter 7: RoI max pooling, equal to ``torchvision.ops.roi_pool``.

``_roi_pool`` is a slow loop over bins with the typical mistakes switchable.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from frcnn_lite.book.exercises._common import WrongAnswer, _call, _correct, \
    _first_difference, _known_mistake, _same, _tensor


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
