"""Tests for frcnn_lite.backbones: strides, channels, exact feature sizes, weights."""

import urllib.error

import pytest
import torch
import torchvision.models._api as tv_api

from frcnn_lite.backbones import BACKBONES, build_backbone, tiny

EXPECTED = {  # name: (out_channels, feature size of a 600x1000 image, receptive field)
    "tiny": (128, (38, 63), 111),
    "zf": (256, (38, 63), 139),
    "vgg16": (512, (37, 62), 196),
    "resnet50_c4": (1024, (38, 63), 267),
    "resnet101_c4": (1024, (38, 63), 811),  # a theoretical bound; the effective field is smaller
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attributes_and_feature_size(name):
    backbone = build_backbone(name)
    channels, size, field = EXPECTED[name]
    assert backbone.name == name
    assert backbone.out_channels == channels and backbone.stride == 16
    assert backbone.feature_size((600, 1000)) == size
    assert backbone.receptive_field() == field
    assert len(backbone.mean) == 3 and len(backbone.std) == 3
    # Not pretrained: every parameter is shareable and trainable.
    shared = list(backbone.shared_layers())
    assert len(shared) == len(list(backbone.parameters()))
    assert all(p.requires_grad for p in shared)


@pytest.mark.parametrize("name", ["tiny", "zf", "vgg16", "resnet50_c4"])
@pytest.mark.parametrize("size", [(64, 96), (67, 131), (33, 16)])
def test_feature_size_matches_forward(name, size):
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, *size))
    assert features.shape == (1, backbone.out_channels, *backbone.feature_size(size))


def test_paper_receptive_fields():
    # §3.1: with the RPN's 3x3 window, 171 px (ZF) and 228 px (VGG-16).
    assert build_backbone("zf").receptive_field() + 2 * 16 == 171
    assert build_backbone("vgg16").receptive_field() + 2 * 16 == 228


def test_tiny_trains_a_step():
    torch.manual_seed(0)
    backbone = tiny()
    x = backbone.normalize(torch.rand(2, 3, 64, 64))
    features = backbone(x)
    assert features.shape == (2, 128, 4, 4)
    features.square().mean().backward()
    assert all(p.grad is not None for p in backbone.shared_layers())


def test_normalize():
    backbone = tiny()
    image = torch.ones(3, 2, 2) * torch.tensor(backbone.mean)[:, None, None]
    assert torch.allclose(backbone.normalize(image), torch.zeros(3, 2, 2), atol=1e-6)
    batch = torch.ones(1, 3, 2, 2)
    expected = (1 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)
    assert torch.allclose(backbone.normalize(batch)[0, :, 0, 0], expected)


def _offline(monkeypatch):
    def fail(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fail)


@pytest.mark.parametrize("name", ["vgg16", "resnet50_c4"])
def test_pretrained_offline_fails_clearly(monkeypatch, name):
    _offline(monkeypatch)
    with pytest.raises(RuntimeError, match=r"could not download.*copy it to .*weights_path"):
        build_backbone(name, pretrained=True)


@pytest.mark.parametrize("name", ["tiny", "zf"])
def test_no_published_weights(name):
    with pytest.raises(RuntimeError, match="no (pretrained|ImageNet) weights"):
        build_backbone(name, pretrained=True)


def test_pretrained_vgg16_fixes_conv1_conv2(monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # ignored: only the conv layers are kept
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: state)
    backbone = build_backbone("vgg16", pretrained=True)
    assert torch.equal(backbone.body[0].weight, state["features.0.weight"])
    fixed = [p for p in backbone.parameters() if not p.requires_grad]
    assert len(fixed) == 8  # conv1_1, conv1_2, conv2_1, conv2_2: weight and bias each
    assert len(list(backbone.shared_layers())) == 26 - 8


def test_pretrained_resnet_freezes_stem(monkeypatch):
    from torchvision.models import resnet50

    state = resnet50().state_dict()
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: state)
    backbone = build_backbone("resnet50_c4", pretrained=True)
    shared = {id(p) for p in backbone.shared_layers()}
    stem = list(backbone.body[0].parameters()) + list(backbone.body[4].parameters())
    assert stem and all(id(p) not in shared and not p.requires_grad for p in stem)
    assert all(id(p) in shared for p in backbone.body[6].parameters())


def test_fixed_layers_survive_deepcopy(monkeypatch):
    import copy

    from torchvision.models.vgg import cfgs, make_layers

    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: state)
    clone = copy.deepcopy(build_backbone("vgg16", pretrained=True))
    assert len(clone.shared_layers()) == 26 - 8
    assert clone.fixed_parameters[0] == "body.0.weight"


def test_weights_path(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "r50.pth"
    state = resnet50().state_dict()
    torch.save(state, path)
    backbone = build_backbone("resnet50_c4", pretrained=True, weights_path=str(path))
    assert torch.equal(backbone.body[0].weight, state["conv1.weight"])


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'; choose one of"):
        build_backbone("vgg19")
    assert set(BACKBONES) == set(EXPECTED)


@pytest.mark.parametrize("size", [(0, 100), (100, 0)])
def test_feature_size_rejects_empty_images(size):
    with pytest.raises(ValueError, match=r"H, W >= 1"):
        tiny().feature_size(size)


def test_feature_size_rejects_tiny_images():
    # VGG's unpadded 2x2 poolings need at least 16 pixels (padded convs never shrink).
    assert build_backbone("vgg16").feature_size((16, 100)) == (1, 6)
    with pytest.raises(ValueError, match="too small for backbone 'vgg16'"):
        build_backbone("vgg16").feature_size((15, 100))


def test_tiny_bad_config():
    with pytest.raises(ValueError, match="same length"):
        tiny(widths=(16, 32), strides=(2,))
