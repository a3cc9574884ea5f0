"""The optional Triton RoI max-pool kernel equals torchvision.ops.roi_pool (values, gradients).

On a CPU the kernel runs in Triton's interpreter, in a subprocess (the
interpreter is chosen when the kernel is built, so it must not leak into other
tests); the cases are small because the interpreter is slow. With a GPU the
same cases run on CUDA, plus a detector-sized one.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

pytest.importorskip("triton", minversion="3.0")  # its interpreter

ROOT = Path(__file__).resolve().parent.parent


def cases(device="cpu"):
    """(features, rois, output_size, spatial_scale) covering the quantisation corner cases."""
    g = torch.Generator().manual_seed(0)
    # small integers: many ties, so the first-max rule decides where gradients go
    feat = torch.randint(0, 4, (2, 16, 9, 11), generator=g).float()
    rois = torch.tensor([
        [0, 8.0, 8.0, 40.0, 40.0],      # corners at x.5 cells: C's round goes up
        [1, 0.0, 0.0, 175.0, 143.0],    # the whole map
        [0, -40.0, -24.0, 30.0, 20.0],  # partly off the map: empty bins give 0
        [1, 200.0, 150.0, 260.0, 190.0],  # wholly off the map
        [0, 50.0, 40.0, 45.0, 30.0],    # x2 < x1: one cell
        [1, 17.0, 33.0, 18.0, 34.0],    # smaller than a cell
        [0, 24.0, 8.0, 120.0, 136.0],
    ])
    out = [(feat, rois, (3, 3), 1 / 16), (feat, rois, (2, 4), 1 / 16),
           (torch.randn(1, 16, 9, 11, generator=g), rois[[0, 2, 4, 6]] * torch.tensor(
               [0, 1.0, 1.0, 1.0, 1.0]), (3, 3), 1 / 8)]
    return [(f.to(device), r.to(device), s, k) for f, r, s, k in out]


def check(device):
    from frcnn_lite.roi_pool_triton import roi_pool_triton

    for feat, rois, size, scale in cases(device):
        feat = feat.clone().requires_grad_(True)
        ours = roi_pool_triton(feat, rois, size, scale)
        theirs = torchvision.ops.roi_pool(feat, rois, size, scale)
        assert torch.equal(ours, theirs), (size, scale)
        grad_out = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1)).to(device)
        g_ours, = torch.autograd.grad(ours, feat, grad_out)
        g_theirs, = torch.autograd.grad(theirs, feat, grad_out)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-6)
        assert g_ours.abs().sum() > 0


def test_interpreted_kernel_equals_torchvision_on_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    code = "import tests.test_roi_pool_triton as t; t.check('cpu'); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-4000:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_kernel_equals_torchvision_on_cuda():
    check("cuda")
    from frcnn_lite.roi_pool_triton import roi_pool_triton

    g = torch.Generator().manual_seed(2)
    feat = torch.randn(8, 256, 38, 63, generator=g).cuda()
    xy = torch.rand(1024, 2, generator=g) * torch.tensor([900.0, 500.0])
    boxes = torch.cat([xy, xy + 16 + torch.rand(1024, 2, generator=g) * 400], 1)
    rois = torch.cat([torch.randint(0, 8, (1024, 1), generator=g).float(), boxes], 1).cuda()
    assert torch.equal(roi_pool_triton(feat, rois, 7, 1 / 16),
                       torchvision.ops.roi_pool(feat, rois, 7, 1 / 16))
