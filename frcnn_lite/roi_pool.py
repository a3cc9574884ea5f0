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

How this implementation works: the max over a bin of ``h x w`` cells is one
value of a stride-1 ``h x w`` max pool of the whole map, read at the bin's
top-left cell. So the map is max-pooled once per bin size that occurs (at
most ``kh * kw`` sizes, a handful), and every bin of every RoI is then read
off the map of its size in one gather: there is no loop over RoIs. Each pool
is grown from a smaller one, one row or column of cells at a time.

The backward pass (rule 6) is written out by hand, in :class:`RoIPoolFunction`:
while training, the pools also record *which* cell held each max (the
earlier cell on a tie), and the backward adds every output's gradient to its
cell with one ``index_add_``. (Letting autograd differentiate the dozens of
pooling steps instead gives the same numbers, 2-3x slower.) The extra memory
is ``kh * kw`` pooled copies of the map, twice that when training: a few MB
for the book's maps; for VGG-16 on a 600 x 1000 image, 5 MB per copy and
``kh x kw`` from about 4 x 4 (300 px proposals) to 6 x 10 (whole-image ones).
On a CPU this beats torchvision's C++ loop in inference, and in training on
the book's maps; with large bins (VGG-16, whole-image RoIs) the head's
``roi_pool_impl="torchvision"`` trains faster (chapter 13).

Built in chapter 7.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

Rois = Union[torch.Tensor, Sequence[torch.Tensor]]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: to the nearest integer, halves away from zero (``(N,) -> (N,)``).

    ``round_half_away(2.5) = 3`` and ``round_half_away(-2.5) = -3``, while
    ``torch.round`` gives 2 and -2 (it rounds halves to even). ``x - trunc(x)``
    is exact in floating point, so there is no ``floor(x + 0.5)`` error near
    halves.
    """
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5).to(x.dtype)


def rois_from_boxes(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes ``[(R_i, 4), ...]`` -> rois ``(R, 5)`` = ``[image index, x1, y1, x2, y2]``."""
    if len(boxes) == 0:
        raise ValueError("need one (R_i, 4) box tensor per image, got an empty list.")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be an (R_i, 4) tensor of (x1, y1, x2, y2), got {shape}.")
    index = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device)
                       for i, b in enumerate(boxes)])  # (R, 1)
    return torch.cat([index, torch.cat(list(boxes))], dim=1)  # (R, 5)


def bin_edges(start: torch.Tensor, end: torch.Tensor, bins: int, size: int, dtype: torch.dtype
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantised bin edges along one axis (rules 2-4 of the module docstring).

    Args:
        start, end: ``(R,)`` int64 first and last cell of each RoI (rule 1).
        bins: number of bins along this axis (``out_w`` or ``out_h``).
        size: feature-map length along this axis (``W`` or ``H``).
        dtype: the float type the bin size is computed in (the features').

    Returns:
        ``(lo, hi)``, each ``(R, bins)`` int64: bin ``j`` of RoI ``r`` covers cells
        ``lo[r, j] <= i < hi[r, j]``; ``lo == hi`` means an empty bin.
    """
    length = (end - start + 1).clamp(min=1)  # (R,) RoI size in cells, ends included
    # (R,) float, as in the C kernel. Divide by a tensor, not the Python int: on a GPU,
    # PyTorch divides by a Python number as a multiply by its reciprocal, which can be one
    # bit off (3 / 5 -> 0.6000000000000001) and move a bin edge past a whole cell.
    bin_size = length.to(dtype) / torch.full((), bins, dtype=dtype, device=start.device)
    j = torch.arange(bins, dtype=dtype, device=start.device)  # (bins,)
    lo = torch.floor(j[None, :] * bin_size[:, None]).long() + start[:, None]  # (R, bins)
    hi = torch.ceil((j[None, :] + 1) * bin_size[:, None]).long() + start[:, None]  # (R, bins)
    return lo.clamp(0, size), hi.clamp(0, size)


def _pair(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
            or not all(isinstance(s, int) and s >= 1 for s in output_size)):
        raise ValueError(f"output_size must be a positive int or (out_h, out_w), got {output_size!r}; "
                         f"Fast R-CNN uses 7 (VGG-16) or 6 (ZF).")
    return int(output_size[0]), int(output_size[1])


def _check_inputs(features: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                  validate: bool) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, C, H, W) tensor, got {shape}; "
                         f"a single map needs a batch dimension: features[None].")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}.")
    if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[-1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois).__name__
        raise ValueError(f"rois must be (R, 5) rows of [batch_index, x1, y1, x2, y2], got {shape}; "
                         f"for per-image (R_i, 4) boxes pass a list, or use rois_from_boxes.")
    if rois.dtype != features.dtype or rois.device != features.device:
        raise TypeError(f"rois ({rois.dtype}, {rois.device}) must have the dtype and device of "
                        f"features ({features.dtype}, {features.device}); use rois.to(features).")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be positive (feature cells per input pixel, 1/16 for "
                         f"stride 16), got {spatial_scale}.")
    if not validate or rois.shape[0] == 0:
        return
    if not bool(torch.isfinite(rois).all()):
        i = int((~torch.isfinite(rois)).any(dim=1).nonzero()[0])
        raise ValueError(f"rois[{i}] = {rois[i].tolist()} has a NaN or infinite value.")
    index = rois[:, 0]
    bad = (index != index.floor()) | (index < 0) | (index >= features.shape[0])
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"rois[{i}] has batch index {rois[i, 0].item():g}, but features hold "
                         f"{features.shape[0]} image(s): the first column must be an integer in "
                         f"[0, {features.shape[0] - 1}], the image each box belongs to.")


def roi_pool(features: torch.Tensor, rois: Rois, output_size: Union[int, Tuple[int, int]],
             spatial_scale: float = 1.0, *, validate: bool = True) -> torch.Tensor:
    """RoI max pooling (Fast R-CNN §2.1): ``(B, C, H, W), (R, 5) -> (R, C, out_h, out_w)``.

    Same meaning, values and gradients as ``torchvision.ops.roi_pool``; the
    quantisation rules are in the module docstring.

    Args:
        features: ``(B, C, H, W)`` feature maps of a batch of images.
        rois: ``(R, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in input pixels,
            or a list of per-image ``(R_i, 4)`` boxes. Boxes may reach past the
            map (their off-map bins give 0) and may be as small as one pixel.
        output_size: ``out_h`` (= ``out_w``) or ``(out_h, out_w)``; 7 in the paper.
        spatial_scale: feature cells per input pixel, 1 / stride (1/16 in the
            paper; the default 1.0, as in torchvision, means boxes in cells).
        validate: check RoI values (finite, batch index an integer in
            ``[0, B)``); this reads the tensor, so the detection head, which
            builds its RoIs itself, passes False.
    """
    if not isinstance(rois, torch.Tensor):
        rois = rois_from_boxes(rois)
    out_h, out_w = _pair(output_size)
    _check_inputs(features, rois, spatial_scale, validate)
    _, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros((0, channels, out_h, out_w))

    # Rules 1-4: each bin's cells, in the features' dtype (= the RoIs') as the C kernel does.
    x_lo, x_hi, y_lo, y_hi = quantised_bins(rois, (height, width), (out_h, out_w), spatial_scale)

    # The max over a bin of h x w cells whose top-left cell is (y, x) is the value at
    # (y, x) of a stride-1 h x w max pool of the whole map. So pool the maps once per bin
    # size that occurs (pool_all_sizes), then read every bin off the pool of its size.
    heights, widths = y_hi - y_lo, x_hi - x_lo  # (R, out_h), (R, out_w) bin sizes, 0 if empty
    # The one host sync: how many sizes to pool (the tallest and widest bin, at least 1).
    kh, kw = torch.stack([heights.max(), widths.max()]).clamp(min=1).tolist()
    cells = features.shape[0] * height * width  # B * H * W
    size = (heights - 1)[:, :, None] * kw + (widths - 1)[:, None, :]  # (R, out_h, out_w)
    batch = rois[:, 0].long()[:, None, None]  # (R, 1, 1)
    corner = (batch * height + y_lo[:, :, None]) * width + x_lo[:, None, :]  # top-left cell
    index = size * cells + corner  # (R, out_h, out_w): the bin's row in pool_all_sizes' maps
    empty = (heights == 0)[:, :, None] | (widths == 0)[:, None, :]  # (R, out_h, out_w)
    index = index.masked_fill(empty, kh * kw * cells)  # rule 5: empty bins read the zero row
    if torch.is_grad_enabled() and features.requires_grad:  # training: keep the argmax too
        return RoIPoolFunction.apply(features, index, kh, kw)
    return pool_and_gather(features, index, kh, kw, track=False)[0]


def pool_all_sizes(x: torch.Tensor, kh: int, kw: int, track: bool
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Stride-1 max pools of ``x`` of every size up to ``kh x kw``, and (``track``) their argmax.

    Args:
        x: ``(B, H, W, C)``, a channels-last view of the ``(B, C, H, W)`` features.
        kh, kw: the largest pool (the tallest and widest bin), ``kh <= H``, ``kw <= W``.
        track: also find which cell of ``x`` held each max (for the backward pass).

    Returns:
        ``maps``, ``(kh * kw * B * H * W + 1, C)``: row ``((h - 1) * kw + w - 1) * B * H * W
        + (b * H + y) * W + x`` is the max over the ``h x w`` cells of image ``b`` whose
        top-left cell is ``(y, x)`` (if ``y <= H - h`` and ``x <= W - w``; other rows are
        never read); the last row is zeros, for empty bins. ``argmax``, the same shape (an int)
        or None: where each max is, as an index into the flattened ``(B, C, H, W)`` features;
        the zero row's point past their end, to spare slots that the backward drops.
    """
    batch, height, width, channels = x.shape
    cells = batch * height * width
    flat = x.new_empty((kh * kw * cells + 1, channels))
    flat[-1] = 0.0
    maps = flat[:-1].view(kh * kw, batch, height, width, channels)  # one map per pool size
    maps[0] = x  # the 1 x 1 pool is the map itself
    argmax = None
    if track:
        int_type = torch.int32 if x.numel() + channels < 2 ** 31 else torch.int64
        flat_argmax = torch.empty(flat.shape, dtype=int_type, device=x.device)
        position = torch.arange(x.numel() + channels, dtype=int_type, device=x.device)
        flat_argmax[-1] = position[-channels:]  # the spare slots, one per channel
        argmax = flat_argmax[:-1].view(maps.shape)
        # each cell is its own argmax; x is a channels-last view of (B, C, H, W) features
        argmax[0] = position[:-channels].view(batch, channels, height, width).permute(0, 2, 3, 1)
        keep, diff = torch.empty((2,) + x.shape, dtype=int_type, device=x.device)  # scratch

    def grow(k: int, h: int, w: int, prev: int, new: int, dy: int, dx: int) -> None:
        # Pool k (h x w) = max(pool prev, pool new shifted by (dy, dx) cells), on the part of
        # the map where an h x w pool fits. Every result goes into a preallocated buffer:
        # fresh multi-MB tensors at each step would cost more than the arithmetic.
        fits = (slice(None), slice(0, height - h + 1), slice(0, width - w + 1))
        shifted = (slice(None), slice(dy, dy + height - h + 1), slice(dx, dx + width - w + 1))
        earlier, later = maps[prev][fits], maps[new][shifted]
        torch.maximum(earlier, later, out=maps[k][fits])  # (a NaN cell makes the max NaN)
        if track:  # argmax: keep the earlier cell on a tie, the first in row-major order (rule 6)
            a, b = argmax[prev][fits], argmax[new][shifted]
            is_ge = torch.ge(earlier, later, out=keep[fits])  # 1 where the earlier max stays
            # argmax[k] = b + is_ge * (a - b): torch.where(is_ge, a, b), measured 3-5x
            # faster on a CPU than torch.where itself.
            torch.addcmul(b, torch.sub(a, b, out=diff[fits]), is_ge, out=argmax[k][fits])

    # Along each row first: the 1 x w max at column x is the 1 x (w - 1) max at x, or
    # the cell at x + w - 1 if that is larger.
    for w in range(2, kw + 1):
        grow(w - 1, 1, w, prev=w - 2, new=0, dy=0, dx=w - 1)
    # Then down the columns: the h x w max at row y is the (h - 1) x w max at y, or the
    # 1 x w max at row y + h - 1 if that is larger. The tie rule then picks the first
    # maximal row, and in it the first maximal column: row-major order.
    for w in range(1, kw + 1):
        for h in range(2, kh + 1):
            grow((h - 1) * kw + w - 1, h, w, prev=(h - 2) * kw + w - 1, new=w - 1, dy=h - 1, dx=0)
    return flat, (flat_argmax if track else None)


def pool_and_gather(features: torch.Tensor, index: torch.Tensor, kh: int, kw: int,
                    track: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pool, then read every bin: ``(B, C, H, W), (R, out_h, out_w) -> (R, C, out_h, out_w)``.

    ``index`` holds each bin's row of :func:`pool_all_sizes`' maps. If ``track``, also
    returns each output's argmax ``(R, C, out_h, out_w)``, an index into ``features.view(-1)``.
    """
    num_rois, out_h, out_w = index.shape
    maps, argmax = pool_all_sizes(features.permute(0, 2, 3, 1), kh, kw, track)
    rows = index.view(num_rois, 1, out_h * out_w).expand(-1, features.shape[1], -1)

    def gather(t: torch.Tensor) -> torch.Tensor:  # out[r, c, i, j] = t[index[r, i, j], c]
        columns = t.t().expand(num_rois, -1, -1)  # (R, C, rows of t), a view: nothing copied
        return torch.gather(columns, 2, rows).view(num_rois, -1, out_h, out_w)

    return gather(maps), (gather(argmax) if track else None)


class RoIPoolFunction(torch.autograd.Function):
    """:func:`roi_pool` with its backward pass (rule 6) written out: the forward also keeps
    each output's argmax, and the backward adds each output's gradient to that cell with
    one ``index_add_`` (which sums the gradients of a cell that is the max of several bins).
    """

    @staticmethod
    def forward(ctx, features, index, kh, kw):
        out, argmax = pool_and_gather(features, index, kh, kw, track=True)
        ctx.save_for_backward(argmax)  # (R, C, out_h, out_w)
        ctx.feature_shape = features.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # (R, C, out_h, out_w) -> (B, C, H, W)
        (argmax,) = ctx.saved_tensors
        batch, channels, height, width = ctx.feature_shape
        numel = batch * height * width * channels
        grad = grad_out.new_zeros(numel + channels)  # + the spare slots of the empty bins
        grad.index_add_(0, argmax.reshape(-1), grad_out.reshape(-1))
        grad = grad[:numel].view(batch, channels, height, width)
        return grad, None, None, None  # no gradient for the RoIs, as in torchvision


def quantised_bins(rois: torch.Tensor, feature_size: Tuple[int, int],
                   output_size: Union[int, Tuple[int, int]] = 7, spatial_scale: float = 1.0 / 16
                   ) -> List[torch.Tensor]:
    """The cells each bin pools (rules 1-4): ``(R, 5) -> [x_lo, x_hi, y_lo, y_hi]``.

    :func:`roi_pool` reads its bins from here; chapter 7 draws them.

    ``x_lo, x_hi`` are ``(R, out_w)`` and ``y_lo, y_hi`` ``(R, out_h)`` int64 cell
    indices; bin ``(i, j)`` of RoI ``r`` pools rows ``y_lo[r, i] <= y < y_hi[r, i]``
    and columns ``x_lo[r, j] <= x < x_hi[r, j]`` of a map of ``feature_size (H, W)``.
    """
    out_h, out_w = _pair(output_size)
    if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[-1] != 5:
        raise ValueError("rois must be an (R, 5) tensor of [batch_index, x1, y1, x2, y2].")
    height, width = feature_size
    scale = torch.full((), spatial_scale, dtype=rois.dtype, device=rois.device)
    corners = round_half_away(rois[:, 1:] * scale).long()  # (R, 4)
    x_lo, x_hi = bin_edges(corners[:, 0], corners[:, 2], out_w, width, rois.dtype)
    y_lo, y_hi = bin_edges(corners[:, 1], corners[:, 3], out_h, height, rois.dtype)
    return [x_lo, x_hi, y_lo, y_hi]
