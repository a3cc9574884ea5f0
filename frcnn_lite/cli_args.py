"""The command line's argument types and shared helpers: each names what is wrong."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# --backbone names -> frcnn_lite.backbones names
BACKBONES = {"tiny": "tiny", "zf": "zf", "vgg16": "vgg16", "resnet": "resnet50_c4",
             "resnet50": "resnet50_c4", "resnet101": "resnet101_c4",
             "resnet50_c4": "resnet50_c4", "resnet101_c4": "resnet101_c4"}


class CLIError(Exception):
    """A problem with the command's arguments or inputs; printed as ``error: ...``, exit 2."""


# -- argument types: each names the problem; argparse adds the argument's name ------------
def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(low: float, high: float = math.inf, *, low_open: bool = False,
          high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            interval = (f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                        if math.isfinite(high) else f"{'>' if low_open else '>='} {low:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {'in ' if math.isfinite(high) else ''}"
                                             f"{interval}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def _sizes(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as "
                                         f"'32,64,128', got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a positive number, got {text!r}")
    return values


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} was asked for but no CUDA GPU is "
                                             f"visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has "
                                             f"{torch.cuda.device_count()} GPU(s)")
    elif device.type not in ("cpu", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _pick(device: Optional[str]) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _output_file(path: str, flag: str) -> Path:
    """A path a file will be written to: not a folder, its parent not a file."""
    out = Path(path)
    if out.is_dir():
        raise CLIError(f"{flag} {out} is an existing directory; give a file path such as "
                       f"{out / 'model.pt'}.")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"{flag} {out}: {parent} is a file, so the folder cannot be made.")
    return out
