"""RoI max pooling, from scratch: a fixed-size feature for a box of any size.

Paper: Fast R-CNN (Girshick, 2015) §2.1, used by Faster R-CNN §3.2 for the
detection head. An RoI ``(x1, y1, x2, y2)`` in input pixels is mapped onto the
feature map (times ``spatial_scale`` = 1/16), cut into ``out_h x out_w`` bins
(7 x 7), and every bin is max-pooled, so a box of any size gives a
``(C, 7, 7)`` feature that the fully connected layers can take.

The bins are *quantised* to whole feature cells. The rules, exactly as
``torchvision.ops.roi_pool`` (and Caffe's RoIPoolingLayer before it) apply
them, in the dtype of the features (float32 arithmetic for float32 maps):

1. RoI corners to cells: ``x_start = round(x1 * scale)``, ``x_end = round(x2 *
   scale)`` (same for y), where ``round`` is C's round: halves go *away from
   zero* (``round(2.5) = 3``), unlike ``torch.round`` which rounds halves to
   even (``torch.round(2.5) = 2``).
2. RoI size in cells, both ends included: ``roi_w = max(x_end - x_start + 1,
   1)``, so a malformed RoI (x2 < x1) becomes one cell.
3. Bin size (a float): ``bin_w = roi_w / out_w``.
4. Bin ``j`` covers columns ``[floor(j * bin_w), ceil((j + 1) * bin_w))`` plus
   ``x_start``, clipped to ``[0, W]``. Neighbouring bins may share a column.
5. Each bin takes the max of its cells. A bin left empty by the clipping (an
   RoI partly or wholly off the map) outputs 0.
6. Backward: each output's gradient goes to the cell that held the max (the
   first one in row-major order on ties); empty bins send no gradient; a cell
   that is the max of several bins gets the sum. (The max is a switch: it
   passes on its input's value, and so its gradient, from one cell only.)

Shape glossary: ``B`` images, ``C`` channels, ``H, W`` feature-map size, ``R``
RoIs, ``out_h, out_w`` the output grid (7 x 7), ``kh, kw`` the tallest and
widest bin (in cells) among the given RoIs.

Two implementations, equal in values and gradients (tests/test_roi_pool.py):

- :func:`roi_pool_reference`, the rules above as plain loops over RoIs and
  bins; autograd differentiates it. Read this one first.
- :func:`roi_pool`, the one the detector uses: every bin of every RoI in one
  gather, with a hand-written backward pass (:mod:`frcnn_lite.roi_pool_fast`).

Built in chapter 7.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

from frcnn_lite.layer_checks import check_roi_pool_inputs, check_rois, output_pair
from frcnn_lite.roi_pool_fast import roi_pool_fast

Rois = Union[torch.Tensor, Sequence[torch.Tensor]]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: nearest integer, halves away from zero, ``(N,) -> (N,)``.

    ``round_half_away(2.5) = 3`` and ``round_half_away(-2.5) = -3``, while
    ``torch.round`` gives 2 and -2 (it rounds halves to even).
    ``x - trunc(x)`` is exact in floating point, so there is no
    ``floor(x + 0.5)`` error near halves.
    """
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5).to(x.dtype)


def rois_from_boxes(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes ``[(R_i, 4), ...]`` -> rois ``(R, 5)`` = ``[image index, x1, y1, x2, y2]``."""
    check_rois(boxes)
    index = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device)
                       for i, b in enumerate(boxes)])  # (R, 1)
    return torch.cat([index, torch.cat(list(boxes))], dim=1)  # (R, 5)


def as_rois(rois: Rois) -> torch.Tensor:
    """``(R, 5)`` rois as they are, or a list of per-image ``(R_i, 4)`` boxes joined."""
    return rois if isinstance(rois, torch.Tensor) else rois_from_boxes(rois)


def bin_edges(start: torch.Tensor, end: torch.Tensor, bins: int, size: int,
              dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantised bin edges along one axis (rules 2-4 of the module docstring).

    Args:
        start, end: ``(R,)`` int64 first and last cell of each RoI (rule 1).
        bins: number of bins along this axis (``out_w`` or ``out_h``).
        size: feature-map length along this axis (``W`` or ``H``).
        dtype: the float type of the bin size (the features').

    Returns:
        ``(lo, hi)``, each ``(R, bins)`` int64: bin ``j`` of RoI ``r`` covers
        cells ``lo[r, j] <= i < hi[r, j]``; ``lo == hi`` is an empty bin.
    """
    length = (end - start + 1).clamp(min=1)  # (R,) cells, both ends included
    # Divide by a tensor, not the Python int: on a GPU, PyTorch divides by a
    # Python number as a multiply by its reciprocal, which can be one bit off
    # (3 / 5 -> 0.6000000000000001) and move a bin edge past a whole cell.
    bins_t = torch.full((), bins, dtype=dtype, device=start.device)
    bin_size = (length.to(dtype) / bins_t)[:, None]  # (R, 1), as the C kernel
    j = torch.arange(bins, dtype=dtype, device=start.device)[None, :]  # (1, J)
    lo = torch.floor(j * bin_size).long() + start[:, None]  # (R, bins)
    hi = torch.ceil((j + 1) * bin_size).long() + start[:, None]  # (R, bins)
    return lo.clamp(0, size), hi.clamp(0, size)


def quantised_bins(rois: torch.Tensor, feature_size: Tuple[int, int],
                   output_size: Union[int, Tuple[int, int]] = 7,
                   spatial_scale: float = 1.0 / 16) -> List[torch.Tensor]:
    """The cells each bin pools (rules 1-4): ``(R, 5) -> [x_lo, x_hi, y_lo, y_hi]``.

    ``x_lo, x_hi`` are ``(R, out_w)`` and ``y_lo, y_hi`` ``(R, out_h)`` int64
    cell indices; bin ``(i, j)`` of RoI ``r`` pools rows ``y_lo[r, i] <= y <
    y_hi[r, i]`` and columns ``x_lo[r, j] <= x < x_hi[r, j]`` of a map of
    ``feature_size (H, W)``. Both implementations read their bins from here;
    chapter 7 draws them.
    """
    out_h, out_w = output_pair(output_size)
    check_rois(rois, batched=True)
    height, width = feature_size
    scale = torch.full((), spatial_scale, dtype=rois.dtype, device=rois.device)
    corners = round_half_away(rois[:, 1:] * scale).long()  # (R, 4), rule 1
    x_lo, x_hi = bin_edges(corners[:, 0], corners[:, 2], out_w, width, rois.dtype)
    y_lo, y_hi = bin_edges(corners[:, 1], corners[:, 3], out_h, height, rois.dtype)
    return [x_lo, x_hi, y_lo, y_hi]


def roi_pool_reference(features: torch.Tensor, rois: Rois,
                       output_size: Union[int, Tuple[int, int]],
                       spatial_scale: float = 1.0) -> torch.Tensor:
    """RoI max pooling as plain loops, ``(B, C, H, W), (R, 5) -> (R, C, 7, 7)``.

    Rule 5 by hand: each bin is the max over its cells, an empty bin is 0.
    ``max(dim=1)`` returns the first maximal cell in row-major order, so its
    gradient (rule 6) goes where torchvision's does. Slow (one small max per
    bin of every RoI), but every step is visible.
    """
    rois = as_rois(rois)
    out_h, out_w = check_roi_pool_inputs(features, rois, output_size,
                                         spatial_scale)
    _, channels, height, width = features.shape
    bins = quantised_bins(rois, (height, width), (out_h, out_w), spatial_scale)
    x_lo, x_hi, y_lo, y_hi = (t.tolist() for t in bins)  # rules 1-4
    empty = features.new_zeros(channels)  # an empty bin outputs 0
    pooled = []  # (C,) per bin; stacked once (writing into a tensor bin by bin
    # would make autograd copy the whole output at every write)
    for r, b in enumerate(rois[:, 0].long().tolist()):
        for i in range(out_h):
            for j in range(out_w):
                rows = slice(y_lo[r][i], y_hi[r][i])
                cols = slice(x_lo[r][j], x_hi[r][j])
                cells = features[b, :, rows, cols].flatten(1)  # (C, h * w)
                best = cells.max(dim=1).values if cells.shape[1] else empty
                pooled.append(best)
    if not pooled:
        return features.new_zeros((0, channels, out_h, out_w))
    out = torch.stack(pooled).view(-1, out_h, out_w, channels)  # (R, oh, ow, C)
    return out.permute(0, 3, 1, 2)  # (R, C, out_h, out_w)


def roi_pool(features: torch.Tensor, rois: Rois,
             output_size: Union[int, Tuple[int, int]],
             spatial_scale: float = 1.0, *, validate: bool = True):
    """RoI max pooling (Fast R-CNN §2.1): rois ``(R, 5)`` -> ``(R, C, 7, 7)``.

    Same meaning, values and gradients as ``torchvision.ops.roi_pool`` and
    :func:`roi_pool_reference`, computed without a loop over RoIs
    (:func:`frcnn_lite.roi_pool_fast.roi_pool_fast`).

    Args:
        features: ``(B, C, H, W)`` feature maps of a batch of images.
        rois: ``(R, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in input
            pixels, or a list of per-image ``(R_i, 4)`` boxes. Boxes may reach
            past the map (their off-map bins give 0).
        output_size: ``out_h`` (= ``out_w``) or ``(out_h, out_w)``; 7 here.
        spatial_scale: feature cells per input pixel, 1 / stride (1/16 in the
            paper; the default 1.0, as in torchvision, means boxes in cells).
        validate: check RoI values (finite, batch index in ``[0, B)``); this
            reads the tensor, so the detection head, whose RoIs are its own,
            passes False.
    """
    rois = as_rois(rois)
    size = check_roi_pool_inputs(features, rois, output_size, spatial_scale,
                                 validate=validate)
    bins = quantised_bins(rois, features.shape[-2:], size, spatial_scale)
    return roi_pool_fast(features, rois[:, 0].long(), bins)
