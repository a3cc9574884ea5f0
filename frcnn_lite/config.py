"""Named presets: the paper's settings and the book's shapes-dataset settings.

A preset is a small frozen dataclass, passed explicitly (no global config):

    from frcnn_lite.config import PAPER, SHAPES
    rpn = RegionProposalNetwork(128, stride=SHAPES.stride, scales=SHAPES.scales,
                                ratios=SHAPES.ratios)

``PAPER`` is §3.1.1 and §3.3 of the paper: anchors of 128, 256 and 512 px at
ratios 0.5, 1, 2 on a stride-16 VGG-16 map, images rescaled to a shorter side
of 600 (longer side at most 1000).

``SHAPES`` is what the book's tiny detector uses on the 256x256 shapes images,
whose objects are 12 to ~200 px (median ~38 px). The paper's anchors are far
too big there: only 17% of the ground-truth boxes have an anchor with IoU >= 0.5
(anchors inside the image). Chapter 3 measures the coverage of several scale
sets; the paper's octave spacing moved down to 16, 32, 64, 128 px covers 66%
of the boxes at IoU >= 0.5 (89% of those over 32 px; the rest are small
objects that a stride-16 grid cannot centre well). Images keep their size.

``FasterRCNNConfig`` holds everything needed to rebuild a detector; checkpoints
store it (``frcnn_lite.model`` re-exports it). ``TrainConfig`` is one training
run's schedule (``frcnn_lite.train`` re-exports it). All validate their values
when built.

Built in chapter 3 (presets) and chapter 9 (``FasterRCNNConfig``, ``TrainConfig``).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from frcnn_lite.run_checks import (check_choice, check_int, check_number, check_numbers,
                                   check_order)


def _plain_number(value):
    """A NumPy or 0-d torch number as the Python number it holds; anything else unchanged.

    Checkpoints store configs as plain values (``torch.load(weights_only=True)``
    refuses NumPy scalars), so ``num_classes=np.int64(3)`` must become ``3``.
    """
    if isinstance(value, numbers.Number) and type(value) not in (int, float, bool, complex):
        return value.item() if hasattr(value, "item") else value
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        return value.item()
    return value


def plain_fields(config, *names: str) -> None:
    """Store list values of ``names`` as tuples (frozen dataclasses must stay hashable),
    and every NumPy / 0-d tensor number of the dataclass as a Python number."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in names and isinstance(value, (list, tuple)):
            value = tuple(_plain_number(v) for v in value)
        object.__setattr__(config, field.name, _plain_number(value))


def check_anchor_settings(owner: str, scales, ratios) -> None:
    """Anchor scales (sides in pixels) and ratios (h / w): non-empty, finite, positive."""
    check_numbers(scales, f"{owner}.scales", low=0, low_open=True)
    check_numbers(ratios, f"{owner}.ratios", low=0, low_open=True)


def check_input_size(owner: str, min_size, max_size) -> None:
    """The §3.3 rescaling sizes: positive integers with ``min_size <= max_size``."""
    check_int(min_size, f"{owner}.min_size", minimum=1)
    check_int(max_size, f"{owner}.max_size", minimum=1)
    check_order([("min_size", min_size), ("max_size", max_size)], owner)


@dataclass(frozen=True)
class Preset:
    """Anchor and input-size settings that travel together.

    Attributes:
        name: a short label for plots and logs.
        scales: anchor sides in input pixels (area ``s**2``), §3.1.1.
        ratios: anchor aspect ratios ``h / w``.
        stride: backbone stride in input pixels (16 for every backbone here).
        min_size, max_size: rescale so the shorter side is ``min_size`` unless
            the longer one would exceed ``max_size`` (§3.3: 600 and 1000).
        backbone: the :func:`frcnn_lite.backbones.build_backbone` name.
    """

    name: str
    scales: Tuple[float, ...]
    ratios: Tuple[float, ...]
    stride: int
    min_size: int
    max_size: int
    backbone: str

    def __post_init__(self):
        plain_fields(self, "scales", "ratios")
        check_anchor_settings("Preset", self.scales, self.ratios)
        check_input_size("Preset", self.min_size, self.max_size)
        check_int(self.stride, "Preset.stride", minimum=1)

    @property
    def num_anchors(self) -> int:
        """A (k in the paper), the anchors per feature-map position."""
        return len(self.scales) * len(self.ratios)

    def base_anchors(self, device=None) -> torch.Tensor:
        """The ``(A, 4)`` base anchors of this preset, centred on (0, 0)."""
        from frcnn_lite.anchors import base_anchors

        return base_anchors(self.scales, self.ratios, device=device)


PAPER = Preset(name="paper", scales=(128.0, 256.0, 512.0), ratios=(0.5, 1.0, 2.0), stride=16,
               min_size=600, max_size=1000, backbone="vgg16")

SHAPES = Preset(name="shapes", scales=(16.0, 32.0, 64.0, 128.0), ratios=(0.5, 1.0, 2.0),
                stride=16, min_size=256, max_size=256, backbone="tiny")


@dataclass(frozen=True)
class FasterRCNNConfig:
    """Everything needed to rebuild a :class:`FasterRCNN` (checkpoints store it).

    Defaults are the paper's (VGG-16 settings, §3.1-§3.3), except ``backbone``,
    which is the book's CPU network. Field names follow the paper; ``rpn_`` and
    ``roi_`` prefixes say which stage a shared name belongs to.
    """

    num_classes: int = 5  # K object classes; labels 1..K, 0 = background
    backbone: str = "tiny"
    pretrained: bool = False
    # input size (§3.3)
    min_size: int = 600
    max_size: int = 1000
    # RPN (§3.1)
    scales: Tuple[float, ...] = (128.0, 256.0, 512.0)
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_mid_channels: Optional[int] = None
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 12000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 16.0
    lambda_reg: float = 10.0
    loss_normalization: str = "paper"
    # Fast R-CNN head (§3.2, Fast R-CNN §2)
    roi_batch_size_per_image: int = 128
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou_hi: float = 0.5
    roi_bg_iou_lo: float = 0.1
    pool_size: int = 7
    representation_size: int = 1024
    roi_pool_impl: str = "ours"
    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    detections_per_img: int = 100

    def __post_init__(self):
        plain_fields(self, "scales", "ratios")
        owner = "FasterRCNNConfig"
        check_int(self.num_classes, f"{owner}.num_classes (K, without background)", minimum=1)
        if not isinstance(self.backbone, str) or not self.backbone:
            raise TypeError(f"{owner}.backbone must be a backbone name such as 'tiny' or "
                            f"'vgg16', got {self.backbone!r}.")
        if not isinstance(self.pretrained, bool):
            raise TypeError(f"{owner}.pretrained must be True or False, got {self.pretrained!r}.")
        check_input_size(owner, self.min_size, self.max_size)
        check_anchor_settings(owner, self.scales, self.ratios)
        if self.rpn_mid_channels is not None:
            check_int(self.rpn_mid_channels, f"{owner}.rpn_mid_channels", minimum=1)
        self._check_sampling(owner)
        for name in ("pre_nms_top_n_train", "post_nms_top_n_train", "pre_nms_top_n_test",
                     "post_nms_top_n_test", "pool_size", "representation_size",
                     "detections_per_img"):
            check_int(getattr(self, name), f"{owner}.{name}", minimum=1)
        for name in ("rpn_nms_thresh", "nms_thresh", "score_thresh"):
            check_number(getattr(self, name), f"{owner}.{name}", low=0, high=1)
        check_number(self.rpn_min_size, f"{owner}.rpn_min_size", low=0)
        check_number(self.lambda_reg, f"{owner}.lambda_reg", low=0)
        check_choice(self.loss_normalization, f"{owner}.loss_normalization", ("paper", "batch"))
        check_choice(self.roi_pool_impl, f"{owner}.roi_pool_impl", ("ours", "torchvision"))

    def _check_sampling(self, owner: str) -> None:
        """IoU thresholds in [0, 1] in a sensible order; mini-batch sizes and fractions."""
        for name in ("rpn_fg_iou", "rpn_bg_iou", "roi_fg_iou", "roi_bg_iou_hi", "roi_bg_iou_lo"):
            check_number(getattr(self, name), f"{owner}.{name}", low=0, high=1)
        check_order([("rpn_bg_iou", self.rpn_bg_iou), ("rpn_fg_iou", self.rpn_fg_iou)], owner)
        check_order([("roi_bg_iou_lo", self.roi_bg_iou_lo), ("roi_bg_iou_hi", self.roi_bg_iou_hi),
                     ("roi_fg_iou", self.roi_fg_iou)], owner)
        if self.roi_bg_iou_lo == self.roi_bg_iou_hi:
            raise ValueError(f"{owner}: the background range [roi_bg_iou_lo, roi_bg_iou_hi) = "
                             f"[{self.roi_bg_iou_lo}, {self.roi_bg_iou_hi}) is empty, so no RoI "
                             f"could be background; lower roi_bg_iou_lo.")
        for name in ("rpn_batch_size_per_image", "roi_batch_size_per_image"):
            check_int(getattr(self, name), f"{owner}.{name}", minimum=1)
        for name in ("rpn_positive_fraction", "roi_positive_fraction"):
            check_number(getattr(self, name), f"{owner}.{name}", low=0, high=1, low_open=True)

    def to_dict(self) -> dict:
        """Plain Python values only, so ``torch.load(weights_only=True)`` accepts it."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict) -> "FasterRCNNConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a different library version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown FasterRCNNConfig fields {unknown}: the checkpoint was made by "
                             f"another version of frcnn_lite.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def differences(self, other: "FasterRCNNConfig") -> Dict[str, Tuple[object, object]]:
        """``{field: (self's value, other's value)}`` for every field that differs."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow the paper's VOC schedule (§3.3, §4).

    The paper trains at lr 0.001 for 60k mini-batches, then 0.0001 for 20k:
    a single step at 3/4 of the run, here ``lr_steps=(0.75,)`` as fractions of
    ``iterations``, so the schedule scales with the run. ``warmup_iterations``
    ramps the lr linearly from 1/10 (helps from-scratch backbones; 0 = paper).
    """

    iterations: int = 80000
    batch_size: int = 1  # images per mini-batch (the paper: 1 for the RPN, 2 for Fast R-CNN)
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_steps: Tuple[float, ...] = (0.75,)
    lr_gamma: float = 0.1
    warmup_iterations: int = 0
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self):
        plain_fields(self, "lr_steps")  # lists -> tuples, NumPy numbers -> Python numbers
        owner = "TrainConfig"
        check_int(self.iterations, f"{owner}.iterations", minimum=1)
        check_int(self.batch_size, f"{owner}.batch_size (images per mini-batch)", minimum=1)
        check_number(self.lr, f"{owner}.lr", low=0, low_open=True)
        check_number(self.momentum, f"{owner}.momentum", low=0, high=1, high_open=True)
        check_number(self.weight_decay, f"{owner}.weight_decay", low=0)
        if self.lr_steps:  # () means a constant learning rate
            check_numbers(self.lr_steps, f"{owner}.lr_steps (fractions of iterations)", low=0,
                          high=1, low_open=True)
        check_number(self.lr_gamma, f"{owner}.lr_gamma", low=0, low_open=True)
        check_int(self.warmup_iterations, f"{owner}.warmup_iterations", minimum=0)
        check_int(self.seed, f"{owner}.seed", minimum=0, maximum=2 ** 32 - 1)
        check_int(self.checkpoint_every, f"{owner}.checkpoint_every", minimum=1)

    def lr_factor(self, iteration: int) -> float:
        """The multiplier of ``lr`` at ``iteration`` (0-based): warm-up, then steps."""
        factor = self.lr_gamma ** sum(iteration >= int(s * self.iterations) for s in self.lr_steps)
        if iteration < self.warmup_iterations:
            factor *= 0.1 + 0.9 * iteration / self.warmup_iterations
        return factor
