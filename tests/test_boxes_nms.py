"""nms_top_n: exactly torchvision.ops.nms(...)[:top_n], computed chunk by chunk (chapter 13)."""

import pytest
import torch
import torchvision

from frcnn_lite.boxes import nms_top_n


def random_boxes(n, seed, size=200.0, max_wh=60.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * max_wh + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def reference(boxes, scores, iou, top_n):
    return torchvision.ops.nms(boxes, scores, iou)[:top_n]


@pytest.mark.parametrize("n,top_n,iou,chunk", [
    (3000, 300, 0.7, None), (3000, 300, 0.7, 100), (3000, 50, 0.3, 7), (2500, 2000, 0.7, 1000),
    (1000, 5000, 0.5, 64), (1001, 300, 0.7, 1000), (2000, 300, 0.7, 1000), (500, 1, 0.7, 10)])
def test_equals_full_nms_then_truncation(n, top_n, iou, chunk):
    for seed in range(3):
        boxes = random_boxes(n, seed)
        scores = torch.rand(n, generator=torch.Generator().manual_seed(100 + seed))
        assert torch.equal(nms_top_n(boxes, scores, iou, top_n, chunk_size=chunk),
                           reference(boxes, scores, iou, top_n))


@pytest.mark.parametrize("levels", [1, 2, 5])
def test_ties_keep_the_reference_order(levels):
    # Scores with many exact ties: both must visit equal scores in input order.
    n = 2000
    boxes = random_boxes(n, seed=levels)
    scores = torch.randint(0, levels, (n,), generator=torch.Generator().manual_seed(0)).float()
    for chunk in (1, 13, 500, None):
        assert torch.equal(nms_top_n(boxes, scores, 0.5, 150, chunk_size=chunk),
                           reference(boxes, scores, 0.5, 150))


def test_suppression_chain_across_chunk_borders():
    # Box k overlaps box k + 1 (IoU 0.8) but not k + 2: greedy NMS keeps every other box,
    # so a suppressed box must not suppress its successor, also across chunk borders.
    n = 101
    x = torch.arange(n).float() * 10.0
    boxes = torch.stack([x, torch.zeros(n), x + 90.0, torch.full((n,), 10.0)], dim=1)
    scores = torch.linspace(1.0, 0.0, n)
    expected = reference(boxes, scores, 0.7, 1000)
    assert torch.equal(expected, torch.arange(0, n, 2))
    for chunk in (1, 2, 3, 10, 50):
        assert torch.equal(nms_top_n(boxes, scores, 0.7, 1000, chunk_size=chunk), expected)
        assert torch.equal(nms_top_n(boxes, scores, 0.7, 7, chunk_size=chunk), expected[:7])


def test_identical_disjoint_and_unsorted_inputs():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3000, 1)
    scores = torch.rand(3000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(nms_top_n(same, scores, 0.7, 300, chunk_size=100), scores.argmax()[None])
    x = torch.arange(3000).float() * 20.0  # disjoint: everything survives, best first
    disjoint = torch.stack([x, torch.zeros(3000), x + 10.0, torch.full((3000,), 10.0)], dim=1)
    keep = nms_top_n(disjoint, scores, 0.7, 300, chunk_size=100)
    assert torch.equal(keep, scores.argsort(descending=True)[:300])


def test_empty_and_zero():
    boxes, scores = random_boxes(50, 0), torch.rand(50)
    assert nms_top_n(boxes, scores, 0.7, 0).numel() == 0
    assert nms_top_n(boxes[:0], scores[:0], 0.7, 10).numel() == 0
    assert nms_top_n(boxes[:0], scores[:0], 0.7, 10, chunk_size=3).numel() == 0


def test_bad_inputs():
    boxes, scores = random_boxes(10, 0), torch.rand(10)
    with pytest.raises(ValueError, match=r"boxes \(N, 4\) and scores \(N,\)"):
        nms_top_n(boxes, scores[:5], 0.7, 3)
    with pytest.raises(ValueError, match="top_n"):
        nms_top_n(boxes, scores, 0.7, -1)
    with pytest.raises(ValueError, match="chunk_size"):
        nms_top_n(boxes, scores, 0.7, 3, chunk_size=0)


def old_proposal_layer(anchors, objectness, deltas, image_sizes, pre, post, iou=0.7, min_size=16.0):
    """The proposal layer as it was before chapter 13: one batched_nms call, then truncation."""
    from frcnn_lite.boxes import clip_boxes, decode_boxes

    b, n = objectness.shape
    out = []
    for i in range(b):
        boxes = clip_boxes(decode_boxes(anchors, deltas[i], validate=False), image_sizes[i])
        wh = boxes[:, 2:] - boxes[:, :2]
        scores = objectness[i].masked_fill(~(wh >= min_size).all(dim=1), float("-inf"))
        scores, order = scores.topk(min(pre, n))
        boxes, valid = boxes[order], torch.isfinite(scores)
        out.append((boxes[valid], scores[valid]))
    boxes = torch.cat([o[0] for o in out])
    scores = torch.cat([o[1] for o in out])
    index = torch.cat([torch.full((len(o[1]),), i) for i, o in enumerate(out)])
    keep = torchvision.ops.batched_nms(boxes, scores, index, iou)
    return [(boxes[keep[index[keep] == i][:post]], scores[keep[index[keep] == i][:post]])
            for i in range(b)]


@pytest.mark.parametrize("pre,post", [(6000, 300), (12000, 2000), (1000, 300)])
def test_proposal_layer_unchanged_at_the_papers_size(pre, post):
    from frcnn_lite.anchors import base_anchors, grid_anchors
    from frcnn_lite.rpn import generate_proposals_batch

    anchors = grid_anchors((37, 62), 16, base_anchors((128, 256, 512), (0.5, 1.0, 2.0)))
    assert anchors.shape[0] == 20646  # the paper's ~20k anchors (§3.1.4)
    g = torch.Generator().manual_seed(pre)
    objectness, deltas = torch.randn(2, 20646, generator=g), 0.2 * torch.randn(2, 20646, 4, generator=g)
    sizes = [(600, 1000), (592, 980)]
    new = generate_proposals_batch(anchors, objectness, deltas, sizes, pre_nms_top_n=pre,
                                   post_nms_top_n=post)
    for i, (boxes, scores) in enumerate(old_proposal_layer(anchors, objectness, deltas, sizes,
                                                           pre, post)):
        assert len(boxes) == post
        assert torch.equal(new[0][i], boxes) and torch.equal(new[1][i], scores)
