"""Tests of frcnn_lite.model: the assembled detector's contract and its bad-input errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from frcnn_lite.backbones import build_backbone
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.model import DEMO_MODEL_PATH, FasterRCNN, FasterRCNNConfig

SMALL = FasterRCNNConfig(num_classes=5, min_size=64, max_size=64, scales=(16.0, 32.0),
                         ratios=(1.0,), rpn_batch_size_per_image=32, pre_nms_top_n_train=200,
                         post_nms_top_n_train=50, pre_nms_top_n_test=100, post_nms_top_n_test=20,
                         rpn_min_size=2.0, roi_batch_size_per_image=16, representation_size=32)
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def small_model(**changes):
    torch.manual_seed(0)
    return FasterRCNN(SMALL, **changes)


def shapes(n=2, size=64):
    data = ShapesDataset("train", n, image_size=(size, size), min_size=8, max_size=size * 0.6)
    images, targets = zip(*[data[i] for i in range(n)])
    return list(images), list(targets)


def test_train_mode_returns_the_four_losses():
    model = small_model().train()
    images, targets = shapes()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    for name, value in losses.items():
        assert value.dim() == 0 and math.isfinite(float(value.detach())), name
    sum(losses.values()).backward()
    assert model.backbone.body[0][0].weight.grad is not None
    assert model.roi_heads.head is not None


def test_eval_mode_returns_torchvision_format():
    model = small_model().eval()
    images, _ = shapes(3)
    outputs = model(images)
    assert len(outputs) == 3
    for out in outputs:
        assert set(out) >= {"boxes", "labels", "scores"}
        d = out["boxes"].shape[0]
        assert out["boxes"].shape == (d, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (d,) and out["labels"].dtype == torch.int64
        assert out["scores"].shape == (d,)
        if d:
            assert int(out["labels"].min()) >= 1 and int(out["labels"].max()) <= 5
            assert float(out["scores"].min()) >= 0.0 and float(out["scores"].max()) <= 1.0


def test_different_sizes_in_one_batch():
    model = small_model()
    images = [torch.rand(3, 40, 100), torch.rand(3, 64, 64), torch.rand(3, 90, 30)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 35.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[2.0, 40.0, 28.0, 80.0]]), "labels": torch.tensor([3])}]
    losses = model.train()(images, targets)
    assert set(losses) == LOSSES and all(math.isfinite(float(v.detach())) for v in losses.values())
    outputs = model.eval()(images)
    for image, out in zip(images, outputs):
        h, w = image.shape[-2:]
        boxes = out["boxes"]
        assert boxes.shape[0] > 0  # an untrained head spreads scores above 0.05
        assert float(boxes[:, 0::2].max()) <= w and float(boxes[:, 1::2].max()) <= h
        assert float(boxes.min()) >= 0


def test_boxes_are_mapped_back_to_the_original_size():
    model = small_model(score_thresh=0.0).eval()
    small = shapes(1, size=32)[0][0]  # (3, 32, 32), the model resizes it to 64x64
    big = F.interpolate(small[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    out_small, out_big = model([small])[0], model([big])[0]
    assert out_small["boxes"].shape[0] > 0
    torch.testing.assert_close(out_small["boxes"] * 2, out_big["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out_small["scores"], out_big["scores"], atol=1e-4, rtol=1e-4)
    assert torch.equal(out_small["labels"], out_big["labels"])


def test_build_from_backbone_module_like_torchvision():
    backbone = build_backbone("tiny")
    model = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64, scales=(32.0,))
    assert model.backbone is backbone
    assert model.config.num_classes == 3 and model.config.backbone == "tiny"
    assert model.config.scales == (32.0,)
    assert model.roi_heads is not None and model.rpn.scales == (32.0,)


def test_config_round_trip_and_differences():
    values = SMALL.to_dict()
    assert FasterRCNNConfig.from_dict(values) == SMALL
    other = FasterRCNNConfig.from_dict({**values, "num_classes": 3})
    assert SMALL.differences(other) == {"num_classes": (5, 3)}
    with pytest.raises(ValueError, match="unknown FasterRCNNConfig fields"):
        FasterRCNNConfig.from_dict({**values, "bogus": 1})


@pytest.mark.parametrize("images, message", [
    ([], "empty"),
    ([torch.rand(1, 3, 64, 64)], "\\(3, H, W\\)"),
    ([torch.rand(64, 64, 3)], "channels-last"),
    ([torch.rand(1, 64, 64)], "grayscale"),
    ([torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)], "floats in \\[0, 1\\]"),
    ([torch.rand(3, 64, 64) * 255], "\\[0, 1\\]"),
])
def test_bad_images(images, message):
    model = small_model().eval()
    with pytest.raises((ValueError, TypeError), match=message):
        model(images)


def test_batch_tensor_instead_of_list():
    with pytest.raises(ValueError, match="list of \\(3, H, W\\) tensors"):
        small_model().eval()(torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("boxes, message", [
    ([[10.0, 10.0, float("nan"), 20.0]], "NaN"),
    ([[10.0, 10.0, 10.0, 20.0]], "degenerate"),
    ([[30.0, 10.0, 20.0, 20.0]], "degenerate"),
])
def test_bad_targets(boxes, message):
    model = small_model().train()
    target = {"boxes": torch.tensor(boxes), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=message):
        model([torch.rand(3, 64, 64)], [target])


def test_bad_labels_and_missing_targets():
    model = small_model().train()
    image = torch.rand(3, 64, 64)
    with pytest.raises(ValueError, match="1..5"):
        model([image], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="training needs targets"):
        model([image])
    with pytest.raises(ValueError, match="one target dict per image"):
        model([image, image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])


def test_image_without_objects_trains():
    model = small_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        FasterRCNN(SMALL, num_classes=0)


@pytest.mark.skipif(not DEMO_MODEL_PATH.exists(), reason="data/demo_model.pt not trained yet")
def test_demo_model_loads_in_one_line_and_detects():
    from frcnn_lite.model import load_demo_model
    from frcnn_lite.recipes import evaluate_model

    model = load_demo_model()
    assert not model.training
    data = ShapesDataset("test", 100, image_size=(256, 256), seed=123)  # never-seen images
    result = evaluate_model(model, data)
    assert result["mAP"] >= 0.83, result["ap"]  # about 0.88 on the standard 200-image test split


@pytest.mark.skipif(not DEMO_MODEL_PATH.exists(), reason="data/demo_model.pt not trained yet")
def test_demo_model_is_what_the_demo_recipe_builds():
    # The shipped file must come from the documented command: same configuration as the recipe.
    from frcnn_lite.model import load_demo_model
    from frcnn_lite.recipes import RECIPES

    assert load_demo_model().config == RECIPES["demo"].model
