"""The RPN head, the loss of Eq. 1 and the proposal layer (§3.1, §3.3): chapters 5-6."""

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from frcnn_lite.anchors import base_anchors, grid_anchors
from frcnn_lite.rpn import (RegionProposalNetwork, RPNHead, flatten_head_outputs,
                            generate_proposals, generate_proposals_batch, objectness_maps, rpn_loss)


# -- head ------------------------------------------------------------------------
def test_head_output_shapes():
    head = RPNHead(512, 9)
    cls, deltas = head(torch.randn(2, 512, 5, 7))
    assert cls.shape == (2, 18, 5, 7)
    assert deltas.shape == (2, 36, 5, 7)


def test_head_has_the_papers_parameter_count():
    head = RPNHead(512, 9)
    # §3.1.1: 3x3x512x512 + 512x(2+4)x9 = 2.4 x 10^6 weights for VGG-16; plus biases.
    weights = 3 * 3 * 512 * 512 + 512 * (2 + 4) * 9
    assert weights == 2_386_944
    biases = 512 + 2 * 9 + 4 * 9
    assert sum(p.numel() for p in head.parameters()) == weights + biases == 2_387_510
    # The output layers alone: 512 x (4 + 2) x 9 = 2.8 x 10^4 weights.
    assert head.cls_logits.weight.numel() + head.bbox_pred.weight.numel() == 27_648
    # ZF: 256-d intermediate layer.
    assert RPNHead(256, 9).conv.out_channels == 256
    assert RPNHead(128, 9, mid_channels=64).conv.out_channels == 64


def test_head_init_and_bad_channels():
    head = RPNHead(64, 3)
    assert torch.all(head.conv.bias == 0)
    assert 0.005 < head.conv.weight.std().item() < 0.015  # N(0, 0.01), §3.4
    with pytest.raises(ValueError, match="out_channels"):
        head(torch.randn(1, 32, 4, 4))


def test_flatten_follows_grid_anchors_order():
    b, a, h, w = 2, 3, 4, 5
    # Give every (image, anchor, coordinate, row, column) a unique code and check where it lands.
    code = torch.arange(b * a * 4 * h * w, dtype=torch.float32).reshape(b, a, 4, h, w)
    cls = code[:, :, :2].reshape(b, 2 * a, h, w)
    logits, deltas = flatten_head_outputs(cls, code.reshape(b, 4 * a, h, w))
    assert logits.shape == (b, h * w * a, 2) and deltas.shape == (b, h * w * a, 4)
    for (n, i, j, k) in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 3, 4, 2), (1, 1, 0, 2)]:
        index = (i * w + j) * a + k  # grid_anchors' order: row, column, base anchor
        assert deltas[n, index].tolist() == code[n, k, :, i, j].tolist()
        assert logits[n, index].tolist() == code[n, k, :2, i, j].tolist()
    # And the anchor at that index is base anchor k centred on cell (i, j).
    anchors = grid_anchors((h, w), 16, base_anchors((32,), (0.5, 1.0, 2.0)))
    centre = (anchors[(2 * w + 3) * a + 1, :2] + anchors[(2 * w + 3) * a + 1, 2:]) / 2
    assert centre.tolist() == [(3 + 0.5) * 16, (2 + 0.5) * 16]


def test_objectness_maps_is_the_two_class_softmax():
    cls = torch.randn(2, 6, 3, 4)
    maps = objectness_maps(cls)
    assert maps.shape == (2, 3, 3, 4)
    logits, _ = flatten_head_outputs(cls, torch.zeros(2, 12, 3, 4))
    expected = logits.softmax(-1)[..., 1].reshape(2, 3, 4, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps, expected)


# -- loss (Eq. 1) ------------------------------------------------------------------
def tiny_case():
    cls = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    deltas = torch.tensor([[0.5, 0.0, 0.0, 2.0], [9.0, 9.0, 9.0, 9.0],
                           [9.0, 9.0, 9.0, 9.0], [0.0, -0.2, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 0, -1, 1])  # anchor 2 is not in the mini-batch
    targets = torch.zeros(4, 4)
    return cls, deltas, labels, targets


def test_loss_hand_computed_paper_normalisation():
    cls, deltas, labels, targets = tiny_case()
    losses = rpn_loss(cls, deltas, labels, targets, num_locations=2, normalization="paper")
    # L_cls: -log p(true class) = log(1 + e^-(l_true - l_other)) for the 3 sampled anchors.
    l_cls = math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3))
    # Smooth L1 (beta 1) of the 2 positives: 0.5 * 0.5^2 + (2 - 0.5) and 0.5 * 0.2^2.
    l_reg = 0.125 + 1.5 + 0.02
    assert losses["loss_objectness"].item() == pytest.approx(l_cls / 3, abs=1e-6)  # N_cls = 3
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(10 * l_reg / 2, abs=1e-5)  # N_reg = 2
    sum(losses.values()).backward()
    # Ignored anchors get no gradient; negatives get none from the box term.
    assert torch.all(cls.grad[2] == 0) and torch.all(deltas.grad[1:3] == 0)
    assert torch.all(cls.grad[[0, 1, 3]] != 0)


def test_loss_hand_computed_batch_normalisation_and_beta():
    cls, deltas, labels, targets = tiny_case()
    losses = rpn_loss(cls, deltas, labels, targets, normalization="batch", lambda_reg=1.0)
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(1.645 / 3, abs=1e-6)
    losses = rpn_loss(cls, deltas, labels, targets, normalization="batch", lambda_reg=1.0, beta=1 / 9)
    # beta 1/9: |x| - 1/18 above the knee, 4.5 x^2 below it.
    expected = (0.5 - 1 / 18) + (2 - 1 / 18) + (0.2 - 1 / 18)
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(expected / 3, abs=1e-6)


def test_loss_matches_torchvision_style_formula():
    g = torch.Generator().manual_seed(0)
    cls, deltas, targets = torch.randn(300, 2, generator=g), torch.randn(300, 4, generator=g), \
        torch.randn(300, 4, generator=g)
    labels = torch.randint(-1, 2, (300,), generator=g)
    s, p = labels >= 0, labels == 1
    losses = rpn_loss(cls, deltas, labels, targets, normalization="batch", lambda_reg=1.0, beta=1 / 9)
    cls_ref = torch.nn.functional.cross_entropy(cls[s], labels[s])
    box_ref = torch.nn.functional.smooth_l1_loss(deltas[p], targets[p], beta=1 / 9,
                                                 reduction="sum") / s.sum()
    torch.testing.assert_close(losses["loss_objectness"], cls_ref)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], box_ref)


def test_loss_with_no_positives_or_nothing_sampled():
    cls, deltas, _, targets = tiny_case()
    losses = rpn_loss(cls, deltas, torch.tensor([0, 0, -1, -1]), targets, num_locations=2)
    assert losses["loss_rpn_box_reg"].item() == 0.0
    losses = rpn_loss(cls, deltas, torch.full((4,), -1), targets, num_locations=2)
    assert losses["loss_objectness"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0


def test_loss_bad_inputs():
    cls, deltas, labels, targets = tiny_case()
    with pytest.raises(ValueError, match="num_locations"):
        rpn_loss(cls, deltas, labels, targets)  # the paper's N_reg is unknown
    with pytest.raises(ValueError, match="normalization"):
        rpn_loss(cls, deltas, labels, targets, normalization="mean")
    with pytest.raises(ValueError, match=r"cls_logits must be \(4, 2\)"):
        rpn_loss(cls.view(2, 4), deltas, labels, targets, num_locations=2)
    with pytest.raises(TypeError, match="int64"):
        rpn_loss(cls, deltas, labels.float(), targets, num_locations=2)


# -- proposal layer (§3.3) -----------------------------------------------------------
def reference_proposals(anchors, objectness, deltas, image_size, pre, post, nms_thresh, min_size):
    """The proposal layer written the plain way, one image, with torchvision's pieces."""
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    boxes = torchvision.ops.clip_boxes_to_image(boxes, image_size)
    keep = torchvision.ops.remove_small_boxes(boxes, min_size)
    boxes, scores = boxes[keep], objectness[keep]
    order = scores.argsort(descending=True)[:pre]
    boxes, scores = boxes[order], scores[order]
    keep = torchvision.ops.nms(boxes, scores, nms_thresh)[:post]
    return boxes[keep], scores[keep]


def random_head_outputs(n, b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g), 0.3 * torch.randn(b, n, 4, generator=g)


@pytest.mark.parametrize("pre,post,min_size", [(6000, 300, 16.0), (500, 50, 4.0), (100000, 100000, 0.0)])
def test_proposals_match_the_reference(pre, post, min_size):
    anchors = grid_anchors((12, 16), 16, base_anchors((32, 64, 128), (0.5, 1.0, 2.0)))  # (1728, 4)
    sizes = [(190, 250), (160, 256), (192, 200)]
    objectness, deltas = random_head_outputs(anchors.shape[0], 3, seed=1)
    boxes, scores = generate_proposals_batch(anchors, objectness, deltas, sizes, pre_nms_top_n=pre,
                                             post_nms_top_n=post, min_size=min_size)
    for i, size in enumerate(sizes):
        ref_boxes, ref_scores = reference_proposals(anchors, objectness[i], deltas[i], size,
                                                    pre, post, 0.7, min_size)
        assert boxes[i].shape == ref_boxes.shape and len(ref_boxes) > 0
        torch.testing.assert_close(boxes[i], ref_boxes)
        torch.testing.assert_close(scores[i], ref_scores)
        one_boxes, _ = generate_proposals(anchors, objectness[i], deltas[i], size, pre_nms_top_n=pre,
                                          post_nms_top_n=post, min_size=min_size)
        torch.testing.assert_close(one_boxes, boxes[i])


def test_proposals_are_clipped_big_enough_sorted_and_not_overlapping():
    anchors = grid_anchors((10, 10), 16, base_anchors((64, 128), (0.5, 1.0, 2.0)))
    objectness, deltas = random_head_outputs(anchors.shape[0], 1, seed=2)
    boxes, scores = generate_proposals(anchors, objectness[0], deltas[0], (160, 150),
                                       pre_nms_top_n=400, post_nms_top_n=40)
    assert boxes.shape == (40, 4) and scores.shape == (40,)
    assert torch.all(boxes[:, :2] >= 0) and torch.all(boxes[:, 2] <= 150) and torch.all(boxes[:, 3] <= 160)
    assert torch.all(boxes[:, 2:] - boxes[:, :2] >= 16)
    assert torch.all(scores[:-1] >= scores[1:])
    iou = torchvision.ops.box_iou(boxes, boxes).fill_diagonal_(0)
    assert iou.max() <= 0.7


def test_proposals_nan_logits_raise_a_clear_error():
    anchors = grid_anchors((4, 4), 16, base_anchors((32,), (1.0,)))
    objectness, deltas = random_head_outputs(16, 1, seed=3)
    objectness[0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf .* diverged"):
        generate_proposals(anchors, objectness[0], deltas[0], (64, 64), pre_nms_top_n=10,
                           post_nms_top_n=5)
    objectness[0, 5] = 0.0
    deltas[0, 3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        generate_proposals(anchors, objectness[0], deltas[0], (64, 64), pre_nms_top_n=10,
                           post_nms_top_n=5)


def test_proposals_mismatched_devices_and_shapes():
    anchors = grid_anchors((4, 4), 16, base_anchors((32,), (1.0,)))
    objectness, deltas = random_head_outputs(16, 1, seed=3)
    with pytest.raises(ValueError, match="one device"):
        generate_proposals(anchors.to("meta"), objectness[0], deltas[0], (64, 64),
                           pre_nms_top_n=10, post_nms_top_n=5)
    with pytest.raises(ValueError, match="another feature size"):
        generate_proposals(anchors[:8], objectness[0], deltas[0], (64, 64),
                           pre_nms_top_n=10, post_nms_top_n=5)
    with pytest.raises(ValueError, match="image sizes"):
        generate_proposals_batch(anchors, objectness, deltas, [(64, 64)] * 2,
                                 pre_nms_top_n=10, post_nms_top_n=5)
    with pytest.raises(ValueError, match="generate_proposals_batch"):
        generate_proposals(anchors, objectness, deltas, (64, 64), pre_nms_top_n=10, post_nms_top_n=5)


# -- the module ------------------------------------------------------------------
def small_rpn(**kwargs):
    torch.manual_seed(0)
    return RegionProposalNetwork(16, stride=16, scales=(16, 32, 64), min_size=4.0, **kwargs)


def targets():
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0], [70.0, 70.0, 120.0, 126.0]])},
            {"boxes": torch.zeros(0, 4)}]


def test_rpn_defaults_are_the_papers():
    rpn = RegionProposalNetwork(512)
    assert (rpn.stride, rpn.scales, rpn.ratios) == (16, (128, 256, 512), (0.5, 1.0, 2.0))
    assert (rpn.fg_iou, rpn.bg_iou, rpn.batch_size_per_image, rpn.positive_fraction) == (0.7, 0.3, 256, 0.5)
    assert (rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train) == (12000, 2000)
    assert (rpn.pre_nms_top_n_test, rpn.post_nms_top_n_test) == (6000, 300)
    assert (rpn.nms_thresh, rpn.min_size, rpn.lambda_reg) == (0.7, 16, 10.0)
    assert rpn.loss_normalization == "paper" and isinstance(rpn.head, RPNHead)
    assert rpn.anchors((37, 62)).shape == (20646, 4)  # ~20k anchors for a 1000x600 image, VGG-16


def test_rpn_train_and_eval_modes():
    rpn = small_rpn(post_nms_top_n_train=50, post_nms_top_n_test=20)
    features = torch.randn(2, 16, 8, 8)
    proposals, losses = rpn(features, [(128, 128), (120, 100)], targets())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert [p.shape[1] for p in proposals] == [4, 4] and all(len(p) <= 50 for p in proposals)
    assert not any(p.requires_grad for p in proposals)
    sum(losses.values()).backward()
    assert rpn.head.conv.weight.grad is not None
    rpn.eval()
    proposals, losses = rpn(features, [(128, 128), (120, 100)])
    assert losses == {} and all(len(p) <= 20 for p in proposals)
    boxes, scores = rpn.propose(features, [(128, 128), (120, 100)])
    assert all(torch.equal(a, b) for a, b in zip(boxes, proposals))
    assert all(((s >= 0) & (s <= 1)).all() and (s[:-1] >= s[1:]).all() for s in scores)


def test_rpn_loss_normalisations_differ_by_n_reg():
    features = torch.randn(2, 16, 8, 8)
    sizes = [(128, 128), (128, 128)]
    paper = small_rpn()(features, sizes, targets())[1]
    batch = small_rpn(loss_normalization="batch")(features, sizes, targets())[1]
    rpn = small_rpn()  # same seed, so the same random mini-batch as the two calls above
    labels, _ = rpn.targets_for(rpn.anchors((8, 8)), sizes, targets())
    num_sampled = int((labels >= 0).sum())
    assert 256 < num_sampled <= 512  # image 1 has no boxes: negatives only
    torch.testing.assert_close(paper["loss_objectness"], batch["loss_objectness"])
    # paper: lambda / N_reg with N_reg = 2 images x 64 locations; batch: lambda / N_cls.
    ratio = (batch["loss_rpn_box_reg"] / paper["loss_rpn_box_reg"]).item()
    assert ratio == pytest.approx(128 / num_sampled, rel=1e-4)


def test_rpn_bad_targets():
    rpn = small_rpn()
    features = torch.randn(1, 16, 8, 8)
    with pytest.raises(ValueError, match="outside the image"):
        rpn(features, [(128, 128)], [{"boxes": torch.tensor([[100.0, 100.0, 140.0, 120.0]])}])
    with pytest.raises(ValueError, match="degenerate"):
        rpn(features, [(128, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]])}])
    with pytest.raises(ValueError, match="one device"):
        rpn(features, [(128, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0]], device="meta")}])
    with pytest.raises(ValueError, match="image sizes"):
        rpn(features, [(128, 128)] * 2)
    with pytest.raises(ValueError, match="targets"):
        rpn(features, [(128, 128)], targets())


def test_rpn_nan_features_raise_in_the_proposal_layer():
    rpn = small_rpn().eval()
    features = torch.randn(1, 16, 8, 8)
    features[0, :, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        rpn(features, [(128, 128)])
