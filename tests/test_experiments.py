"""Ablation runner (chapter 11) and the one-stage detector of Table X.

Runs are tiny (a few iterations on a handful of 128 px images): these tests
check the plumbing (cache, grid, reuse of trained weights, table, formats),
not accuracy; chapter 11 measures accuracy.
"""

import dataclasses
import json
import math

import pytest
import torch

from frcnn_lite import experiments as E
from frcnn_lite.backbones import tiny
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.one_stage import OneStageDetector

TINY = E.ExperimentConfig(iterations=2, num_train=2, num_test=1, batch_size=2, image_size=64,
                          widths=(4, 8, 8, 8, 8, 8, 8))


def test_config_key_is_stable_and_sensitive():
    assert TINY.key() == E.ExperimentConfig(**TINY.to_dict() | {"scales": (16.0, 32.0, 64.0),
                                                                 "ratios": (0.5, 1.0, 2.0),
                                                                 "widths": TINY.widths}).key()
    assert TINY.key() != dataclasses.replace(TINY, lambda_reg=1.0).key()
    # Test-time settings do not change what is trained.
    other = dataclasses.replace(TINY, post_nms_top_n_test=10)
    assert other.key() != TINY.key() and other.training_key() == TINY.training_key()


def test_grid_makes_every_combination():
    configs = E.grid(TINY, scales=[(32,), (16, 32)], lambda_reg=[1, 10])
    assert [(c.scales, c.lambda_reg) for c in configs] == [
        ((32,), 1), ((32,), 10), ((16, 32), 1), ((16, 32), 10)]


def test_run_grid_caches_and_reuses_trained_weights(tmp_path):
    configs = [TINY, dataclasses.replace(TINY, post_nms_top_n_test=5),
               dataclasses.replace(TINY, detector="one_stage")]
    rows = E.run_grid(configs, cache_dir=tmp_path, device="cpu", progress=False)
    assert [r["cached"] for r in rows] == [False, False, False]
    for row in rows:
        assert set(row) >= {"config", "mAP", "AP_small", "AP_medium", "AP_large", "recall",
                            "seconds", "train_seconds"}
        assert 0.0 <= row["mAP"] <= 1.0
    # The second configuration only changes the test-time proposals: same training time.
    assert rows[1]["train_seconds"] == rows[0]["train_seconds"]
    assert not math.isnan(rows[0]["recall"]) and math.isnan(rows[2]["recall"])
    assert len(list(tmp_path.glob("*.json"))) == 3
    again = E.run_grid(configs, cache_dir=tmp_path, device="cpu", progress=False)
    assert [r["cached"] for r in again] == [True, True, True]
    assert [r["mAP"] for r in again] == [r["mAP"] for r in rows]
    text = E.table(rows)
    assert "post_nms_top_n_test" in text.splitlines()[0] and "detector" in text.splitlines()[0]
    assert len(text.splitlines()) == 4
    stored = json.loads((tmp_path / f"{TINY.key()}.json").read_text())
    assert stored["config"]["scales"] == [16.0, 32.0, 64.0]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="detector must be"):
        E.build_model(dataclasses.replace(TINY, detector="three_stage"))
    with pytest.raises(ValueError, match="dataset must be"):
        E.make_dataset(dataclasses.replace(TINY, dataset="voc"), "train")


def test_small_objects_dataset_is_mostly_small():
    data = E.make_dataset(dataclasses.replace(TINY, dataset="small_objects", num_test=10), "test")
    boxes = torch.cat([data[i][1]["boxes"] for i in range(10)])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (areas < 32 ** 2).float().mean() > 0.7


def test_one_stage_detector_trains_and_predicts():
    torch.manual_seed(0)
    data = ShapesDataset("train", 2, image_size=(128, 128))
    images, targets = zip(*[data[i] for i in range(2)])
    model = OneStageDetector(tiny(widths=(8, 8, 16, 16, 16, 16, 16)), 5, scales=(16, 32, 64),
                             min_size=128, max_size=128)
    assert model.cls_logits.out_channels == 9 * 6 and model.bbox_pred.out_channels == 9 * 4
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.cls_logits.weight.grad is not None
    model.eval()
    out = model(list(images))
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.int64
        assert len(det["boxes"]) <= 100 and bool((det["labels"] >= 1).all())
        assert bool((det["boxes"][:, 2:] <= 128).all())
    with pytest.raises(ValueError, match="training needs targets"):
        model.train()
        model(list(images))
