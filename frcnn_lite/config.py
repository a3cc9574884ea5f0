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

Built in chapter 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


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
