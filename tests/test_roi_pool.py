"""RoI max pooling from scratch (chapter 7) against torchvision.ops.roi_pool."""

import pytest
import torch
import torchvision

from frcnn_lite.roi_pool import (bin_edges, quantised_bins, roi_pool, roi_pool_reference,
                                 round_half_away)


def random_rois(n, num_images, feature_size, stride, generator, dtype=torch.float32):
    """RoIs in input pixels: ordinary, partly/wholly off the map, 1-pixel, sub-pixel,
    corners on exact halves of a cell, and flipped (x2 < x1) ones."""
    height, width = feature_size[0] * stride, feature_size[1] * stride
    size = torch.tensor([width, height], dtype=dtype)
    xy = (torch.rand(n, 2, generator=generator, dtype=dtype) * 1.6 - 0.3) * size  # some off-map
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 0.8
    boxes = torch.cat([xy, xy + wh], dim=1)
    k = n // 6
    boxes[:k, 2:] = boxes[:k, :2] + 1.0  # 1-pixel boxes
    boxes[k:2 * k, 2:] = boxes[k:2 * k, :2] + 0.3  # smaller than a pixel
    halves = torch.randint(-4, 2 * max(feature_size) + 4, (k, 4), generator=generator)
    boxes[2 * k:3 * k] = (halves.to(dtype) + 0.5) * stride  # corners on x.5 cells
    boxes[3 * k:4 * k] = boxes[3 * k:4 * k, [2, 3, 0, 1]]  # x2 < x1: torchvision makes it 1 cell
    index = torch.randint(0, num_images, (n, 1), generator=generator).to(dtype)
    return torch.cat([index, boxes], dim=1)  # (n, 5)


def compare(features, rois, output_size, scale, generator, integer_grads=False, impl=roi_pool):
    ours_in = features.clone().requires_grad_()
    tv_in = features.clone().requires_grad_()
    ours = impl(ours_in, rois, output_size, scale)
    expected = torchvision.ops.roi_pool(tv_in, rois, output_size, scale)
    assert torch.equal(ours, expected)  # the same max of the same cells: bit-identical
    if integer_grads:  # integer sums are exact in any order: gradients must be bit-identical
        grad = torch.randint(-4, 5, ours.shape, generator=generator).to(ours)
    else:
        grad = torch.randn(ours.shape, generator=generator, dtype=ours.dtype).to(ours.device)
    ours.backward(grad)
    expected.backward(grad)
    if integer_grads:
        assert torch.equal(ours_in.grad, tv_in.grad)
    else:  # the same cells get the same terms; only the order of summation differs
        torch.testing.assert_close(ours_in.grad, tv_in.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale,stride", [(1 / 16, 16), (0.5, 2), (1.0, 1)])
@pytest.mark.parametrize("output_size", [7, (3, 5), 1])
def test_values_and_gradients_match_torchvision(scale, stride, output_size):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 11, 13, generator=g)
    rois = random_rois(240, 3, (11, 13), stride, g)
    compare(features, rois, output_size, scale, g)


@pytest.mark.parametrize("scale,stride,output_size",
                         [(1 / 16, 16, 7), (1.0, 1, (3, 5)), (0.5, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_route_gradients_like_torchvision(dtype, scale, stride, output_size):
    # Features from {0, 1, 2}: most bins hold several maxima; torchvision sends the
    # gradient to the first in row-major order, and so must we, exactly. Large bins
    # (scale 1, few bins) test ties between rows and columns far apart.
    g = torch.Generator().manual_seed(1)
    features = torch.randint(0, 3, (2, 5, 9, 12), generator=g).to(dtype)
    rois = random_rois(300, 2, (9, 12), stride, g, dtype=dtype)
    compare(features, rois, output_size, scale, g, integer_grads=True)


def test_gradcheck():
    # Distinct values (no ties) spaced far wider than gradcheck's finite-difference step.
    g = torch.Generator().manual_seed(4)
    values = torch.randperm(2 * 3 * 7 * 9, generator=g).to(torch.float64) / 10
    features = values.reshape(2, 3, 7, 9).requires_grad_()
    rois = random_rois(30, 2, (7, 9), 4, g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (3, 2), 1 / 4), (features,))


def test_training_and_inference_paths_agree():
    # With a gradient to track, roi_pool also records the argmax; without one it skips that.
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 4, 10, 11, generator=g)
    rois = random_rois(50, 2, (10, 11), 16, g)
    leaf = features.clone().requires_grad_()
    trained = roi_pool(leaf, rois, 7, 1 / 16)
    assert trained.requires_grad and trained.grad_fn is not None
    with torch.no_grad():
        assert torch.equal(roi_pool(leaf, rois, 7, 1 / 16), trained)
    with torch.inference_mode():
        assert torch.equal(roi_pool(features, rois, 7, 1 / 16), trained)
    plain = roi_pool(features, rois, 7, 1 / 16)  # features that need no gradient
    assert torch.equal(plain, trained) and not plain.requires_grad


def test_empty_bins_send_no_gradient():
    features = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6)).requires_grad_()
    rois = torch.tensor([[0, -200.0, -200.0, -100.0, -100.0],  # wholly outside: every bin empty
                         [0, -40.0, -40.0, 20.0, 20.0]])       # partly outside
    out = roi_pool(features, rois, 7, 1 / 16)
    grad = torch.ones_like(out)
    grad[0] = float("nan")  # nothing of an empty bin may reach the features, not even a NaN
    out.backward(grad)
    expected = features.detach().clone().requires_grad_()
    torchvision.ops.roi_pool(expected, rois[1:], 7, 1 / 16).sum().backward()
    assert torch.equal(features.grad, expected.grad)


NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_GPU)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_device_matches_torchvision(device, dtype):
    # On a GPU, `tensor / 7` multiplies by 1/7 and can land one bit above a whole number
    # (21 / 7 -> 3.0000002): a bin edge would move by a cell. Ties and big bins included.
    g = torch.Generator().manual_seed(7)
    features = torch.randint(0, 3, (2, 5, 9, 12), generator=g).to(dtype).to(device)
    for scale, stride, output_size in [(1 / 16, 16, 7), (1.0, 1, (3, 5))]:
        rois = random_rois(300, 2, (9, 12), stride, g, dtype=dtype).to(device)
        compare(features, rois, output_size, scale, g, integer_grads=True)
    start, end = torch.tensor([8], device=device), torch.tensor([10], device=device)
    lo, hi = bin_edges(start, end, 5, 20, dtype)
    assert hi.tolist() == [[9, 10, 10, 11, 11]]  # 3 cells in 5 bins: (j + 1) * 3 / 5, rounded up


def test_boxes_outside_the_map_and_one_pixel_boxes():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 3, 8, 8, generator=g) + 5.0  # all positive: empty bins stand out
    rois = torch.tensor([[0, -200.0, -200.0, -100.0, -100.0],  # wholly outside: all zeros
                         [0, 300.0, 10.0, 400.0, 60.0],        # wholly outside on the right
                         [0, -40.0, -40.0, 40.0, 40.0],        # partly outside
                         [0, 17.0, 17.0, 18.0, 18.0],          # 1 pixel: one cell, every bin
                         [0, 118.0, 118.0, 119.0, 119.0],      # 1 pixel in the last cell
                         [0, 127.0, 127.0, 128.0, 128.0]])     # 1 pixel at the far corner
    out = roi_pool(features, rois, 7, 1 / 16)
    torch.testing.assert_close(out, torchvision.ops.roi_pool(features, rois, 7, 1 / 16), rtol=0, atol=0)
    assert torch.equal(out[0], torch.zeros(3, 7, 7)) and torch.equal(out[1], torch.zeros(3, 7, 7))
    assert (out[2] == 0).any() and (out[2] > 0).any()  # off-map bins 0, on-map bins pooled
    # A 1-pixel box at (17, 17) rounds to cell (1, 1); a 1 x 1 RoI fills every bin with it.
    assert torch.equal(out[3], features[0, :, 1, 1, None, None].expand(3, 7, 7))
    assert torch.equal(out[4], features[0, :, 7, 7, None, None].expand(3, 7, 7))
    # The last pixel of the image rounds to cell round(127 / 16) = 8, one past the map's
    # last cell (7): a quantisation artefact torchvision has too. Every bin is empty: 0.
    assert torch.equal(out[5], torch.zeros(3, 7, 7))


def test_rounding_is_half_away_from_zero():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.49999997, 0.5, 1.5, 2.5, 2.4, 2.6])
    assert round_half_away(x).tolist() == [-3, -2, -1, 0, 1, 2, 3, 2, 3]
    assert torch.round(torch.tensor(2.5)).item() == 2.0  # why we need our own
    # An RoI whose corner lands on 2.5 cells: C's round gives 3, torch.round would give 2.
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 40.0, 40.0, 63.0, 63.0]])  # x1 * 1/16 = 2.5 -> cell 3
    out = roi_pool(features, rois, 1, 1 / 16)
    assert out.item() == 15.0 == torchvision.ops.roi_pool(features, rois, 1, 1 / 16).item()


def test_bin_edges_hand_computed():
    # An RoI of cells 0..4 (5 cells, both ends included) in 2 bins of 2.5 cells:
    # bin 0 = [floor(0), ceil(2.5)) = [0, 3), bin 1 = [floor(2.5), ceil(5)) = [2, 5): they share cell 2.
    lo, hi = bin_edges(torch.tensor([0]), torch.tensor([4]), 2, 10, torch.float32)
    assert lo.tolist() == [[0, 2]] and hi.tolist() == [[3, 5]]
    # Clipped to the map: cells -3..1 in 2 bins on a map of 4 cells.
    lo, hi = bin_edges(torch.tensor([-3]), torch.tensor([1]), 2, 4, torch.float32)
    assert lo.tolist() == [[0, 0]] and hi.tolist() == [[0, 2]]  # bin 0 is empty
    x_lo, x_hi, y_lo, y_hi = quantised_bins(torch.tensor([[0, 0.0, 0.0, 64.0, 64.0]]), (8, 8), 2)
    assert x_lo.tolist() == [[0, 2]] and x_hi.tolist() == [[3, 5]] and y_lo.equal(x_lo)


def test_hand_made_max():
    features = torch.arange(36.0).reshape(1, 1, 6, 6)  # value = 6 * row + column
    rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])  # cells 0..3 in 2 x 2 bins of 2 cells
    out = roi_pool(features, rois, 2, 1.0)
    assert out[0, 0].tolist() == [[7.0, 9.0], [19.0, 21.0]]


def test_list_of_boxes_and_empty_rois():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 10, 10, generator=g)
    boxes = [torch.tensor([[0.0, 0.0, 80.0, 80.0]]), torch.tensor([[16.0, 16.0, 100.0, 60.0]])]
    torch.testing.assert_close(roi_pool(features, boxes, 7, 1 / 16),
                               torchvision.ops.roi_pool(features, boxes, 7, 1 / 16))
    empty = roi_pool(features, torch.zeros(0, 5), (7, 5), 1 / 16)
    assert empty.shape == (0, 3, 7, 5)
    empty = roi_pool(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 7, 1 / 16)
    assert empty.shape == (0, 3, 7, 7)


def test_bad_inputs_have_clear_errors():
    features = torch.randn(2, 3, 10, 10)
    with pytest.raises(ValueError, match="batch index 2.*features hold 2 image"):
        roi_pool(features, torch.tensor([[2.0, 0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match="batch index -1"):
        roi_pool(features, torch.tensor([[-1.0, 0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match="batch index 0.5"):
        roi_pool(features, torch.tensor([[0.5, 0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roi_pool(features, torch.tensor([[0.0, float("nan"), 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        roi_pool(features, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match=r"features must be a \(B, C, H, W\)"):
        roi_pool(features[0], torch.tensor([[0.0, 0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(TypeError, match="dtype and device"):
        roi_pool(features, torch.tensor([[0.0, 0.0, 0.0, 32.0, 32.0]], dtype=torch.float64), 7, 1 / 16)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(features, torch.tensor([[0.0, 0.0, 0.0, 32.0, 32.0]]), 0, 1 / 16)
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        roi_pool(features, torch.tensor([[0.0, 0.0, 0.0, 32.0, 32.0]]), 7, 0.0)


# -- the reference version (plain loops) that chapter 7 shows first ---------------------------
@pytest.mark.parametrize("scale,stride,output_size", [(1 / 16, 16, 7), (1.0, 1, (3, 5))])
def test_reference_matches_torchvision(scale, stride, output_size):
    g = torch.Generator().manual_seed(10)
    features = torch.randn(2, 3, 9, 12, generator=g)
    rois = random_rois(60, 2, (9, 12), stride, g)
    compare(features, rois, output_size, scale, g, impl=roi_pool_reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_routes_tied_gradients_like_torchvision(dtype):
    g = torch.Generator().manual_seed(11)
    features = torch.randint(0, 3, (2, 4, 9, 12), generator=g).to(dtype)  # many ties
    for scale, stride, output_size in [(1 / 16, 16, 7), (1.0, 1, (3, 5)), (0.5, 2, 2)]:
        rois = random_rois(60, 2, (9, 12), stride, g, dtype=dtype)
        compare(features, rois, output_size, scale, g, integer_grads=True,
                impl=roi_pool_reference)


def test_reference_equals_the_fast_version_bit_for_bit():
    g = torch.Generator().manual_seed(12)
    features = torch.randn(2, 6, 10, 13, generator=g)
    rois = random_rois(80, 2, (10, 13), 16, g)
    slow_in, fast_in = (features.clone().requires_grad_() for _ in range(2))
    slow, fast = roi_pool_reference(slow_in, rois, 7, 1 / 16), roi_pool(fast_in, rois, 7, 1 / 16)
    assert torch.equal(slow, fast)
    grad = torch.randint(-4, 5, slow.shape, generator=g).float()
    slow.backward(grad)
    fast.backward(grad)
    assert torch.equal(slow_in.grad, fast_in.grad)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]  # the list form, and no RoIs at all
    assert torch.equal(roi_pool_reference(features, boxes, 7, 1 / 16),
                       roi_pool(features, boxes, 7, 1 / 16))
    assert roi_pool_reference(features, torch.zeros(0, 5), (2, 3), 1 / 16).shape == (0, 6, 2, 3)


def test_reference_hand_made_max_and_empty_bins():
    features = torch.arange(36.0).reshape(1, 1, 6, 6)  # value = 6 * row + column
    out = roi_pool_reference(features, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), 2, 1.0)
    assert out[0, 0].tolist() == [[7.0, 9.0], [19.0, 21.0]]
    off_map = torch.tensor([[0.0, -200.0, -200.0, -100.0, -100.0]])
    assert torch.equal(roi_pool_reference(features + 5, off_map, 3, 1 / 16), torch.zeros(1, 1, 3, 3))


def test_reference_checks_its_inputs_like_the_fast_version():
    features = torch.randn(2, 3, 10, 10)
    with pytest.raises(ValueError, match="batch index 2.*features hold 2 image"):
        roi_pool_reference(features, torch.tensor([[2.0, 0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        roi_pool_reference(features, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), 7, 1 / 16)
