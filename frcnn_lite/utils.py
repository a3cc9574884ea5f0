"""Small helpers every chapter uses: seeding and device choice."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) with ``seed``.

    Chapters call this once in their setup cell so that a re-run draws the
    same images, initial weights and mini-batches.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device() -> torch.device:
    """``cuda`` when a GPU is visible (Colab), else ``cpu`` (a laptop, CI)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
