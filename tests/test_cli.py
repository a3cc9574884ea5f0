"""The command line's arguments: checked before anything runs, messages that name them."""

import hashlib
import re
import urllib.error

import pytest
import torch

from frcnn_lite.checkpoint import read_checkpoint, read_data
from frcnn_lite.cli import main
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.model import DEMO_MODEL_PATH
from frcnn_lite.book.tool_export import write_tool_export

# sha256 over (name, raw bytes) of every tensor of data/demo_model.pt as committed in
# f36d50f, before the data record was added: the re-saved file holds the same weights.
DEMO_WEIGHTS_SHA256 = "252a87f866dbe149c49c22958a76f39c15a876374ebc3523be20d5038683002d"


def weights_digest(state):
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts."""
    import frcnn_lite.train

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(frcnn_lite.train, "train_joint", refuse)
    monkeypatch.setattr(frcnn_lite.train, "train_alternating", refuse)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--recipe", "smoke", "--iterations", "-5"], "--iterations"),
    (["train", "--recipe", "smoke", "--iterations", "2.5"], "--iterations"),
    (["train", "--recipe", "smoke", "--batch-size", "0"], "--batch-size"),
    (["train", "--recipe", "smoke", "--lr", "0"], "--lr"),
    (["train", "--recipe", "smoke", "--lr", "nan"], "--lr"),
    (["train", "--recipe", "smoke", "--num-images", "0"], "--num-images"),
    (["train", "--recipe", "smoke", "--seed", "-1"], "--seed"),
    (["train", "--recipe", "smoke", "--eval-images", "-2"], "--eval-images"),
    (["train", "--data", "x.json", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--data", "x.json", "--scales", "32,-64"], "--scales"),
    (["train", "--data", "x.json", "--min-size", "0"], "--min-size"),
    (["train", "--recipe", "nope"], "--recipe"),
    (["train", "--recipe", "smoke", "--device", "gpu7"], "--device"),
    (["evaluate", "--num-images", "0"], "--num-images"),
    (["evaluate", "--image-size", "-256"], "--image-size"),
    (["detect", "a.png", "--score-threshold", "1.5"], "--score-threshold"),
])
def test_bad_arguments_are_refused_naming_the_argument(argv, flag, capsys, tmp_path,
                                                       monkeypatch, no_training):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_cuda_refused_where_there_is_none(capsys, no_training):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "smoke", "--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_train_without_arguments_explains_and_runs_nothing(capsys, tmp_path, monkeypatch,
                                                          no_training):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and "--recipe demo" in err and "--data" in err
    assert "12 minutes" in err
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_directory_fails_before_training(capsys, tmp_path, no_training):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert main(["train", "--recipe", "smoke", "--out", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "directory" in err
    assert list(folder.iterdir()) == []


def test_recipe_and_own_data_options_do_not_mix(capsys, no_training):
    assert main(["train", "--recipe", "smoke", "--data", "x.json"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train", "--recipe", "smoke", "--backbone", "vgg16"]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_offline_pretrained_backbone_gives_an_actionable_message(tmp_path, capsys, monkeypatch,
                                                                  no_training):
    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    ann = write_tool_export(ShapesDataset("train", 3, image_size=(64, 64)), tmp_path, "coco")
    out = tmp_path / "vgg.pt"
    assert main(["train", "--data", str(ann), "--backbone", "vgg16", "--min-size", "64",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--backbone vgg16" in err and "could not download the ImageNet weights" in err
    assert "--weights FILE" in err and "--no-pretrained" in err
    assert not out.exists() and not out.with_suffix(".ckpt").exists()


def test_tiny_backbone_has_no_imagenet_weights(tmp_path, capsys, no_training):
    ann = write_tool_export(ShapesDataset("train", 3, image_size=(64, 64)), tmp_path, "coco")
    assert main(["train", "--data", str(ann), "--pretrained", "--min-size", "64",
                 "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    assert "no ImageNet weights" in capsys.readouterr().err


def test_shipped_model_records_its_data_and_kept_its_weights():
    data = read_data(DEMO_MODEL_PATH)
    assert data["kind"] == "shapes" and data["image_size"] == [256, 256]
    assert data["classes"] == list(ShapesDataset.classes)
    payload = read_checkpoint(DEMO_MODEL_PATH)
    assert payload["config"]["min_size"] == 384  # 256 px images upsampled by the model
    assert weights_digest(payload["model"]) == DEMO_WEIGHTS_SHA256


def _map(text):
    return float(re.search(r"mAP@0.5 \(VOC07 11-point\) on \d+ \w+ images: ([0-9.]+)",
                           text).group(1))


def test_evaluate_default_uses_the_recorded_image_size(capsys):
    # The README's 0.8788 is `evaluate` on 200 images (about a minute on 2 cores); eight
    # images show the default pipeline is the 256 px one, not the model's 384 px min_size.
    assert main(["evaluate", "--num-images", "8", "--quiet"]) == 0
    default = _map(capsys.readouterr().out)
    assert main(["evaluate", "--num-images", "8", "--image-size", "256", "--quiet"]) == 0
    assert _map(capsys.readouterr().out) == default
    assert main(["evaluate", "--num-images", "8", "--image-size", "384", "--quiet"]) == 0
    assert _map(capsys.readouterr().out) != default


def test_evaluate_and_detect_refuse_bad_paths(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
