"""The paper-facts registry: every fact has a valid location, source and phrase."""

import re

import pytest

from frcnn_lite import paper
from frcnn_lite.config import PAPER, FasterRCNNConfig


@pytest.mark.parametrize("fact", paper.FACTS, ids=[f.key for f in paper.FACTS])
def test_fact_has_a_valid_location_and_source(fact):
    assert paper.location_problems(fact) == []


def test_keys_are_unique():
    keys = [f.key for f in paper.FACTS]
    assert len(keys) == len(set(keys))


def test_cite_gives_the_phrase_and_where():
    assert paper.cite("rpn_batch") == "256 anchors per image (§3.1.3)"
    assert paper.cite("roi_batch") == "128 RoIs per image (py-faster-rcnn)"
    assert paper.cite("roi_fg_fraction") == "at most 25% foreground RoIs (Fast R-CNN §2.3)"
    assert paper.where("exp_clamp") == "torchvision"


def test_unknown_key_is_a_clear_error():
    with pytest.raises(KeyError, match="did you mean"):
        paper.fact("rpn_batchsize")


def test_locations_use_one_table_numbering():
    roman = re.compile(r"Table [IVX]+\b")
    assert not [f.key for f in paper.FACTS if roman.search(f.where + f.text + f.note)]
    assert paper.fact("table2_proposals").where == "Table 2"
    assert paper.fact("voc07_vgg").where == "Table 3"
    assert paper.fact("rpn_init_std").where == "§3.1.3"


def test_implementation_facts_are_not_attributed_to_the_paper():
    for key in ("positive_clobber", "exp_clamp", "roi_batch", "score_thresh", "test_nms",
                "detections_per_img", "box_target_stds", "pre_nms_train", "pre_nms_test"):
        assert paper.fact(key).source != "paper", key


def test_registry_agrees_with_the_library_defaults():
    c = FasterRCNNConfig()
    assert PAPER.scales == tuple(float(s) for s in paper.value("anchor_scales"))
    assert PAPER.ratios == tuple(float(r) for r in paper.value("anchor_ratios"))
    assert PAPER.stride == paper.value("stride") and PAPER.min_size == paper.value("shorter_side")
    assert PAPER.max_size == paper.value("max_size")
    pairs = {"rpn_fg_iou": c.rpn_fg_iou, "rpn_bg_iou": c.rpn_bg_iou, "lambda_reg": c.lambda_reg,
             "rpn_batch": c.rpn_batch_size_per_image, "proposal_nms": c.rpn_nms_thresh,
             "train_proposals": c.post_nms_top_n_train, "test_proposals": c.post_nms_top_n_test,
             "pre_nms_train": c.pre_nms_top_n_train, "pre_nms_test": c.pre_nms_top_n_test,
             "proposal_min_size": c.rpn_min_size, "roi_batch": c.roi_batch_size_per_image,
             "roi_fg_fraction": c.roi_positive_fraction, "roi_fg_iou": c.roi_fg_iou,
             "roi_pool_size": c.pool_size, "score_thresh": c.score_thresh,
             "test_nms": c.nms_thresh, "detections_per_img": c.detections_per_img}
    for key, ours in pairs.items():
        assert paper.value(key) == ours, (key, paper.value(key), ours)
    assert paper.value("roi_bg_iou") == (c.roi_bg_iou_lo, c.roi_bg_iou_hi)


def test_anchor_count_is_the_papers_not_ours():
    f = paper.fact("anchor_count")
    assert f.value == 20000 and "20,646" in f.note and "63 x 38" in f.note
    assert 62 * 37 * 9 == 20646 and 63 * 38 * 9 == 21546


def test_parameter_claim_is_split_in_two_orders():
    assert "two orders" in paper.fact("output_params").text
    assert "one order" in paper.fact("params_with_3x3").text
    assert 512 * (4 + 2) * 9 == 27648  # the paper's 2.8 x 10^4


def test_a_bad_location_is_reported():
    bad = paper.Fact("x", 1, "{value}", "§3.4")
    assert "no section 3.4" in " ".join(paper.location_problems(bad))
    assert paper.location_problems(paper.Fact("y", 1, "{value}", "Table III"))
