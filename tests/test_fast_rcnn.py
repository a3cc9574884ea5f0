"""The Fast R-CNN head (chapter 8): RoI sampling, the head, its loss, post-processing."""

import math

import pytest
import torch
import torchvision
from torchvision.models.detection import roi_heads as tv_roi_heads

from frcnn_lite.boxes import box_iou, encode_boxes
from frcnn_lite.fast_rcnn import (FastRCNNHead, RoIHeads, decode_detections, fast_rcnn_loss,
                                  postprocess_detections, sample_rois)

GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


def shifted(dxs):
    """Copies of GT shifted right by each dx: IoU = (100 - dx) / (100 + dx)."""
    dxs = torch.as_tensor(dxs, dtype=torch.float32)
    return torch.stack([dxs, torch.zeros_like(dxs), 100 + dxs, torch.full_like(dxs, 100.0)], dim=1)


def proposals_with(num_fg, num_bg, num_far):
    fg = shifted(torch.linspace(0.0, 30.0, num_fg))  # IoU in [0.54, 1]: foreground
    bg = shifted(torch.linspace(40.0, 80.0, num_bg))  # IoU in [0.11, 0.43]: background
    far = torch.tensor([[300.0, 300.0, 350.0, 350.0]]).repeat(num_far, 1)  # IoU 0: never drawn
    return torch.cat([fg, bg, far])


def target(labels=(3,), boxes=GT):
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}


def sample(proposals, tgt, **kwargs):
    g = torch.Generator().manual_seed(0)
    rois, labels, targets = sample_rois([proposals], [tgt], generator=g, **kwargs)
    return rois[0], labels[0], targets[0]


# -- sampling -----------------------------------------------------------------------------------
def test_sampler_paper_counts_and_fractions():
    rois, labels, targets = sample(proposals_with(50, 200, 30), target())
    assert rois.shape == (128, 4) and labels.shape == (128,) and targets.shape == (128, 4)
    assert (labels == 3).sum() == 32 and (labels == 0).sum() == 96  # 25% of 128 foreground
    assert torch.equal(labels[:32], torch.full((32,), 3)) and torch.equal(labels[32:], torch.zeros(96, dtype=torch.long))
    iou = box_iou(rois, GT)[:, 0]
    assert bool((iou[:32] >= 0.5).all())
    assert bool((iou[32:] < 0.5).all()) and bool((iou[32:] >= 0.1).all())  # none of the far boxes
    assert torch.equal(targets[32:], torch.zeros(96, 4))


def test_sampler_few_foreground_fills_with_background():
    rois, labels, _ = sample(proposals_with(5, 200, 0), target())
    assert (labels > 0).sum() == 6  # 5 proposals + the ground-truth box itself
    assert (labels == 0).sum() == 122 and rois.shape[0] == 128


def test_sampler_small_image_gives_a_small_batch():
    rois, labels, _ = sample(proposals_with(3, 10, 40), target())
    assert (labels > 0).sum() == 4 and (labels == 0).sum() == 10 and rois.shape[0] == 14


def test_sampler_without_gt_boxes_added_and_other_fractions():
    _, labels, _ = sample(proposals_with(5, 200, 0), target(), add_gt_boxes=False)
    assert (labels > 0).sum() == 5 and (labels == 0).sum() == 123
    _, labels, _ = sample(proposals_with(50, 200, 0), target(), batch_size_per_image=64,
                          positive_fraction=0.5)
    assert (labels > 0).sum() == 32 and (labels == 0).sum() == 32
    # A wider background range [0, 0.5) also draws the far boxes.
    rois, labels, _ = sample(proposals_with(0, 0, 30), target(), bg_iou_lo=0.0)
    assert (labels == 0).sum() == 30 and (labels > 0).sum() == 1


def test_sampler_regression_targets_and_labels_of_matched_boxes():
    gts = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 260.0, 240.0]])
    props = torch.tensor([[10.0, 0.0, 110.0, 100.0],    # matches box 0 (IoU 0.82)
                          [200.0, 200.0, 260.0, 250.0]])  # matches box 1 (IoU 0.8)
    rois, labels, targets = sample(props, target((2, 5), gts), add_gt_boxes=False)
    order = rois[:, 0].argsort()
    rois, labels, targets = rois[order], labels[order], targets[order]
    assert labels.tolist() == [2, 5]
    # Hand-computed Eq. 2 with weights (10, 10, 5, 5): centre 60 -> 50 over w = 100.
    torch.testing.assert_close(targets[0], torch.tensor([-1.0, 0.0, 0.0, 0.0]))
    # Box 1: centre y 225 -> 220 over h = 50, h 50 -> 40.
    torch.testing.assert_close(targets[1], torch.tensor([0.0, -1.0, 0.0, 5 * math.log(40 / 50)]))
    torch.testing.assert_close(targets, encode_boxes(rois, gts, (10.0, 10.0, 5.0, 5.0)))


def test_sampler_image_without_objects_is_all_background():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    rois, labels, targets = sample(proposals_with(0, 0, 200), empty)
    assert rois.shape == (128, 4) and (labels == 0).all() and (targets == 0).all()
    rois, labels, targets = sample(torch.zeros(0, 4), empty)
    assert rois.shape == (0, 4) and labels.shape == (0,) and targets.shape == (0, 4)


def test_sampler_is_seeded_and_bad_settings_fail():
    a = sample(proposals_with(50, 200, 0), target())[0]
    b = sample(proposals_with(50, 200, 0), target())[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="bg_iou_lo < bg_iou_hi <= fg_iou"):
        sample(proposals_with(5, 5, 0), target(), bg_iou_lo=0.6)
    with pytest.raises(ValueError, match="batch_size_per_image >= 1"):
        sample(proposals_with(5, 5, 0), target(), batch_size_per_image=0)
    with pytest.raises(ValueError, match="proposals for 2 images but targets for 1"):
        sample_rois([GT, GT], [target()])
    with pytest.raises(ValueError, match=r"must lie in 1..2"):
        sample_rois([GT], [target((3,))], num_classes=2)


# -- the head -----------------------------------------------------------------------------------
def test_head_shapes_and_both_roi_pools_agree():
    torch.manual_seed(0)
    head = FastRCNNHead(8, 5, representation_size=32)
    features = torch.randn(2, 8, 16, 16)
    rois = [proposals_with(4, 4, 1), torch.tensor([[-50.0, -50.0, 300.0, 300.0]])]  # one off-map
    logits, deltas = head(features, rois)
    assert logits.shape == (10, 6) and deltas.shape == (10, 20)
    f1 = features.clone().requires_grad_()
    f2 = features.clone().requires_grad_()
    out1 = head(f1, rois)
    head.roi_pool_impl = "torchvision"
    out2 = head(f2, rois)
    torch.testing.assert_close(out1, out2)
    (out1[0].sum() + out1[1].sum()).backward()
    (out2[0].sum() + out2[1].sum()).backward()
    torch.testing.assert_close(f1.grad, f2.grad)


def test_head_boxes_outside_the_map_and_empty_roi_sets():
    head = FastRCNNHead(4, 3, representation_size=16)
    features = torch.randn(2, 4, 8, 8)
    outside = torch.tensor([[500.0, 500.0, 600.0, 600.0]])  # past the map: pooled to zeros
    pooled = head.pool(features, [outside, torch.zeros(0, 4)])
    assert pooled.shape == (1, 4, 7, 7) and bool((pooled == 0).all())
    logits, deltas = head(features, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert logits.shape == (0, 4) and deltas.shape == (0, 12)
    with pytest.raises(ValueError, match="RoIs for 1 images but features for 2"):
        head(features, [outside])
    with pytest.raises(ValueError, match=r"features must be \(B, 4, Hf, Wf\)"):
        head(torch.randn(2, 5, 8, 8), [outside, outside])
    with pytest.raises(ValueError, match="roi_pool_impl"):
        FastRCNNHead(4, 3, roi_pool_impl="caffe")


def test_checkpoint_with_another_class_count_is_a_clear_error():
    source = RoIHeads(4, 3, representation_size=16)
    head = FastRCNNHead(4, 5, representation_size=16)
    with pytest.raises(ValueError, match="checkpoint has K=3 classes, head has K=5"):
        head.load_state_dict(source.head.state_dict())
    wrapper = RoIHeads(4, 5, representation_size=16)  # through a containing module too
    with pytest.raises(ValueError, match="checkpoint has K=3 classes, head has K=5"):
        wrapper.load_state_dict(source.state_dict())
    # The advice works: drop the class layers and load the rest.
    state = {k: v for k, v in source.state_dict().items() if ".cls_score." not in k and ".bbox_pred." not in k}
    result = wrapper.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.bbox_pred.bias", "head.bbox_pred.weight",
                                           "head.cls_score.bias", "head.cls_score.weight"]
    torch.testing.assert_close(wrapper.head.fc6.weight, source.head.fc6.weight)


# -- the loss -----------------------------------------------------------------------------------
def test_loss_hand_computed():
    logits = torch.zeros(2, 3, requires_grad=True)  # uniform over K + 1 = 3: CE = log 3
    deltas = torch.zeros(2, 8)
    deltas[0, 0:4] = torch.tensor([0.5, 0.0, 0.0, 2.0])  # RoI 0, class 1 (its true class)
    deltas[0, 4:8] = 100.0  # class 2 of RoI 0: not its class, no loss
    deltas[1] = 100.0  # RoI 1 is background: no box loss
    deltas.requires_grad_()
    losses = fast_rcnn_loss(logits, deltas, torch.tensor([1, 0]), torch.zeros(2, 4))
    torch.testing.assert_close(losses["loss_classifier"], torch.tensor(math.log(3)))
    # smooth L1 (beta 1): 0.5 * 0.5**2 + (2 - 0.5) = 1.625, divided by R = 2.
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.8125))
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    assert deltas.grad[1].abs().sum() == 0 and deltas.grad[0, 4:].abs().sum() == 0


def test_loss_matches_torchvision_with_its_beta():
    g = torch.Generator().manual_seed(0)
    num_rois, num_classes = 40, 4
    logits = torch.randn(num_rois, num_classes + 1, generator=g)
    deltas = torch.randn(num_rois, 4 * num_classes, generator=g)
    labels = torch.randint(0, num_classes + 1, (num_rois,), generator=g)
    targets = torch.randn(num_rois, 4, generator=g)
    ours = fast_rcnn_loss(logits, deltas, [labels[:10], labels[10:]], [targets[:10], targets[10:]],
                          beta=1 / 9)
    # torchvision keeps deltas for background too: (R, 4 (K + 1)).
    tv_deltas = torch.cat([torch.zeros(num_rois, 4), deltas], dim=1)
    cls, box = tv_roi_heads.fastrcnn_loss(logits, tv_deltas, [labels], [targets])
    torch.testing.assert_close(ours["loss_classifier"], cls)
    torch.testing.assert_close(ours["loss_box_reg"], box)


def test_loss_of_an_empty_batch_and_bad_shapes():
    logits = torch.zeros(0, 4, requires_grad=True)
    deltas = torch.zeros(0, 12, requires_grad=True)
    losses = fast_rcnn_loss(logits, deltas, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert losses["loss_classifier"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()  # still connected to the graph
    with pytest.raises(ValueError, match=r"box_deltas must be \(R, 4K\)"):
        fast_rcnn_loss(torch.zeros(2, 4), torch.zeros(2, 16), torch.zeros(2, dtype=torch.long),
                       torch.zeros(2, 4))


# -- post-processing ----------------------------------------------------------------------------
def logits_for(probabilities):
    return torch.log(torch.as_tensor(probabilities, dtype=torch.float32))


def test_postprocess_threshold_per_class_nms_and_top_k():
    rois = [torch.tensor([[0.0, 0.0, 100.0, 100.0],     # A
                          [20.0, 0.0, 120.0, 100.0],    # B: IoU(A, B) = 0.67
                          [60.0, 0.0, 160.0, 100.0]])]  # C: IoU(A, C) = 0.25
    # K = 2. Class 1 scores 0.6, 0.5, 0.3; class 2 scores 0.3, 0.04, 0.65.
    logits = logits_for([[0.1, 0.6, 0.3], [0.46, 0.5, 0.04], [0.05, 0.3, 0.65]])
    deltas = torch.zeros(3, 8)  # boxes stay the RoIs
    det = postprocess_detections(logits, deltas, rois, [(200, 200)])[0]
    # class 1: A kept, B suppressed by A (0.67 > 0.3), C kept (0.25 <= 0.3);
    # class 2: B is under 0.05; A and C kept (other class than class 1's boxes: no suppression).
    got = sorted(zip(det["labels"].tolist(), [round(s, 2) for s in det["scores"].tolist()]))
    assert got == [(1, 0.3), (1, 0.6), (2, 0.3), (2, 0.65)]
    assert det["scores"].tolist() == sorted(det["scores"].tolist(), reverse=True)
    few = postprocess_detections(logits, deltas, rois, [(200, 200)], detections_per_img=2)[0]
    assert [round(s, 2) for s in few["scores"].tolist()] == [0.65, 0.6]
    # Boxes are clipped to the image: C ends at x = 160, the image is 150 wide.
    clipped = postprocess_detections(logits, deltas, rois, [(200, 150)])[0]
    assert clipped["boxes"][:, 2].max().item() == 150.0


def test_postprocess_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    num_classes, sizes = 3, [(120, 160), (90, 100)]
    rois = []
    for h, w in sizes:
        xy = torch.rand(150, 2, generator=g) * torch.tensor([w, h]) * 0.7
        rois.append(torch.cat([xy, xy + 10 + torch.rand(150, 2, generator=g) * 40], dim=1))
    logits = torch.randn(300, num_classes + 1, generator=g) * 3
    deltas = torch.randn(300, 4 * num_classes, generator=g) * 0.5
    ours = postprocess_detections(logits, deltas, rois, sizes, score_thresh=0.05, nms_thresh=0.3,
                                  detections_per_img=100)
    tv = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.3, 100)
    tv_deltas = torch.cat([torch.zeros(300, 4), deltas], dim=1)
    boxes, scores, labels = tv.postprocess_detections(logits, tv_deltas, rois, sizes)
    for d, b, s, lab in zip(ours, boxes, scores, labels):
        assert d["boxes"].shape[0] > 10
        torch.testing.assert_close(d["boxes"], b)
        torch.testing.assert_close(d["scores"], s)
        assert torch.equal(d["labels"], lab)


def test_postprocess_empty_rois():
    dets = postprocess_detections(torch.zeros(0, 4), torch.zeros(0, 12),
                                  [torch.zeros(0, 4), torch.zeros(0, 4)], [(50, 50), (60, 60)])
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape == (0, 4) and d["labels"].shape == (0,) and d["scores"].shape == (0,)
        assert d["labels"].dtype == torch.int64
    per_class = decode_detections(torch.zeros(0, 4), torch.zeros(0, 12), [torch.zeros(0, 4)], [(5, 5)])
    assert per_class[0][0].shape == (0, 3, 4) and per_class[0][1].shape == (0, 3)
    with pytest.raises(ValueError, match="the number of RoIs given"):
        postprocess_detections(torch.zeros(3, 4), torch.zeros(3, 12), [torch.zeros(2, 4)], [(5, 5)])


# -- RoIHeads -----------------------------------------------------------------------------------
def test_roi_heads_train_and_eval():
    torch.manual_seed(0)
    heads = RoIHeads(8, 5, representation_size=32, detections_per_img=7)
    features = torch.randn(2, 8, 16, 16)
    proposals = [proposals_with(20, 60, 5), torch.zeros(0, 4)]  # image 1 has no proposals
    targets = [target((3,)), target((1,), torch.tensor([[30.0, 40.0, 90.0, 120.0]]))]
    detections, losses = heads(features, proposals, [(256, 256)] * 2, targets)
    assert detections == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    assert losses["loss_classifier"].item() == pytest.approx(math.log(6), rel=0.05)  # near uniform
    sum(losses.values()).backward()
    assert heads.head.fc6.weight.grad is not None
    heads.eval()
    detections, losses = heads(features, proposals, [(256, 256)] * 2)
    assert losses == {} and len(detections) == 2
    assert detections[0]["boxes"].shape[0] <= 7 and detections[1]["boxes"].shape == (0, 4)
    _, losses = heads(features, proposals, [(256, 256)] * 2, targets)  # validation losses
    assert set(losses) == {"loss_classifier", "loss_box_reg"}


def test_roi_heads_bad_inputs():
    heads = RoIHeads(8, 2, representation_size=16)
    features = torch.randn(1, 8, 16, 16)
    with pytest.raises(ValueError, match="needs targets"):
        heads(features, [GT], [(256, 256)])
    with pytest.raises(ValueError, match="features hold 1 images but got 2 proposal"):
        heads(features, [GT, GT], [(256, 256)] * 2, [target((1,))] * 2)
    with pytest.raises(ValueError, match=r"must lie in 1..2"):  # dataset has more classes than the head
        heads(features, [GT], [(256, 256)], [target((4,))])
