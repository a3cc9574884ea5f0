"""Ablation runner (chapter 11) and the one-stage detector of Table 10.

Runs are tiny (a few iterations on a handful of 128 px images): these tests
check the plumbing (cache, grid, reuse of trained weights, table, formats),
not accuracy; chapter 11 measures accuracy.
"""

import dataclasses
import json
import math

import pytest
import torch

from frcnn_lite.book import experiments as E
from frcnn_lite.backbones import tiny
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.book.one_stage import OneStageDetector

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


# -- frozen-backbone ablations (frcnn_lite.book.ablations), chapter 11 ---------------------------
from frcnn_lite.book import ablations as A  # noqa: E402
from frcnn_lite.book.exercises import WrongAnswer, grade_anchor_scale_ablation  # noqa: E402

FROZEN = A.FrozenBackboneConfig(scales=(32, 64, 128), num_train=4, num_test=2, iterations=3,
                                batch_size=2)
ROW_KEYS = {"config", "mAP", "AP_small", "AP_medium", "AP_large", "recall", "seconds",
            "train_seconds", "feature_seconds", "scales_used", "device", "cached"}


def test_frozen_config_key_follows_fields_and_checkpoint(tmp_path):
    assert FROZEN.scales == (32.0, 64.0, 128.0)  # ints normalised: same hash as floats
    assert FROZEN.key() == dataclasses.replace(FROZEN, scales=(32.0, 64.0, 128.0)).key()
    assert FROZEN.key() != dataclasses.replace(FROZEN, scales=(16, 32, 64, 128)).key()
    assert FROZEN.key() != dataclasses.replace(FROZEN, lambda_reg=1.0).key()
    test_time = dataclasses.replace(FROZEN, post_nms_top_n_test=50)
    assert test_time.key() != FROZEN.key() and test_time.training_key() == FROZEN.training_key()
    # A retrained checkpoint (other bytes, same path name) must not reuse old results.
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    ka = dataclasses.replace(FROZEN, checkpoint=str(a)).key()
    assert ka != dataclasses.replace(FROZEN, checkpoint=str(b)).key()
    a.write_bytes(b"weights two")
    assert dataclasses.replace(FROZEN, checkpoint=str(a)).key() != ka


def test_frozen_config_bad_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="heads must be"):
        A.FrozenBackboneConfig(heads="backbone")
    with pytest.raises(ValueError, match="detector must be"):
        A.FrozenBackboneConfig(detector="three_stage")
    with pytest.raises(ValueError, match="dataset must be"):
        A.FrozenBackboneConfig(dataset="voc")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        A.FrozenBackboneConfig(checkpoint=str(tmp_path / "missing.pt")).key()
    with pytest.raises(ValueError, match="at least 3 anchor scales"):
        A.paper_like_scales((32, 64))
    assert A.paper_like_scales((16, 32, 64, 128)) == ((32.0, 64.0, 128.0), 16.0)
    assert A.paper_like_scales((128, 256, 512)) == ((128.0, 256.0, 512.0), 64.0)  # §4.2


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("heads", ["rpn", "all"])
def test_frozen_trainer_trains_only_the_heads(heads):
    memo = {}
    config = dataclasses.replace(FROZEN, heads=heads, iterations=4)
    detector = A.load_detector(config, memo)
    bank = A.feature_bank(config, "train", "cpu", memo)
    assert bank["features"].shape[:2] == (4, detector.backbone.out_channels)
    model = A.build_heads(config, detector)
    assert model.backbone is detector.backbone  # shared, not copied
    backbone, roi_heads = _state(model.backbone), _state(model.roi_heads)
    conv, cls = _state(model.rpn.head.conv), _state(model.rpn.head.cls_logits)
    assert model.rpn.head.cls_logits.out_channels == 2 * 9  # the ablated anchors: 3 x 3
    history = A.train_heads(model, bank, config)
    assert len(history) == 4 and all(math.isfinite(v) for v in history)
    assert _same(_state(model.backbone), backbone)  # weights *and* BatchNorm statistics
    assert _same(_state(model.rpn.head.conv), conv)  # the checkpoint's 3x3 conv, frozen
    assert not _same(_state(model.rpn.head.cls_logits), cls)  # the fresh 1x1 layers learn
    assert _same(_state(model.roi_heads), roi_heads) == (heads == "rpn")


def test_frozen_run_grid_caches_rows_and_skips_training(tmp_path, monkeypatch):
    configs = [FROZEN, dataclasses.replace(FROZEN, post_nms_top_n_test=5),
               dataclasses.replace(FROZEN, detector="one_stage")]
    memo = {}
    rows = E.run_grid(configs, cache_dir=tmp_path, device="cpu", progress=False, memo=memo)
    for row in rows:
        assert set(row) == ROW_KEYS and not row["cached"]
        assert 0.0 <= row["mAP"] <= 1.0 and row["scales_used"] == [32.0, 64.0, 128.0]
    assert rows[1]["train_seconds"] == rows[0]["train_seconds"]  # heads reused, not retrained
    assert not math.isnan(rows[0]["recall"]) and math.isnan(rows[2]["recall"])
    assert torch.get_num_threads() >= 1  # the runner restores the thread setting

    def no_training(*args, **kwargs):
        raise AssertionError("a cached configuration must not train")
    monkeypatch.setattr(A, "train_heads", no_training)
    again = E.run_grid(configs, cache_dir=tmp_path, device="cpu", progress=False)
    assert [r["cached"] for r in again] == [True, True, True]
    strip = [{k: v for k, v in r.items() if k != "cached"} for r in rows]
    assert json.dumps([{k: v for k, v in r.items() if k != "cached"} for r in again]) == \
        json.dumps(strip)
    text = E.table(rows, vary=["detector", "post_nms_top_n_test"], paper=["1", "2", "3"])
    assert text.splitlines()[0].split()[:3] == ["detector", "post_nms_top_n_test", "mAP"]
    assert text.splitlines()[0].split()[-1] == "paper" and len(text.splitlines()) == 4


def test_grader_reads_scales_used_when_config_scales_is_none():
    base = {"config": {"scales": None, "seed": 0}, "scales_used": [32.0, 64.0, 128.0],
            "AP_small": 0.30}
    extra = {"config": {"scales": [16.0, 32.0, 64.0, 128.0], "seed": 0},
             "scales_used": [16.0, 32.0, 64.0, 128.0], "AP_small": 0.40}
    assert "raise AP_small" in grade_anchor_scale_ablation([base, extra], small_scale=16)
    with pytest.raises(WrongAnswer, match="changed AP_small by"):
        grade_anchor_scale_ablation([base, {**extra, "AP_small": 0.2}], small_scale=16)


def test_plot_legend_stays_clear_of_the_bars():
    """The legend sits outside the axes: inside, it covered the first bar (chapter 11)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"config": {"lambda_reg": v}, "mAP": 0.8, "recall": 0.9} for v in (0.1, 1.0)]
    ax = E.plot(rows, "lambda_reg", ("mAP", "recall"), paper=[67.2, 68.9])
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1
    plt.close(fig)
