"""RoI max pooling without a loop over RoIs: the fast path of :func:`roi_pool`.

The rules are those of :mod:`frcnn_lite.roi_pool` (Fast R-CNN §2.1,
``torchvision.ops.roi_pool``); :func:`~frcnn_lite.roi_pool.roi_pool_reference`
is the same computation as plain loops. This module only changes *how* it
is computed.

How: the max over a bin of ``h x w`` cells is one
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

Built in chapter 7, after the reference version.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable


def roi_pool_fast(features: torch.Tensor, batch: torch.Tensor,
                  bins: List[torch.Tensor]) -> torch.Tensor:
    """Pool every bin of every RoI at once: ``-> (R, C, out_h, out_w)``.

    Args:
        features: ``(B, C, H, W)``.
        batch: ``(R,)`` int64 image index of each RoI.
        bins: ``[x_lo, x_hi, y_lo, y_hi]``, from ``quantised_bins``.
    """
    x_lo, x_hi, y_lo, y_hi = bins
    heights, widths = y_hi - y_lo, x_hi - x_lo  # (R, oh), (R, ow); 0: empty
    if batch.shape[0] == 0:
        return features.new_zeros((0, features.shape[1]) + heights.shape[1:]
                                  + widths.shape[1:])
    # The one host sync: how many sizes to pool (the tallest and widest bin).
    kh, kw = torch.stack([heights.max(), widths.max()]).clamp(min=1).tolist()
    _, _, height, width = features.shape
    cells = features.shape[0] * height * width  # B * H * W
    # (R, out_h, out_w): the pool size each bin reads
    size = (heights - 1)[:, :, None] * kw + (widths - 1)[:, None, :]
    corner = ((batch[:, None, None] * height + y_lo[:, :, None]) * width
              + x_lo[:, None, :])  # (R, out_h, out_w) top-left cell of each bin
    index = size * cells + corner  # each bin's row in pool_all_sizes' maps
    empty = (heights == 0)[:, :, None] | (widths == 0)[:, None, :]
    index = index.masked_fill(empty, kh * kw * cells)  # empty: the zero row
    if torch.is_grad_enabled() and features.requires_grad:  # track the argmax
        return RoIPoolFunction.apply(features, index, kh, kw)
    return pool_and_gather(features, index, kh, kw, track=False)[0]


def pool_all_sizes(x: torch.Tensor, kh: int, kw: int, track: bool
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Stride-1 max pools of ``x`` of every size up to ``kh x kw`` (+ argmax).

    Args:
        x: ``(B, H, W, C)``, a channels-last view of the ``(B, C, H, W)`` map.
        kh, kw: the largest pool (the tallest and widest bin).
        track: also find which cell of ``x`` held each max (for backward).

    Returns:
        ``maps``, ``(kh * kw * B * H * W + 1, C)``: row ``((h - 1) * kw + w - 1)
        * B * H * W + (b * H + y) * W + x`` is the max over the ``h x w``
        cells of image ``b`` whose top-left cell is ``(y, x)``; the last row
        is zeros, for empty bins. ``argmax`` (or None), the same shape: the
        index of each max in the flattened ``(B, C, H, W)`` features.
    """
    pools = _Pools(x, kh, kw, track)
    # Along each row first: the 1 x w max at column x is the 1 x (w - 1) max
    # at x, or the cell at x + w - 1 if that is larger.
    for w in range(2, kw + 1):
        pools.grow(w - 1, 1, w, prev=w - 2, new=0, dy=0, dx=w - 1)
    # Then down the columns: the h x w max at row y is the (h - 1) x w max at
    # y, or the 1 x w max at row y + h - 1. The tie rule keeps the first
    # maximal row, and in it the first maximal column: row-major order.
    for w in range(1, kw + 1):
        for h in range(2, kh + 1):
            k, prev = (h - 1) * kw + w - 1, (h - 2) * kw + w - 1
            pools.grow(k, h, w, prev=prev, new=w - 1, dy=h - 1, dx=0)
    return pools.flat, pools.flat_argmax


class _Pools:
    """The preallocated buffers of :func:`pool_all_sizes`: fresh multi-MB
    tensors at each step would cost more than the arithmetic."""

    def __init__(self, x: torch.Tensor, kh: int, kw: int, track: bool):
        batch, height, width, channels = x.shape
        self.height, self.width, self.track = height, width, track
        cells = batch * height * width
        self.flat = x.new_empty((kh * kw * cells + 1, channels))
        self.flat[-1] = 0.0
        self.maps = self.flat[:-1].view(kh * kw, batch, height, width, channels)
        self.maps[0] = x  # the 1 x 1 pool is the map itself
        self.flat_argmax = None
        if not track:
            return
        itype = torch.int32 if x.numel() + channels < 2 ** 31 else torch.int64
        self.flat_argmax = torch.empty(self.flat.shape, dtype=itype, device=x.device)
        position = torch.arange(x.numel() + channels, dtype=itype, device=x.device)
        # The zero row's argmax points past the features' end, to spare slots
        # (one per channel) that the backward pass drops.
        self.flat_argmax[-1] = position[-channels:]
        self.argmax = self.flat_argmax[:-1].view(self.maps.shape)
        # Each cell is its own argmax; x is a channels-last view of (B, C, H, W).
        nchw = position[:-channels].view(batch, channels, height, width)
        self.argmax[0] = nchw.permute(0, 2, 3, 1)
        self.keep, self.diff = torch.empty((2,) + x.shape, dtype=itype, device=x.device)

    def grow(self, k: int, h: int, w: int, prev: int, new: int, dy: int, dx: int):
        """Pool ``k`` (``h x w``) = max(pool ``prev``, pool ``new`` shifted by
        ``(dy, dx)`` cells), where an ``h x w`` pool fits in the map."""
        fits = (slice(None), slice(0, self.height - h + 1), slice(0, self.width - w + 1))
        shifted = (slice(None), slice(dy, dy + self.height - h + 1),
                   slice(dx, dx + self.width - w + 1))
        earlier, later = self.maps[prev][fits], self.maps[new][shifted]
        torch.maximum(earlier, later, out=self.maps[k][fits])  # NaN cells give NaN
        if self.track:  # keep the earlier cell on a tie: row-major order (rule 6)
            a, b = self.argmax[prev][fits], self.argmax[new][shifted]
            is_ge = torch.ge(earlier, later, out=self.keep[fits])  # 1: earlier stays
            # argmax[k] = b + is_ge * (a - b), i.e. torch.where(is_ge, a, b):
            # measured 3-5x faster on a CPU than torch.where itself.
            a_minus_b = torch.sub(a, b, out=self.diff[fits])
            torch.addcmul(b, a_minus_b, is_ge, out=self.argmax[k][fits])


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
    """:func:`roi_pool_fast` with its backward pass (rule 6) written out.

    The forward also keeps each output's argmax; the backward adds each
    output's gradient to that cell with one ``index_add_``, which sums the
    gradients of a cell that is the max of several bins.
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
        grad = grad_out.new_zeros(numel + channels)  # + empty bins' spare slots
        grad.index_add_(0, argmax.reshape(-1), grad_out.reshape(-1))
        grad = grad[:numel].view(batch, channels, height, width)
        return grad, None, None, None  # RoIs get none, as in torchvision
