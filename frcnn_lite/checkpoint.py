"""Checkpoints: save atomically, load safely, refuse a model they do not fit.

A checkpoint is a ``dict`` of plain Python values and tensors only, so it is
read with ``torch.load(weights_only=True)`` (no arbitrary code runs when a
file from the internet is opened):

    {"format": "frcnn_lite", "version": 1,
     "config":   FasterRCNNConfig.to_dict()   (rebuilds the architecture),
     "model":    state_dict,
     "training": {stage, config, iteration, optimizer, scheduler, rng, history}  (optional)}

Writes go to a temporary file in the same folder, then ``os.replace`` renames
it over the old one, so an interruption during a save never leaves a
half-written checkpoint behind.

Built in chapter 9.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

FORMAT, VERSION = "frcnn_lite", 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, foreign, or for another architecture."""


def get_rng_state() -> dict:
    """Every random state training touches, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(path: Union[str, Path], model, *, training: Optional[dict] = None) -> Path:
    """Write ``model``'s config and weights (and a training state) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
               "model": model.state_dict()}
    if training is not None:
        payload["training"] = training
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a checkpoint is shared
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """Load and validate a checkpoint file (``weights_only=True``); clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, pickle and unpickler errors all mean "unreadable"
        raise CheckpointError(
            f"could not read {path}: the file is corrupt, truncated, or not a safe PyTorch "
            f"checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Delete it and retrain, or use an earlier checkpoint.") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a frcnn_lite checkpoint (no 'format': '{FORMAT}' "
                              f"entry); it may be a bare state_dict or another library's file.")
    if payload.get("version") != VERSION or "config" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is a frcnn_lite checkpoint of version "
                              f"{payload.get('version')}, this library reads version {VERSION}.")
    return payload


def load_checkpoint(path: Union[str, Path], model=None, map_location="cpu") -> dict:
    """Read ``path``; if ``model`` is given, check its config matches and load the weights.

    A checkpoint of another architecture (any config field differs: backbone,
    classes, anchors, head sizes...) raises :class:`CheckpointError` naming the
    fields, instead of PyTorch's long list of missing and unexpected keys.
    """
    payload = read_checkpoint(path, map_location)
    if model is not None:
        # The model's own config class reads the saved one: no import of model.py here,
        # so that model.py can import this module (no import cycle).
        saved = type(model.config).from_dict(payload["config"])
        diff = model.config.differences(saved)
        if diff:
            listed = "; ".join(f"{k}: model {a!r} vs checkpoint {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path} was saved from a different architecture ({listed}). "
                                  f"Build the model from the checkpoint instead: "
                                  f"frcnn_lite.model.load_model({str(path)!r}).")
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: the weights do not fit the model although the configs "
                                  f"agree ({str(error).splitlines()[0]}).") from error
    return payload


def export_model(path: Union[str, Path], model, *, history: Optional[list] = None) -> Path:
    """Save only what inference needs (no optimizer state): the shipped demo model."""
    training = None if history is None else {"history": history}
    return save_checkpoint(path, model, training=training)
