"""RoI max pooling as one Triton kernel: an optional fast path for CUDA.

Fast R-CNN §2.1 (chapter 7 teaches it from scratch in :mod:`frcnn_lite.roi_pool`,
whose module docstring states the quantisation rules this kernel follows,
exactly as ``torchvision.ops.roi_pool`` applies them). Nothing in the library
needs this module: it imports ``triton`` only when called, and ``triton`` ships
with PyTorch's CUDA wheels on Linux. On a CPU it runs in Triton's interpreter
(``TRITON_INTERPRET=1`` set before the first call), which is how the tests
check it against torchvision without a GPU; that is slow and only for tests.

One program computes one bin of one RoI for ``BLOCK_C`` channels at a time:
it reads the RoI, quantises its corners and the bin's edges, and walks the
bin's cells in row-major order keeping the running max and the first cell
that held it (``argmax``, -1 for an empty bin, whose output is 0). The
backward pass sends each output's gradient to its argmax cell with one
``index_add_``, like :mod:`frcnn_lite.roi_pool`'s fast path.

Shapes: ``features (B, C, H, W)``, ``rois (R, 5)`` = ``[image index, x1, y1,
x2, y2]`` in input pixels -> ``(R, C, out_h, out_w)``.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch

_KERNEL = None


def _kernel():
    """Build the Triton kernel on first use (importing this module needs no Triton)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    if int(triton.__version__.split(".")[0]) < 3:
        raise RuntimeError(
            f"roi_pool_triton needs triton >= 3.0 (PyTorch >= 2.4 ships it), found "
            f"{triton.__version__}; use frcnn_lite.roi_pool.roi_pool instead.")

    @triton.jit
    def roi_max_pool(
        feat,
        rois,
        out,
        argmax,
        C,
        H,
        W,
        scale,
        OH: tl.constexpr,
        OW: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        bin_id = tl.program_id(0)  # r * OH * OW + ph * OW + pw
        r, ph, pw = bin_id // (OH * OW), (bin_id // OW) % OH, bin_id % OW
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        c_ok = c < C
        b = tl.load(rois + r * 5).to(tl.int32)
        # rule 1: corners to cells with C's round (halves away from zero)
        x1, y1 = tl.load(rois + r * 5 + 1) * scale, tl.load(rois + r * 5 + 2) * scale
        x2, y2 = tl.load(rois + r * 5 + 3) * scale, tl.load(rois + r * 5 + 4) * scale
        xs = tl.where(x1 >= 0, tl.floor(x1 + 0.5), tl.ceil(x1 - 0.5)).to(tl.int32)
        ys = tl.where(y1 >= 0, tl.floor(y1 + 0.5), tl.ceil(y1 - 0.5)).to(tl.int32)
        xe = tl.where(x2 >= 0, tl.floor(x2 + 0.5), tl.ceil(x2 - 0.5)).to(tl.int32)
        ye = tl.where(y2 >= 0, tl.floor(y2 + 0.5), tl.ceil(y2 - 0.5)).to(tl.int32)
        # rules 2-4: RoI size in cells, float bin size, bin edges clipped to the map
        bin_h = tl.math.div_rn(tl.maximum(ye - ys + 1, 1).to(tl.float32), OH * 1.0)
        bin_w = tl.math.div_rn(tl.maximum(xe - xs + 1, 1).to(tl.float32), OW * 1.0)
        h0 = tl.minimum(tl.maximum(tl.floor(ph * bin_h).to(tl.int32) + ys, 0), H)
        h1 = tl.minimum(tl.maximum(tl.ceil((ph + 1) * bin_h).to(tl.int32) + ys, 0), H)
        w0 = tl.minimum(tl.maximum(tl.floor(pw * bin_w).to(tl.int32) + xs, 0), W)
        w1 = tl.minimum(tl.maximum(tl.ceil((pw + 1) * bin_w).to(tl.int32) + xs, 0), W)
        # rule 5: the max of the bin's cells, the first one on ties; empty bins give 0
        best = tl.full((BLOCK_C,), float("-inf"), tl.float32)
        where = tl.full((BLOCK_C,), -1, tl.int32)
        plane = (b * C + c).to(tl.int64) * H * W  # (BLOCK_C,) start of each channel
        for h in range(h0, h1):
            for w in range(w0, w1):
                v = tl.load(feat + plane + h * W + w, mask=c_ok, other=float("-inf"))
                v = v.to(tl.float32)
                better = v > best
                best = tl.where(better, v, best)
                where = tl.where(better, h * W + w, where)
        empty = (h1 <= h0) | (w1 <= w0)
        best = tl.where(empty, 0.0, best)
        o = ((r * C + c).to(tl.int64) * OH + ph) * OW + pw  # (BLOCK_C,)
        tl.store(out + o, best.to(out.dtype.element_ty), mask=c_ok)
        tl.store(argmax + o, where, mask=c_ok)

    _KERNEL = roi_max_pool
    return _KERNEL


def _forward(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    features, rois = features.contiguous(), rois.contiguous().to(features.dtype)
    b, c, h, w = features.shape
    oh, ow = output_size
    r = rois.shape[0]
    out = features.new_empty((r, c, oh, ow))
    argmax = torch.empty((r, c, oh, ow), dtype=torch.int32, device=features.device)
    if r and c:
        block_c = min(128, max(16, 1 << (c - 1).bit_length()))
        grid = (r * oh * ow, (c + block_c - 1) // block_c)
        _kernel()[grid](
            features,
            rois,
            out,
            argmax,
            c,
            h,
            w,
            float(spatial_scale),
            OH=oh,
            OW=ow,
            BLOCK_C=block_c,
        )
    return out, argmax


class _RoIPoolTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale):
        out, argmax = _forward(features, rois, output_size, spatial_scale)
        ctx.save_for_backward(rois, argmax)
        ctx.input_shape = features.shape
        ctx.mark_non_differentiable(argmax)
        return out, argmax

    @staticmethod
    def backward(ctx, grad_out, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        b, c, h, w = ctx.input_shape
        # rule 6: every output's gradient to the cell that held its max
        image = rois[:, 0].long()[:, None, None, None]  # (R, 1, 1, 1)
        channel = torch.arange(c, device=rois.device)[
            None, :, None, None
        ]  # (1, C, 1, 1)
        cell = (image * c + channel) * (h * w) + argmax.long()  # (R, C, out_h, out_w)
        hit = argmax >= 0
        grad = grad_out.new_zeros(b * c * h * w)
        grad.index_add_(0, cell[hit], grad_out[hit])
        return grad.view(b, c, h, w), None, None, None


def roi_pool_triton(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """``torchvision.ops.roi_pool``'s values and gradients from one Triton kernel.

    ``features (B, C, H, W)`` float, ``rois (R, 5)`` -> ``(R, C, out_h, out_w)``.
    Needs ``triton`` (PyTorch's CUDA wheels ship it); on a CPU it needs
    ``TRITON_INTERPRET=1`` in the environment before the first call.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"need features (B, C, H, W) and rois (R, 5), got "
            f"{tuple(features.shape)} and {tuple(rois.shape)}."
        )
    return _RoIPoolTriton.apply(features, rois, tuple(output_size), spatial_scale)[0]
