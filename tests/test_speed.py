"""frcnn_lite.book.speed: timing helpers, per-stage times (Table V), the torchvision twin (ch. 13)."""

import pytest
import torch

from frcnn_lite.model import FasterRCNN
from frcnn_lite.recipes import RECIPES
from frcnn_lite.book.speed import (PAPER_TABLE_V, STAGES, TABLE_V_GROUPS, compare, machine_info,
                                   measure, predict_stages, stage_times, table_v,
                                   torchvision_twin)


def small_model():
    torch.manual_seed(0)
    return FasterRCNN(RECIPES["smoke"].model).eval()


def test_measure_and_compare():
    calls = []
    times = measure(lambda: calls.append(1), repeat=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6 and all(t >= 0 for t in times)
    assert len(measure(lambda: sum(range(1000)), repeat=3, clock="cpu")) == 3
    order = []
    medians = compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                      repeat=3, warmup=1)
    assert set(medians) == {"a", "b"}
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then interleaved


def test_measure_bad_arguments():
    with pytest.raises(ValueError, match="repeat >= 1"):
        measure(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="clock must be"):
        measure(lambda: None, clock="gpu")
    with pytest.raises(ValueError, match="repeat >= 1"):
        compare({"a": lambda: None}, repeat=0)
    with pytest.raises(ValueError, match="clock must be"):
        stage_times(small_model(), [torch.rand(3, 64, 64)], clock="gpu")


def test_paper_table_v_adds_up():
    for row in PAPER_TABLE_V.values():
        assert sum(row[g] for g in TABLE_V_GROUPS) == row["total"]
    assert sorted(s for names in TABLE_V_GROUPS.values() for s in names) == sorted(STAGES)


def test_stage_times_cover_predict():
    model = small_model()
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 128)]
    stages = stage_times(model, images, repeat=2, warmup=1, clock="cpu")
    assert set(stages) == set(STAGES) | {"total"}
    row = table_v(stages)
    assert row["sum"] == pytest.approx(sum(stages[s] for s in STAGES))
    assert set(row) == {"conv", "proposal", "region-wise", "sum", "total"}


def test_predict_stages_in_order_are_predict():
    model = small_model()
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 128)]
    state = {}
    runs = predict_stages(model, images, state)
    assert list(runs) == list(STAGES)
    with torch.inference_mode():
        for run in runs.values():
            run()
        expected = model.predict(images)
    assert len(state["detections"]) == len(expected) == 2
    for got, want in zip(state["detections"], expected):
        assert set(got) == set(want) == {"boxes", "labels", "scores"}
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_torchvision_twin_is_built_like_ours():
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN

    ours = small_model()
    twin = torchvision_twin(ours).eval()
    assert isinstance(twin, TVFasterRCNN)
    for a, b in zip(ours.backbone.parameters(), twin.backbone.body.parameters()):
        assert torch.equal(a, b)  # same weights, separate copies
    c = ours.config
    assert twin.rpn._pre_nms_top_n["testing"] == c.pre_nms_top_n_test
    assert twin.rpn._post_nms_top_n["testing"] == c.post_nms_top_n_test
    assert twin.transform.min_size == (c.min_size,) and twin.transform.max_size == c.max_size
    with torch.inference_mode():
        out = twin([torch.rand(3, 128, 128)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    aligned = torchvision_twin(ours, roi_align=True)
    assert type(aligned.roi_heads.box_roi_pool).__name__ == "MultiScaleRoIAlign"


def test_machine_info():
    info = machine_info("cpu")
    assert {"cpu", "cpu_count", "torch_threads", "torch", "torchvision", "device"} <= set(info)
