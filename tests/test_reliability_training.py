"""Issue 18: configurations, model inputs and training runs fail early and name the culprit.

Configurations validate when built; a bad sample is named by its dataset
index (not its place in the mini-batch); images of any floating dtype give
the float32 answer; a resumed run says so and refuses other data.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from frcnn_lite.checkpoint import CheckpointError, load_checkpoint
from frcnn_lite.config import PAPER, FasterRCNNConfig, Preset
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.train import TrainConfig, Trainer, batch_indices

from test_train import SMALL, small_data, small_model

FAST = TrainConfig(iterations=2, batch_size=2, lr=0.01, checkpoint_every=100)


# -- configurations validate when built -----------------------------------------------------
@pytest.mark.parametrize("changes, error, message", [
    ({"min_size": -5}, ValueError, r"FasterRCNNConfig\.min_size must be an integer >= 1, got -5"),
    ({"min_size": 600.5}, TypeError, r"min_size must be an integer"),
    ({"min_size": 1200}, ValueError, r"needs min_size <= max_size, but min_size=1200 > "
                                     r"max_size=(1000|64)"),
    ({"rpn_fg_iou": 0.2}, ValueError, r"needs rpn_bg_iou <= rpn_fg_iou, but rpn_bg_iou=0\.3 > "
                                      r"rpn_fg_iou=0\.2"),
    ({"rpn_fg_iou": 1.5}, ValueError, r"rpn_fg_iou must lie in \[0, 1\], got 1\.5"),
    ({"roi_bg_iou_hi": 0.7}, ValueError, r"roi_bg_iou_hi <= roi_fg_iou"),
    ({"roi_bg_iou_lo": 0.5}, ValueError, r"background range .* is empty"),
    ({"num_classes": 0}, ValueError, r"num_classes .* >= 1, got 0"),
    ({"num_classes": True}, TypeError, r"num_classes .* must be an integer, got True"),
    ({"scales": ()}, ValueError, r"scales must hold at least one value"),
    ({"scales": (128.0, -1.0)}, ValueError, r"scales\[1\] must lie in \(0, inf\]"),
    ({"ratios": "1"}, TypeError, r"ratios must be a tuple of numbers"),
    ({"lambda_reg": float("nan")}, ValueError, r"lambda_reg must be a finite number"),
    ({"rpn_batch_size_per_image": 0}, ValueError, r"rpn_batch_size_per_image must be an "
                                                  r"integer >= 1"),
    ({"rpn_positive_fraction": 0.0}, ValueError, r"rpn_positive_fraction must lie in \(0, 1\]"),
    ({"post_nms_top_n_test": 0}, ValueError, r"post_nms_top_n_test must be an integer >= 1"),
    ({"score_thresh": -0.1}, ValueError, r"score_thresh must lie in \[0, 1\]"),
    ({"loss_normalization": "mean"}, ValueError, r"loss_normalization must be one of "
                                                 r"\['paper', 'batch'\]"),
    ({"roi_pool_impl": "fast"}, ValueError, r"roi_pool_impl must be one of"),
    ({"backbone": None}, TypeError, r"backbone must be a backbone name"),
    ({"pretrained": "yes"}, TypeError, r"pretrained must be True or False"),
])
def test_faster_rcnn_config_validates_when_built(changes, error, message):
    with pytest.raises(error, match=message):
        FasterRCNNConfig(**changes)
    with pytest.raises(error, match=message):  # dataclasses.replace builds a new one: same checks
        dataclasses.replace(SMALL, **changes)


def test_valid_configs_still_build_and_lists_become_tuples():
    config = FasterRCNNConfig(scales=[16, 32.0], ratios=[1.0], lambda_reg=0.0, roi_bg_iou_lo=0.0,
                              rpn_fg_iou=0.5, rpn_bg_iou=0.5)
    assert config.scales == (16, 32.0) and config.ratios == (1.0,)
    assert FasterRCNNConfig.from_dict(config.to_dict()) == config
    hash(config)  # still a frozen, hashable value


@pytest.mark.parametrize("changes, message", [
    ({"stride": 0}, r"Preset\.stride must be an integer >= 1"),
    ({"min_size": 1200}, r"Preset needs min_size <= max_size"),
    ({"ratios": (0.0, 1.0)}, r"Preset\.ratios\[0\] must lie in \(0, inf\]"),
])
def test_presets_validate_when_built(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PAPER, **changes)
    assert isinstance(PAPER, Preset)


@pytest.mark.parametrize("changes, error, message", [
    ({"iterations": -5}, ValueError, r"TrainConfig\.iterations must be an integer >= 1, got -5"),
    ({"iterations": 0}, ValueError, r"iterations must be an integer >= 1, got 0"),
    ({"iterations": 10.5}, TypeError, r"iterations must be an integer"),
    ({"batch_size": 0}, ValueError, r"batch_size \(images per mini-batch\) must be an integer "
                                    r">= 1, got 0"),
    ({"lr": 0.0}, ValueError, r"TrainConfig\.lr must lie in \(0, inf\]"),
    ({"lr": float("inf")}, ValueError, r"lr must be a finite number"),
    ({"momentum": 1.0}, ValueError, r"momentum must lie in \[0, 1\)"),
    ({"weight_decay": -1e-4}, ValueError, r"weight_decay must lie in \[0, inf\]"),
    ({"lr_steps": (0.75, 1.5)}, ValueError, r"lr_steps \(fractions of iterations\)\[1\] must lie "
                                            r"in \(0, 1\]"),
    ({"lr_gamma": 0}, ValueError, r"lr_gamma must lie in \(0, inf\]"),
    ({"warmup_iterations": -1}, ValueError, r"warmup_iterations must be an integer >= 0"),
    ({"seed": -1}, ValueError, r"seed must be an integer in 0\.\.4294967295"),
    ({"checkpoint_every": 0}, ValueError, r"checkpoint_every must be an integer >= 1"),
])
def test_train_config_validates_when_built(changes, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**changes)
    with pytest.raises(error, match=message):
        dataclasses.replace(FAST, **changes)


def test_batch_size_zero_never_divides_by_zero():
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        batch_indices(0, 10, 0)
    assert TrainConfig(lr_steps=[0.5]).lr_steps == (0.5,) and TrainConfig(lr_steps=()).lr_steps == ()


# -- a bad sample is named by its dataset index ---------------------------------------------
class Edited(torch.utils.data.Dataset):
    """``data`` with sample ``at`` replaced by ``edit(image, target)``."""

    def __init__(self, data, at, edit):
        self.data, self.at, self.edit = data, at, edit

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, target = self.data[i]
        return self.edit(image.clone(), dict(target)) if i == self.at else (image, target)


def _nan_pixel(image, target):
    image[1, 3, 4] = float("nan")
    return image, target


def _uint8(image, target):
    return (image * 255).to(torch.uint8), target


def _box_outside(image, target):
    boxes = target["boxes"].clone()
    boxes[0, 2] = image.shape[-1] + 5
    return image, {**target, "boxes": boxes}


def _int_labels(image, target):
    return image, {**target, "labels": target["labels"].int()}


@pytest.mark.parametrize("edit, error, message", [
    (_nan_pixel, ValueError, r"dataset\[{i}\] image has a NaN or infinite pixel \(nan at "
                             r"channel 1, row 3, column 4\)"),
    (_uint8, TypeError, r"dataset\[{i}\] image has dtype torch\.uint8"),
    (_box_outside, ValueError, r"dataset\[{i}\] target\['boxes'\]\[0\] = .* reaches outside its "
                               r"64x64 image"),
    (_int_labels, TypeError, r"dataset\[{i}\] target\['labels'\] must be int64"),
    (lambda image, target: (image, None), ValueError, r"dataset\[{i}\] target must be a dict"),
    (lambda image, target: image, TypeError, r"dataset\[{i}\] must be an \(image, target\) pair"),
])
def test_a_bad_sample_is_named_by_its_dataset_index(edit, error, message):
    data = small_data(8)
    second = batch_indices(1, 8, 2)[1]  # the 2nd image of the 2nd mini-batch: position 1
    trainer = Trainer(small_model(), Edited(data, second, edit), FAST, progress=False,
                      device="cpu")
    with pytest.raises(error, match=message.format(i=second)):
        trainer.fit()
    assert second not in (0, 1)  # so the message cannot be the position in the batch


def test_trainer_refuses_data_it_cannot_train_on():
    with pytest.raises(ValueError, match=r"the dataset has 1 images, fewer than batch_size=2; "
                                         r"lower batch_size"):
        Trainer(small_model(), small_data(1), FAST, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"the dataset has 5 classes but the model detects 3; "
                                         r"build the model with num_classes=5"):
        Trainer(small_model(num_classes=3), small_data(4), FAST, progress=False, device="cpu")
    with pytest.raises(TypeError, match=r"config must be a TrainConfig, got dict"):
        Trainer(small_model(), small_data(4), {"iterations": 2}, progress=False, device="cpu")


# -- images of any float dtype or layout give the float32 answer ----------------------------
def test_float64_float16_and_non_contiguous_images_work():
    model = small_model().eval()
    image = small_data(1)[0][0]  # (3, 64, 64) float32
    with torch.no_grad():
        reference = model([image])[0]
        as_float64 = model([image.double()])[0]  # float32 -> float64 -> float32 is exact
        non_contiguous = model([image.permute(0, 2, 1).contiguous().permute(0, 2, 1)])[0]
        as_float16 = model([image.half()])[0]
    for output in (as_float64, non_contiguous):
        for key in ("boxes", "labels", "scores"):
            torch.testing.assert_close(output[key], reference[key])
    assert as_float16["boxes"].dtype == torch.float32 and as_float16["boxes"].shape[1] == 4
    model.train()
    target = small_data(1)[0][1]
    losses = model([image.double()], [{**target, "boxes": target["boxes"].double()}])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("image, message", [
    (torch.zeros(3, 0, 0), r"images\[0\] has shape \(3, 0, 0\): an image needs at least one row"),
    (torch.zeros(3, 5, 0), r"images\[0\] has shape \(3, 5, 0\)"),
    (torch.full((3, 8, 8), float("inf")), r"images\[0\] has a NaN or infinite pixel"),
])
def test_empty_and_non_finite_images_are_errors(image, message):
    with pytest.raises(ValueError, match=message):
        small_model().eval()([image])


def test_target_box_outside_the_image_is_an_error_not_clipped():
    model = small_model().train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 70.0, 20.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\] = \[10\.0, 10\.0, 70\.0, "
                                         r"20\.0\] reaches outside its 64x64 image.*clip_boxes"):
        model([torch.rand(3, 64, 64)], [target])


# -- resume: says so, and refuses other data ------------------------------------------------
def test_resume_says_so_and_a_finished_run_says_it_is_complete(tmp_path, capsys):
    path = tmp_path / "run.pt"
    config = TrainConfig(iterations=4, batch_size=2, lr=0.01, checkpoint_every=2)
    first = Trainer(small_model(), small_data(8), dataclasses.replace(config), device="cpu",
                    checkpoint_path=path, progress=True)
    first.fit()
    assert first.resumed_from is None
    assert "resumed" not in capsys.readouterr().out
    again = Trainer(small_model(), small_data(8), config, checkpoint_path=path, device="cpu")
    history = again.fit()
    assert "resumed joint from iteration 4 of 4 (already complete)" in capsys.readouterr().out
    assert again.resumed_from == 4 and len(history) == 4


@pytest.mark.parametrize("other, message", [
    (lambda: small_data(16), r"was trained on 8 images, but this dataset has 16\. Resume with "
                             r"the same data"),
    (lambda: ShapesDataset("train", 8, image_size=(64, 64), min_size=8, max_size=40, seed=1),
     r"was trained on other data: the dataset's images \[.*\] differ"),
])
def test_resuming_on_other_data_is_refused(tmp_path, other, message):
    path = tmp_path / "run.pt"
    Trainer(small_model(), small_data(8), FAST, checkpoint_path=path, progress=False,
            device="cpu").fit()
    assert load_checkpoint(path)["training"]["data"]["num_images"] == 8
    with pytest.raises(CheckpointError, match=message):
        Trainer(small_model(), other(), FAST, checkpoint_path=path, progress=False,
                device="cpu").fit()
    resumed = Trainer(small_model(), other(), FAST, checkpoint_path=path, progress=False,
                      device="cpu", check_data=False)  # explicit: e.g. random augmentation
    assert len(resumed.fit()) == 2 and resumed.resumed_from == 2


# -- more of the same kinds ----------------------------------------------------------------
def test_numpy_and_tensor_numbers_become_python_numbers_so_checkpoints_load(tmp_path):
    import numpy as np

    from frcnn_lite.checkpoint import save_checkpoint
    from frcnn_lite.model import FasterRCNN, load_model

    config = dataclasses.replace(SMALL, num_classes=np.int64(3), ratios=(np.float64(1.0),),
                                 lambda_reg=torch.tensor(2.0))
    assert type(config.num_classes) is int and type(config.ratios[0]) is float
    assert type(config.lambda_reg) is float
    path = save_checkpoint(tmp_path / "m.pt", FasterRCNN(config))
    assert load_model(path).config == config  # a NumPy scalar would be refused by weights_only
    assert type(TrainConfig(iterations=np.int64(3), lr=np.float32(0.5)).iterations) is int


def test_checkpoint_path_that_cannot_be_written_fails_before_training(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"checkpoint_path .* is a directory; give a file"):
        Trainer(small_model(), small_data(4), FAST, checkpoint_path=tmp_path, progress=False,
                device="cpu")
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write the checkpoint .*file.* is not a "
                                              r"writable folder"):
        Trainer(small_model(), small_data(4), FAST, checkpoint_path=tmp_path / "file" / "run.pt",
                progress=False, device="cpu")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_images": -5}, ValueError, r"num_images must be an integer >= 0, got -5"),
    ({"num_images": 2.5}, TypeError, r"num_images must be an integer"),
    ({"num_images": "10"}, TypeError, r"num_images must be an integer"),
    ({"seed": -1}, ValueError, r"seed must be an integer >= 0"),
    ({"image_size": (64,)}, ValueError, r"image_size must be \(H, W\)"),
    ({"max_overlap": float("nan")}, ValueError, r"max_overlap must be a finite number"),
    ({"clutter": -1}, ValueError, r"clutter must be an integer >= 0"),
    ({"objects_per_image": (3,)}, ValueError, r"objects_per_image must be \(min, max\)"),
    ({"max_ratio": float("inf")}, ValueError, r"max_ratio must be a finite number"),
])
def test_shapes_dataset_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ShapesDataset("train", **kwargs)


def test_shapes_index_collate_and_targets_container():
    from frcnn_lite.datasets import collate

    data = small_data(3)
    with pytest.raises(TypeError, match=r"index of a ShapesDataset sample must be an integer"):
        data[1.0]
    with pytest.raises(ValueError, match=r"collate got an empty batch"):
        collate([])
    image, target = data[0]
    with pytest.raises(TypeError, match=r"targets must be a list of dicts.*\[target\]"):
        small_model().train()([image], target)


def test_distributed_entry_point_rejects_bad_values_as_usage_errors(capsys):
    from frcnn_lite.distributed import main

    with pytest.raises(SystemExit) as info:
        main(["--iterations", "-5"])
    assert info.value.code == 2
    assert "TrainConfig.iterations must be an integer >= 1, got -5" in capsys.readouterr().err


def test_damaged_training_state_and_missing_devices(tmp_path):
    path = tmp_path / "run.pt"
    Trainer(small_model(), small_data(4), FAST, checkpoint_path=path, progress=False,
            device="cpu").fit()
    payload = torch.load(path, weights_only=True)
    del payload["training"]["optimizer"]
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=r"damaged\.pt: the training state lacks "
                                              r"\['optimizer'\]"):
        Trainer(small_model(), small_data(4), FAST, checkpoint_path=tmp_path / "damaged.pt",
                progress=False, device="cpu").fit()
    with pytest.raises(ValueError, match=r"device 'tpu' is not a device name"):
        Trainer(small_model(), small_data(4), FAST, device="tpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a laptop)
    with pytest.raises(ValueError, match=rf"device '{missing}' is not available here"):
        Trainer(small_model(), small_data(4), FAST, device=missing)


def test_a_quiet_resume_is_still_logged(tmp_path, caplog):
    path = tmp_path / "run.pt"
    Trainer(small_model(), small_data(4), FAST, checkpoint_path=path, progress=False,
            device="cpu").fit()
    with caplog.at_level("INFO", logger="frcnn_lite.train"):
        Trainer(small_model(), small_data(4), FAST, checkpoint_path=path, progress=False,
                device="cpu").fit()
    assert "resumed joint from iteration 2 of 2 (already complete)" in caplog.text
