"""The batched training targets (frcnn_lite.batched) equal the per-image reference.

Oracles are the per-image functions the book teaches: label_anchors,
sample_anchors, RegionProposalNetwork.targets_for, sample_rois, fast_rcnn_loss.
Labelling is deterministic and compared exactly; sampling draws other random
numbers, so it is compared by its counts (exact) and by its distribution (every
subset equally likely: a chi-square test over many draws with a fixed seed).
"""

import itertools

import pytest
import torch

from frcnn_lite.anchors import (IGNORED, NEGATIVE, POSITIVE, base_anchors, grid_anchors,
                                label_anchors, sample_anchors)
from frcnn_lite.batched import (fast_rcnn_loss_batch, label_anchors_batch, pad_boxes,
                                rpn_targets_batch, sample_anchors_batch, sample_rois_batch)
from frcnn_lite.config import PAPER, SHAPES
from frcnn_lite.fast_rcnn import fast_rcnn_loss, sample_rois
from frcnn_lite.rpn import RegionProposalNetwork, rpn_loss

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


def random_boxes(n, height, width, g, min_side=8.0):
    """``n`` valid boxes inside an image of size (height, width)."""
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width - min_side, height - min_side])
    wh = min_side + torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - xy - min_side)
    return torch.cat([xy, xy + wh], dim=1)


def batch_of_targets(preset, sizes, counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for (h, w), n in zip(sizes, counts):
        boxes = random_boxes(n, h, w, g)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 6, (n,), generator=g)})
    if counts[-1] >= 2:  # a duplicated box: two GT columns tie for every anchor
        targets[-1]["boxes"][1] = targets[-1]["boxes"][0]
    return targets


def anchors_for(preset, feature_size):
    return grid_anchors(feature_size, preset.stride, base_anchors(preset.scales, preset.ratios))


CASES = [  # preset, image sizes (the batch is padded to the largest), G per image
    (SHAPES, [(256, 256), (256, 240), (200, 256), (256, 256)], [3, 0, 1, 7]),
    (PAPER, [(600, 1000), (600, 800), (562, 1000)], [2, 12, 0]),
]


@pytest.mark.parametrize("preset, sizes, counts", CASES)
@pytest.mark.parametrize("allowed_border", [0.0, float("inf")])
def test_labels_and_matched_boxes_equal_label_anchors(preset, sizes, counts, allowed_border):
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    anchors = anchors_for(preset, (height // 16, width // 16))
    targets = batch_of_targets(preset, sizes, counts)
    labels, matched = label_anchors_batch(anchors, [t["boxes"] for t in targets], sizes,
                                          allowed_border=allowed_border)
    assert labels.shape == matched.shape == (len(sizes), anchors.shape[0])
    for i, (size, target) in enumerate(zip(sizes, targets)):
        ref_labels, ref_matched = label_anchors(anchors, target["boxes"], size,
                                                allowed_border=allowed_border)
        assert torch.equal(labels[i], ref_labels), f"image {i}"
        assert torch.equal(matched[i], ref_matched), f"image {i}"
        assert (ref_labels == POSITIVE).any() == (counts[i] > 0)  # the case has positives


@pytest.mark.parametrize("preset, sizes, counts", CASES)
def test_rpn_targets_equal_targets_for_and_give_the_same_loss(preset, sizes, counts):
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    rpn = RegionProposalNetwork(8, stride=preset.stride, scales=preset.scales, ratios=preset.ratios,
                                batch_size_per_image=10 ** 6)  # sample everything: deterministic
    anchors = rpn.anchors((height // 16, width // 16))
    targets = batch_of_targets(preset, sizes, counts, seed=1)
    labels, reg = rpn_targets_batch(anchors, sizes, targets, batch_size_per_image=10 ** 6)
    ref_labels, ref_reg = rpn.targets_for(anchors, sizes, targets)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(reg, ref_reg)
    g = torch.Generator().manual_seed(2)
    logits, deltas = torch.randn(labels.numel(), 2, generator=g), torch.randn(labels.numel(), 4, generator=g)
    ours = rpn_loss(logits, deltas, labels.reshape(-1), reg.reshape(-1, 4), num_locations=100)
    ref = rpn_loss(logits, deltas, ref_labels.reshape(-1), ref_reg.reshape(-1, 4), num_locations=100)
    assert ours["loss_objectness"] > 0 and ours["loss_rpn_box_reg"] > 0
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=0)


@pytest.mark.parametrize("num_pos, num_neg", [(300, 5000), (40, 5000), (40, 100), (0, 50), (0, 0)])
def test_sample_anchors_counts_match_the_reference(num_pos, num_neg):
    labels = torch.full((6000,), IGNORED)
    perm = torch.randperm(6000, generator=torch.Generator().manual_seed(0))
    labels[perm[:num_pos]] = POSITIVE
    labels[perm[num_pos:num_pos + num_neg]] = NEGATIVE
    ours = sample_anchors_batch(labels.expand(3, -1).clone(), 256, 0.5,
                                torch.Generator().manual_seed(1))
    ref = sample_anchors(labels, 256, 0.5, torch.Generator().manual_seed(1))
    for row in ours:
        for value in (POSITIVE, NEGATIVE):
            assert int((row == value).sum()) == int((ref == value).sum())
            assert bool((labels[row == value] == value).all())  # only relabels subsets


def chi_square_p(counts):
    """p-value of a chi-square test that ``counts`` (k,) are uniform."""
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    stat = ((counts - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((counts.numel() - 1) / 2.0), stat / 2))


def subset_counts(rows, mask, k):
    """How often each k-subset of the True positions of ``mask`` was drawn."""
    positions = torch.where(mask)[0].tolist()
    index = {c: i for i, c in enumerate(itertools.combinations(positions, k))}
    counts = torch.zeros(len(index))
    for row in rows:
        counts[index[tuple(torch.where(row & mask)[0].tolist())]] += 1
    return counts


def test_sample_anchors_draws_every_subset_equally_often():
    # 5 positives, 6 negatives, mini-batch of 4 with half positive: 2 of 5 positives
    # (10 subsets) and 2 of 6 negatives (15 subsets), each equally likely.
    p, n, i = POSITIVE, NEGATIVE, IGNORED
    labels = torch.tensor([p, n, p, i, n, p, n, n, p, i, n, p, n])
    draws = sample_anchors_batch(labels.expand(6000, -1).clone(), 4, 0.5,
                                 torch.Generator().manual_seed(0))  # (6000, 13)
    assert ((draws == POSITIVE).sum(1) == 2).all() and ((draws == NEGATIVE).sum(1) == 2).all()
    pos = subset_counts(draws == POSITIVE, labels == POSITIVE, 2)
    neg = subset_counts(draws == NEGATIVE, labels == NEGATIVE, 2)
    assert pos.numel() == 10 and neg.numel() == 15 and pos.min() > 0 and neg.min() > 0
    assert chi_square_p(pos) > 1e-3 and chi_square_p(neg) > 1e-3
    # The test can fail: a sampler that prefers low indices is rejected.
    biased = pos.clone()
    biased[0] += 150
    assert chi_square_p(biased) < 1e-3


def roi_case(seed=0):
    """Two images with objects and one without; proposals near and far from the objects."""
    g = torch.Generator().manual_seed(seed)
    targets = batch_of_targets(SHAPES, [(256, 256)] * 3, [4, 2, 0], seed)
    proposals = []
    for t, n in zip(targets, (300, 150, 40)):
        near = t["boxes"].repeat(20, 1) + torch.randn(20 * t["boxes"].shape[0], 4, generator=g) * 6
        near = torch.cat([near[:, :2], torch.maximum(near[:, 2:], near[:, :2] + 2)], 1)
        proposals.append(torch.cat([near, random_boxes(n, 256, 256, g)]))
    return proposals, targets


def test_sample_rois_takes_the_same_set_when_everything_fits():
    proposals, targets = roi_case()
    kw = dict(batch_size_per_image=4096, positive_fraction=0.5)
    rois, labels, reg = sample_rois_batch(proposals, targets, **kw)
    ref = sample_rois(proposals, targets, **kw)
    for i, (r_rois, r_labels, r_reg) in enumerate(zip(*ref)):
        filled = labels[i] >= 0
        assert int(filled.sum()) == r_rois.shape[0] and bool(filled[:r_rois.shape[0]].all())
        num_fg = int((r_labels > 0).sum())
        assert torch.equal(labels[i, :num_fg] > 0, torch.ones(num_fg, dtype=torch.bool))
        for block in (slice(0, num_fg), slice(num_fg, r_rois.shape[0])):
            ours = torch.cat([rois[i, block], labels[i, block, None].float(), reg[i, block]], 1)
            theirs = torch.cat([r_rois[block], r_labels[block, None].float(), r_reg[block]], 1)
            assert torch.equal(sort_rows(ours), sort_rows(theirs)), f"image {i}"


def sort_rows(x):
    for col in reversed(range(x.shape[1])):
        x = x[x[:, col].argsort(stable=True)]
    return x


def test_sample_rois_counts_and_targets_match_when_sampling():
    proposals, targets = roi_case(seed=3)
    rois, labels, reg = sample_rois_batch(proposals, targets, generator=torch.Generator().manual_seed(0))
    ref = sample_rois(proposals, targets, generator=torch.Generator().manual_seed(0))
    # what the reference assigns to every candidate (take them all)
    everything = sample_rois(proposals, targets, batch_size_per_image=10 ** 6, positive_fraction=1.0)
    for i in range(len(proposals)):
        assert int((labels[i] > 0).sum()) == int((ref[1][i] > 0).sum())
        assert int((labels[i] == 0).sum()) == int((ref[1][i] == 0).sum())
        assert int((labels[i] >= 0).sum()) == ref[0][i].shape[0]
        table = {tuple(b.tolist()): (int(l), t) for b, l, t in zip(*(x[i] for x in everything))}
        for box, label, target in zip(rois[i][labels[i] >= 0], labels[i][labels[i] >= 0],
                                      reg[i][labels[i] >= 0]):
            ref_label, ref_target = table[tuple(box.tolist())]
            assert int(label) == ref_label
            assert torch.equal(target, ref_target)


def test_sample_rois_draws_every_foreground_subset_equally_often():
    # One object, 5 foreground candidates (the GT box and 4 shifted copies), 3 background.
    gt = torch.tensor([[50.0, 50.0, 150.0, 150.0]])
    shifts = torch.tensor([[2.0], [4.0], [6.0], [8.0]])
    proposals = torch.cat([gt + shifts, gt + 40.0 + shifts[:3]])  # IoU > 0.5, then in [0.1, 0.5)
    targets = [{"boxes": gt, "labels": torch.tensor([1])}] * 3000
    rois, labels, _ = sample_rois_batch([proposals] * 3000, targets, batch_size_per_image=4,
                                        positive_fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert ((labels > 0).sum(1) == 2).all() and ((labels == 0).sum(1) == 2).all()
    candidates = torch.cat([proposals, gt])  # (8, 4) in the reference's order
    drawn = (rois[:, :2, None, :] == candidates[None, None]).all(-1).any(1)  # (3000, 8)
    fg_mask = torch.tensor([True] * 4 + [False] * 3 + [True])
    counts = subset_counts(drawn, fg_mask, 2)
    assert counts.numel() == 10 and chi_square_p(counts) > 1e-3


def test_fast_rcnn_loss_batch_equals_the_reference_for_the_same_rois():
    proposals, targets = roi_case(seed=5)
    ref_rois, ref_labels, ref_reg = sample_rois(proposals, targets,
                                                generator=torch.Generator().manual_seed(0))
    slots = 128
    labels = torch.full((3, slots), -1)
    reg = torch.zeros(3, slots, 4)
    for i, (l, r) in enumerate(zip(ref_labels, ref_reg)):
        labels[i, :l.shape[0]], reg[i, :l.shape[0]] = l, r
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3 * slots, 6, generator=g, requires_grad=True)
    deltas = torch.randn(3 * slots, 20, generator=g, requires_grad=True)
    filled = (labels >= 0).reshape(-1)
    ours = fast_rcnn_loss_batch(logits, deltas, labels, reg)
    ref = fast_rcnn_loss(logits[filled], deltas[filled], ref_labels, ref_reg)
    assert ref["loss_box_reg"] > 0
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)
    g_ours = torch.autograd.grad(sum(ours.values()), (logits, deltas))
    g_ref = torch.autograd.grad(sum(ref.values()), (logits, deltas))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        assert not a[~filled].any()  # empty slots get no gradient


def test_fast_rcnn_loss_batch_of_empty_slots_is_zero_with_a_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    deltas = torch.randn(4, 8, requires_grad=True)
    out = fast_rcnn_loss_batch(logits, deltas, torch.full((4,), -1), torch.zeros(4, 4))
    assert out["loss_classifier"].item() == 0.0 and out["loss_box_reg"].item() == 0.0
    sum(out.values()).backward()
    assert logits.grad is not None and deltas.grad is not None


def test_defaults_equal_the_reference_defaults():
    import inspect

    from frcnn_lite.fast_rcnn import BOX_WEIGHTS

    for ours, ref in ((sample_rois_batch, sample_rois), (sample_anchors_batch, sample_anchors),
                      (label_anchors_batch, label_anchors)):
        theirs = inspect.signature(ref).parameters
        for name, p in inspect.signature(ours).parameters.items():
            if name in theirs and p.default is not inspect.Parameter.empty:
                assert p.default == theirs[name].default, (ours.__name__, name)
    assert inspect.signature(sample_rois_batch).parameters["box_weights"].default == BOX_WEIGHTS


def test_pad_boxes_names_the_bad_input():
    with pytest.raises(ValueError, match=r"targets\.boxes\[1\] must be a \(G_i, 4\)"):
        pad_boxes([torch.zeros(2, 4), torch.zeros(3)], "targets.boxes")


@NO_GPU
def test_cuda_equals_cpu():
    sizes, counts = CASES[0][1], CASES[0][2]
    anchors = anchors_for(SHAPES, (16, 16))
    targets = batch_of_targets(SHAPES, sizes, counts)
    gt = [t["boxes"] for t in targets]
    cpu = label_anchors_batch(anchors, gt, sizes)
    gpu = label_anchors_batch(anchors.cuda(), [b.cuda() for b in gt], sizes)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    sampled = sample_anchors_batch(gpu[0], 256, 0.5, torch.Generator("cuda").manual_seed(0))
    ref = [sample_anchors(row, 256, 0.5) for row in cpu[0]]
    for row, r in zip(sampled.cpu(), ref):
        assert int((row == POSITIVE).sum()) == int((r == POSITIVE).sum())
        assert int((row == NEGATIVE).sum()) == int((r == NEGATIVE).sum())
    proposals, targets = roi_case()
    on_gpu = [{k: v.cuda() for k, v in t.items()} for t in targets]
    kw = dict(batch_size_per_image=4096, positive_fraction=0.5)
    for a, b in zip(sample_rois_batch(proposals, targets, **kw),
                    sample_rois_batch([p.cuda() for p in proposals], on_gpu, **kw)):
        assert a.shape == b.shape


def test_a_training_step_wired_to_the_batched_targets_gives_the_same_losses(monkeypatch):
    # The wiring proposed for RegionProposalNetwork.targets_for and RoIHeads.losses, patched
    # in: every labelled anchor and every candidate RoI is sampled, so both paths train on
    # the same set and must give the same four losses and gradients.
    from frcnn_lite.model import FasterRCNN, FasterRCNNConfig

    config = FasterRCNNConfig(num_classes=3, min_size=128, max_size=128, scales=(16.0, 32.0, 64.0),
                              rpn_batch_size_per_image=10 ** 6, post_nms_top_n_train=40,
                              roi_batch_size_per_image=256, roi_positive_fraction=0.5,
                              representation_size=32)
    torch.manual_seed(0)
    model = FasterRCNN(config).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(3)]
    targets = batch_of_targets(SHAPES, [(128, 128)] * 3, [2, 0, 3], seed=4)
    targets = [{"boxes": t["boxes"], "labels": (t["labels"] - 1) % 3 + 1} for t in targets]
    ref = model(images, targets)
    ref_grads = torch.autograd.grad(sum(ref.values()), list(model.parameters()), allow_unused=True)

    rpn, heads = model.rpn, model.roi_heads

    def targets_for(anchors, image_sizes, targets, generator=None):
        return rpn_targets_batch(anchors, image_sizes, targets, fg_iou=rpn.fg_iou,
                                 bg_iou=rpn.bg_iou, allowed_border=rpn.allowed_border,
                                 batch_size_per_image=rpn.batch_size_per_image,
                                 positive_fraction=rpn.positive_fraction, generator=generator)

    def losses(features, proposals, targets):
        rois, labels, reg = sample_rois_batch(
            proposals, targets, batch_size_per_image=heads.batch_size_per_image,
            positive_fraction=heads.positive_fraction, fg_iou=heads.fg_iou,
            bg_iou_hi=heads.bg_iou_hi, bg_iou_lo=heads.bg_iou_lo,
            add_gt_boxes=heads.add_gt_boxes, box_weights=heads.box_weights)
        class_logits, box_deltas = heads.head(features, list(rois.unbind(0)))
        return fast_rcnn_loss_batch(class_logits, box_deltas, labels, reg,
                                    lambda_reg=heads.lambda_reg)

    monkeypatch.setattr(rpn, "targets_for", targets_for)
    monkeypatch.setattr(heads, "losses", losses)
    ours = model(images, targets)
    assert set(ours) == set(ref) and all(v > 0 for v in ref.values())
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(sum(ours.values()), list(model.parameters()), allow_unused=True)
    for a, b in zip(grads, ref_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
