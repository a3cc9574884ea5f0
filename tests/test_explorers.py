"""frcnn_lite.book.explorers: the precomputed states equal the library's answers."""

import re

import pytest
import torch

from frcnn_lite.anchors import POSITIVE, anchor_coverage, base_anchors, grid_anchors, label_anchors
from frcnn_lite.book import explorers
from frcnn_lite.rpn import generate_proposals

pytest.importorskip("bokeh")

IMAGE = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
GT = torch.tensor([[8.0, 8.0, 40.0, 30.0], [30.0, 34.0, 60.0, 62.0]])


def rows(ex, kind, state, key=None):
    """The rows an explorer layer draws in ``state`` (a full state dict)."""
    full = tuple(state[c.name] for c in ex.controls)
    found = [layer.rows.get(full) for (k, name), layer in ex.layers.items()
             if k == kind and (key is None or name == key)]
    return [r for r in found if r]


def boxes_of(row):
    return torch.tensor([row["x1"], row["y1"], row["x2"], row["y2"]]).T.reshape(-1, 4)


def test_controls_reject_bad_specs():
    with pytest.raises(ValueError, match="evenly spaced"):
        explorers.slider("t", "t", [1, 2, 4], 2)
    with pytest.raises(ValueError, match="default 3"):
        explorers.slider("t", "t", [1, 2], 3)
    with pytest.raises(ValueError, match="default index 2"):
        explorers.buttons("b", "b", ["x", "y"], 2)
    with pytest.raises(ValueError, match="unique"):
        explorers.Explorer(IMAGE, [explorers.slider("t", "t", [1, 2], 1)] * 2)


def test_anchor_explorer_counts_and_coverage_match_the_library():
    scale_sets, ratio_sets = [(16, 32), (8,)], [(1.0,), (0.5, 1.0, 2.0)]
    ex = explorers.anchor_explorer(IMAGE, GT, GT, scale_sets, ratio_sets, strides=(8, 16),
                                   default=(0, 1, 16))
    assert len(list(ex.states())) == 8
    for state in ex.states():
        base = base_anchors(scale_sets[state["scales"]], ratio_sets[state["ratios"]])
        side = 64 // state["stride"]
        anchors = grid_anchors((side, side), state["stride"], base)
        (text,) = rows(ex, "text", state)[0]["text"]
        assert text.startswith(f"{len(anchors)} anchors = {side}x{side} cells x {len(base)}")
        (bars,) = rows(ex, "bars", state)
        best = anchor_coverage(anchors, GT, (64, 64))
        assert bars["top"] == torch.histc(best, bins=10, min=0, max=1).tolist()
        # the drawn anchors are those of the cells holding the boxes' centres
        (drawn,) = rows(ex, "boxes", state)
        centres = (boxes_of(drawn)[:, :2] + boxes_of(drawn)[:, 2:]) / 2
        expected = ((GT[:, :2] + GT[:, 2:]) / 2 // state["stride"] + 0.5) * state["stride"]
        assert torch.equal(centres.unique(dim=0), expected.unique(dim=0))


def test_labelling_explorer_uses_label_anchors():
    anchors = grid_anchors((8, 8), 8, base_anchors((16, 32), (0.5, 1.0, 2.0)))
    ex = explorers.labelling_explorer(IMAGE, GT, anchors, fg_values=(50, 70), bg_values=(10, 30),
                                      default=(70, 30))
    for state in ex.states():
        labels, _ = label_anchors(anchors, GT, (64, 64), fg_iou=state["fg"] / 100,
                                  bg_iou=state["bg"] / 100)
        drawn = {name: row for (kind, name), layer in ex.layers.items() if kind == "boxes"
                 for row in [layer.rows.get((state["fg"], state["bg"]))] if row}
        positive = boxes_of(drawn["positive:" + explorers.COLORS["positive"]])
        assert torch.equal(positive, anchors[labels == POSITIVE])
        text = rows(ex, "text", state)[0]["text"][0]
        assert text.startswith(f"{int((labels == POSITIVE).sum())} positive")


def test_proposal_explorer_matches_generate_proposals():
    anchors = grid_anchors((8, 8), 8, base_anchors((16, 32), (0.5, 1.0, 2.0)))
    g = torch.Generator().manual_seed(1)
    objectness, deltas = torch.randn(len(anchors), generator=g), 0.1 * torch.randn(
        len(anchors), 4, generator=g)
    ex = explorers.proposal_explorer(IMAGE, GT, anchors, objectness, deltas, pre_values=(50, 384),
                                     nms_values=(50, 100), post_values=(5, 20), min_size=1.0,
                                     default=(1, 50, 0))
    for state in ex.states():
        expected, _ = generate_proposals(
            anchors, objectness, deltas, (64, 64), pre_nms_top_n=(50, 384)[state["pre"]],
            post_nms_top_n=(5, 20)[state["post"]], nms_thresh=state["nms"] / 100, min_size=1.0)
        (drawn,) = rows(ex, "boxes", state)
        assert torch.allclose(boxes_of(drawn), expected)


def test_compaction_drops_controls_a_layer_ignores():
    ex = explorers.Explorer(IMAGE, [explorers.slider("a", "a", [1, 2], 1),
                                    explorers.buttons("b", "b", ["x", "y", "z"], 0)])
    for state in ex.states():
        ex.boxes(state, GT[:1] + state["a"], "anchor")      # changes with a only
        ex.text(state, f"b = {state['b']}")                  # changes with b only
    keys = {name: ex._compact(layer)[0] for (_, name), layer in ex.layers.items()}
    assert keys == {"anchor:" + explorers.COLORS["anchor"]: [0], "text": [1]}


def test_display_is_html_with_bokeh_and_a_still_fallback():
    ex = explorers.labelling_explorer(IMAGE, GT, grid_anchors((8, 8), 8, base_anchors((16,), (1.0,))),
                                      fg_values=(50, 70), bg_values=(10, 30), default=(70, 30))
    bundle = ex._repr_mimebundle_()
    html = bundle["text/html"]
    assert html.startswith(f'<div class="{explorers.CSS_CLASS}">')
    assert "Bokeh.embed.embed_items" in html            # the live figure, drawn by BokehJS
    assert re.search(r'class="frcnn-explorer-fallback"[^>]+src="data:image/jpeg;base64,', html)
    # nothing to fetch: the images are inline, BokehJS comes with the site
    assert not re.search(r"https?:", re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", html))
