"""Backbones: the shareable convolutional layers that make the feature map.

Paper: §3.1 (the RPN and the detector share a stack of conv layers; ZF has 5
shareable conv layers, VGG-16 has 13), §4 (ZF, VGG-16 on VOC), and the
ResNet "C4" backbone of He et al. (2016) §A. Every backbone here maps an image
batch to one feature map with total stride 16:

    x (B, 3, H, W), normalised  ->  features (B, C, Hf, Wf),  Hf ~ H / 16

Shape glossary: ``B`` images, ``C`` = ``out_channels``, ``Hf, Wf`` the
feature-map size (:meth:`Backbone.feature_size` computes it exactly).

Names (:func:`build_backbone`):

- ``"tiny"``: 7 conv-BN-ReLU layers, 128 channels; trains from scratch on a
  2-core CPU in minutes on the 256x256 shapes images. The book's default.
- ``"zf"``: the ZF net of Zeiler & Fergus up to conv5 (256 channels), as in
  py-faster-rcnn (LRN included). No ImageNet weights exist in torchvision.
- ``"vgg16"``: torchvision's VGG-16 up to the ReLU after conv5_3 (512 ch).
- ``"resnet50_c4"``, ``"resnet101_c4"``: torchvision's ResNet, conv1 to
  layer3 ("C4", 1024 channels).

Images enter the model in [0, 1]; the model (not the backbone) subtracts
``mean`` and divides by ``std`` first (:meth:`Backbone.normalize`).

Built in chapter 2.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from frcnn_lite.layer_checks import (check_declared_stride, check_fits, check_image_size,
                                     check_tiny_settings)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (kernel, stride, padding, dilation, ceil_mode) of one layer that changes
# the spatial size or the receptive field (convolutions and poolings).
SizeOp = Tuple[int, int, int, int, bool]


def _pair0(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _spatial_ops(module: nn.Module) -> List[SizeOp]:
    """The conv/pool layers on the main path of ``module``, in forward order.

    Walks the children in registration order, which is the forward order for
    every backbone here. A ResNet block's ``downsample`` is a parallel shortcut
    branch, so it is skipped (it has the same output size as the main path).
    """
    ops: List[SizeOp] = []
    for name, child in module.named_children():
        if name == "downsample":
            continue
        if isinstance(child, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            dilation = getattr(child, "dilation", 1)
            ops.append((_pair0(child.kernel_size), _pair0(child.stride), _pair0(child.padding),
                        _pair0(dilation), bool(getattr(child, "ceil_mode", False))))
        else:
            ops.extend(_spatial_ops(child))
    return ops


class Backbone(nn.Module):
    """A feature extractor with the attributes the rest of the library reads.

    Attributes:
        name: the name given to :func:`build_backbone`.
        out_channels: ``C`` of the feature map (the RPN's and RoI head's input).
        stride: input pixels per feature cell (16 for every backbone here).
        mean, std: the input normalisation, 3 floats each (RGB).
        body: the ``nn.Module`` that computes the features.

    ``forward(x (B, 3, H, W)) -> (B, C, Hf, Wf)``; ``x`` is already normalised.
    """

    def __init__(self, body: nn.Module, *, name: str, out_channels: int, stride: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 fixed: Sequence[nn.Module] = ()):
        super().__init__()
        self.body = body
        self.name = name
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Layers kept at their initial (pretrained) values for good, e.g. VGG's
        # conv1-conv2: py-faster-rcnn never trains them. Kept by parameter name,
        # so the set survives deepcopy and load_state_dict.
        fixed_ids = {id(p) for m in fixed for p in m.parameters()}
        self.fixed_parameters = tuple(n for n, p in self.named_parameters() if id(p) in fixed_ids)
        for module in fixed:
            module.requires_grad_(False)
        self._ops = _spatial_ops(body)  # (k, s, p, d, ceil) of each layer
        check_declared_stride(self._ops, self.stride, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, C, Hf, Wf)`` features."""
        return self.body(x)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1] -> ``(x - mean) / std``."""
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None]

    def shared_layers(self) -> List[nn.Parameter]:
        """The parameters of the shareable conv layers (§3.1).

        Every parameter of the backbone except the ones fixed at construction
        (VGG-16 conv1-conv2, ResNet conv1-layer1 and its frozen BatchNorm, when
        pretrained). Step 3 of the four-step training freezes exactly these:
        ``for p in backbone.shared_layers(): p.requires_grad_(False)``.
        """
        return [p for n, p in self.named_parameters() if n not in self.fixed_parameters]

    def feature_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """``(Hf, Wf)`` of the feature map for an input of size ``(H, W)``.

        Applies each conv/pool layer's output-size formula,
        ``floor((n + 2p - d(k - 1) - 1) / s) + 1`` (``ceil`` for ceil-mode
        pooling), so no forward pass is needed. VGG-16: 600x1000 -> (37, 62).
        """
        check_image_size(image_size)
        sizes = [int(image_size[0]), int(image_size[1])]
        for k, s, p, d, ceil in self._ops:
            for i, n in enumerate(sizes):
                span = n + 2 * p - d * (k - 1) - 1
                n_out = (-(-span // s) if ceil else span // s) + 1
                check_fits(span, n_out, image_size, self)
                sizes[i] = n_out
        return sizes[0], sizes[1]

    def receptive_field(self) -> int:
        """Side in input pixels of the region one feature cell sees (theoretical).

        ``r = 1 + sum_l (k_l - 1) d_l * prod_{m < l} s_m``. VGG-16 conv5_3: 196;
        with the RPN's 3x3 window on top: 196 + 2 * 16 = 228, ZF: 171 (§3.1).
        """
        field, jump = 1, 1
        for k, s, _, d, _ in self._ops:
            field += (k - 1) * d * jump
            jump *= s
        return field

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def tiny(pretrained: bool = False, *,
         widths: Sequence[int] = (16, 32, 64, 64, 128, 128, 128),
         strides: Sequence[int] = (2, 2, 2, 1, 2, 1, 1)) -> Backbone:
    """The book's CPU backbone: 7 conv-BN-ReLU 3x3 layers, stride 16.

    Four stride-2 stages, like ZF's four downsamplings, but thin: about 0.18 G
    multiply-adds for a 256x256 image (VGG-16: 20 G), so it trains from
    scratch on a laptop. Receptive field 111 px (143 px with the RPN's 3x3
    window), enough for the shapes dataset's objects of 12 to ~200 px.
    """
    check_tiny_settings(pretrained, widths, strides)
    layers, c_in, total = [], 3, 1
    for c_out, s in zip(widths, strides):
        layers.append(_conv_bn_relu(c_in, c_out, s))
        c_in, total = c_out, total * s
    return Backbone(nn.Sequential(*layers), name="tiny", out_channels=c_in,
                    stride=total)


def zf(pretrained: bool = False) -> Backbone:
    """ZF net (Zeiler & Fergus 2014) to conv5 as in py-faster-rcnn: 256 channels, stride 16.

    conv1 7x7/2 (96) - LRN - pool 3x3/2 - conv2 5x5/2 (256) - LRN - pool 3x3/2 -
    conv3, conv4 (384), conv5 (256) 3x3. Two simplifications, harmless without
    the original weights: floor-mode pooling (Caffe rounds up, which adds a cell
    on some image sizes), and LRN across channels where the authors' model
    normalises within each channel over a 3x3 window.
    """
    if pretrained:
        raise RuntimeError("torchvision distributes no ImageNet weights for ZF. Convert "
                           "py-faster-rcnn's ZF.v2.caffemodel yourself, or use 'vgg16' or "
                           "'resnet50_c4', whose weights torchvision downloads.")
    lrn = dict(size=3, alpha=5e-5, beta=0.75, k=1.0)
    body = nn.Sequential(
        nn.Conv2d(3, 96, 7, stride=2, padding=3), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, stride=2, padding=1),  # conv1
        nn.Conv2d(96, 256, 5, stride=2, padding=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, stride=2, padding=1),  # conv2
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
    )
    return Backbone(body, name="zf", out_channels=256, stride=16)


def _load_weights(weights, weights_path: Optional[str], timeout: float) -> Dict[str, torch.Tensor]:
    """A torchvision state dict, from ``weights_path`` or the torch hub (with a timeout)."""
    if weights_path is not None:
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # a firewalled network must fail, not hang
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # URLError, timeout, HTTP errors, a truncated file
        raise RuntimeError(
            f"could not download the ImageNet weights {weights} ({type(error).__name__}: {error}). "
            f"Download {weights.url} on a machine with internet and copy it to {cache}, or pass "
            f"weights_path='/path/to/{filename}'; or use pretrained=False.") from error
    finally:
        socket.setdefaulttimeout(old_timeout)


def vgg16(pretrained: bool = False, *, weights_path: Optional[str] = None,
          timeout: float = 30.0) -> Backbone:
    """torchvision's VGG-16 up to the ReLU after conv5_3 (13 conv layers).

    ``features[:30]`` drops the last max-pool: 512 channels at stride 16, the
    13 shareable conv layers of §3.1. With ``pretrained=True`` conv1_1 to
    conv2_2 stay fixed, as py-faster-rcnn does (they learn generic edges;
    fine-tuning them costs memory for no gain).
    """
    from torchvision.models import VGG16_Weights
    from torchvision.models.vgg import cfgs, make_layers

    # Only the conv layers: torchvision's vgg16() would also build (and
    # initialise) 120M classifier parameters that detection never uses.
    features = make_layers(cfgs["D"])  # the same modules as vgg16().features
    if pretrained:
        weights = VGG16_Weights.IMAGENET1K_V1
        state = _load_weights(weights, weights_path, timeout)
        prefix = "features."
        features.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                  if k.startswith(prefix)})
    body = features[:30]  # up to and including relu5_3
    fixed = [body[:10]] if pretrained else []  # conv1_1 .. pool2
    return Backbone(body, name="vgg16", out_channels=512, stride=16,
                    fixed=fixed)


def _resnet_c4(depth: int, pretrained: bool, weights_path: Optional[str],
               timeout: float) -> Backbone:
    """torchvision ResNet conv1..layer3 (C4): 1024 channels, stride 16 (He et al. 2016, §A)."""
    from torchvision import models
    from torchvision.ops import FrozenBatchNorm2d

    builder, weights = {50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
                        101: (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1)}[depth]
    # Detection batches are a few images: BatchNorm statistics would be noise,
    # so a pretrained net keeps ImageNet's statistics frozen (as torchvision
    # and Detectron do). From scratch, ordinary BatchNorm is needed to train.
    net = builder(norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if pretrained:
        net.load_state_dict(_load_weights(weights, weights_path, timeout))
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3)
    fixed = [body[:5]] if pretrained else []  # stem and layer1, as in Detectron's C4
    return Backbone(body, name=f"resnet{depth}_c4", out_channels=1024, stride=16, fixed=fixed)


def resnet50_c4(pretrained: bool = False, *, weights_path: Optional[str] = None,
                timeout: float = 30.0) -> Backbone:
    """ResNet-50 C4 (conv1 to layer3, 1024 channels, stride 16)."""
    return _resnet_c4(50, pretrained, weights_path, timeout)


def resnet101_c4(pretrained: bool = False, *, weights_path: Optional[str] = None,
                 timeout: float = 30.0) -> Backbone:
    """ResNet-101 C4 (conv1 to layer3, 1024 channels, stride 16)."""
    return _resnet_c4(101, pretrained, weights_path, timeout)


BACKBONES: Dict[str, Callable[..., Backbone]] = {
    "tiny": tiny, "zf": zf, "vgg16": vgg16,
    "resnet50_c4": resnet50_c4, "resnet101_c4": resnet101_c4,
}


def build_backbone(name: str, pretrained: bool = False, **kwargs) -> Backbone:
    """Build a backbone by name: ``"tiny"``, ``"zf"``, ``"vgg16"``, ``"resnet50_c4"``,
    ``"resnet101_c4"``. Keyword arguments go to the builder (e.g. ``weights_path``).

    ``pretrained=True`` loads torchvision's ImageNet weights; offline, or for a
    backbone without published weights, it raises a RuntimeError saying where
    to get them.
    """
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    return BACKBONES[name](pretrained, **kwargs)
