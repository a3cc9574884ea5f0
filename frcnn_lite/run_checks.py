"""Checks of settings: configuration values, the device, the checkpoint file.

``FasterRCNNConfig``, ``Preset`` and ``TrainConfig`` validate their fields
with the value checks when built; :class:`frcnn_lite.train.Trainer` checks
its device and checkpoint path before a long run starts, not at its first
tensor or first save. Like :mod:`frcnn_lite.checks` (which re-exports the
value checks), each raises an error naming the setting and how to fix it.

Built in chapter 9.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import torch


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None
              ) -> None:
    """Check that ``value`` is an integer (not a bool or a float) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None
                  else f"in {minimum}..{maximum}")
        raise ValueError(f"{name} must be an integer {bounds}, got {value}.")


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Check that ``value`` is a finite real number in the interval ``low .. high``.

    ``low_open`` / ``high_open`` exclude the end points (``(0, 1]`` is
    ``low=0, high=1, low_open=True``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    interval = (("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
                + ("inf" if high is None else f"{high:g}") + (")" if high_open else "]"))
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}.")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must lie in {interval}, got {value}.")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must lie in {interval}, got {value}.")


def check_numbers(values, name: str, **interval) -> None:
    """Check a non-empty tuple or list of numbers, each as :func:`check_number` says."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of numbers such as (0.5, 1.0, 2.0), got "
                        f"{values!r}.")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one value, got an empty {type(values).__name__}.")
    for i, value in enumerate(values):
        check_number(value, f"{name}[{i}]", **interval)


def check_choice(value, name: str, choices) -> None:
    """Check that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")


def check_order(names_values, owner: str) -> None:
    """Check ``a <= b <= ...`` for ``[(name, value), ...]``; name both ends of a violation."""
    for (name_a, a), (name_b, b) in zip(names_values, names_values[1:]):
        if a > b:
            chain = " <= ".join(n for n, _ in names_values)
            raise ValueError(f"{owner} needs {chain}, but {name_a}={a} > {name_b}={b}; swap or "
                             f"fix them.")


# -- run settings ------------------------------------------------------------------------
def check_device(device) -> torch.device:
    """``torch.device(device)``, refused at once (not at the first tensor) if absent here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device name such as 'cpu', 'cuda' or "
                         f"'cuda:0' ({error}).") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (
            device.index is not None and device.index >= torch.cuda.device_count())):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device {str(device)!r} is not available here ({found} CUDA device(s) "
                         f"found); pass device='cpu', or leave device=None to pick one.")
    return device


def check_writable_file(path) -> None:
    """Fail before a long run, not at its first save, when file ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint_path {path} is a directory; give a file path such "
                                f"as {path / 'run.pt'}.")
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the checkpoint {path}: {folder} is not a writable "
                              f"folder; choose another checkpoint_path.")
