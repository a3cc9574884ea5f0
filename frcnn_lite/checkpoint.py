"""Checkpoints: save atomically, load safely, refuse a model they do not fit.

A checkpoint is a ``dict`` of plain Python values and tensors only, so it is
read with ``torch.load(weights_only=True)`` (no arbitrary code runs when a
file from the internet is opened):

    {"format": "frcnn_lite", "version": 1,
     "config":   FasterRCNNConfig.to_dict()   (rebuilds the architecture),
     "model":    state_dict,
     "training": {stage, config, iteration, optimizer, scheduler, rng, history,
                  data: {num_images, indices, sha256}}  (optional)}

Writes go to a temporary file in the same folder, then ``os.replace`` renames
it over the old one, so an interruption during a save never leaves a
half-written checkpoint behind (a temporary file left by ``kill -9`` is removed
by the next save or resume). Weights holding NaN or inf are never written, and
a file that holds them is refused on reading.

Built in chapter 9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from frcnn_lite.run_checks import check_device

FORMAT, VERSION = "frcnn_lite", 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, foreign, or for another architecture."""


def sample_digest(samples) -> str:
    """SHA-256 of ``[(image, target), ...]``: image pixels, boxes and labels.

    Trainers record it for the first mini-batch, so that a resume on other data
    (another ``--num-images``, seed or folder) is refused instead of continuing.
    """
    digest = hashlib.sha256()
    for image, target in samples:
        for tensor in (image, target["boxes"], target["labels"]):
            tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
    return digest.hexdigest()


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


def non_finite_tensors(tensors: dict, prefix: str = "") -> list:
    """Names of the floating-point tensors in a (nested) dict that hold NaN or inf."""
    bad = []
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite_tensors(value, f"{name}.")
        elif (torch.is_tensor(value) and value.is_floating_point()
              and not bool(torch.isfinite(value).all())):
            bad.append(name)
    return bad


def remove_stale_temporaries(path: Union[str, Path]) -> list:
    """Delete the ``.<name>.*.tmp`` files an interrupted save of ``path`` left behind.

    :func:`save_checkpoint` writes to such a file and renames it; a process
    killed (``kill -9``, power loss) before the rename leaves it. Returns the
    removed paths. Called by every save and by :class:`frcnn_lite.train.Trainer`
    before it resumes.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
    return removed


def save_checkpoint(path: Union[str, Path], model, *, training: Optional[dict] = None,
                    data: Optional[dict] = None) -> Path:
    """Write ``model``'s config and weights (and a training state) to ``path`` atomically.

    Refuses (``FloatingPointError``, nothing written, the old file kept) weights
    or optimizer state holding NaN or inf: such a checkpoint could never be
    resumed. Stale temporary files of earlier interrupted saves are removed.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file path "
                                f"such as {path / 'model.pt'}.")
    state = model.state_dict()
    bad = non_finite_tensors(state) + non_finite_tensors(
        (training or {}).get("optimizer", {}), "optimizer.")
    if bad:
        kept = f"; {path} still holds the previous checkpoint" if path.exists() else ""
        raise FloatingPointError(
            f"not saving {path}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold "
            f"NaN or inf (the run diverged){kept}. Lower the learning rate (or add warm-up) "
            f"and resume from the last checkpoint.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
               "model": state}
    if training is not None:
        payload["training"] = training
    if data is not None:  # the data the model came from, plain JSON values (read_data)
        payload["data"] = data
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


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """An actionable error for a file ``torch.load(weights_only=True)`` refused."""
    text = str(error)
    # newer torch names the refused global "GLOBAL posix.system", torch 2.1 "Unsupported class"
    blocked = re.findall(r"(?:GLOBAL|Unsupported class) ([\w.]+)", text)
    if "Weights only load failed" in text or blocked:
        what = f" (it asks to run {blocked[0]})" if blocked else ""
        return CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors and plain "
            f"values{what}, and loading those could run code hidden in the file, so the safe "
            f"load stops. frcnn_lite never writes such files: this one comes from another "
            f"program or was tampered with. Use a checkpoint written by frcnn_lite "
            f"(save_checkpoint, or the CLI's train) instead.")
    first = next((line for line in text.splitlines() if line.strip()), "")
    return CheckpointError(
        f"could not read {path}: the file is corrupt, truncated, or not a PyTorch checkpoint "
        f"({type(error).__name__}: {first[:300] or 'no details'}). Delete it and retrain, "
        f"or use an earlier checkpoint.")


def read_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """Load and validate a checkpoint file (``weights_only=True``); clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; pass the .pt file "
                              f"inside it.")
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location)  # else torch's error would read as a corrupt file
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a write to it was cut off, or it was "
                              f"created by something other than frcnn_lite. Delete it and "
                              f"retrain, or use an earlier checkpoint.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, pickle and unpickler errors all mean "unreadable"
        raise _unreadable(path, error) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a frcnn_lite checkpoint (no 'format': '{FORMAT}' "
                              f"entry); it may be a bare state_dict or another library's file.")
    if payload.get("version") != VERSION or "config" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is a frcnn_lite checkpoint of version "
                              f"{payload.get('version')}, this library reads version {VERSION}.")
    if not isinstance(payload["config"], dict) or not isinstance(payload["model"], dict):
        raise CheckpointError(f"{path}: 'config' and 'model' must be dicts; the file is damaged "
                              f"or was not written by frcnn_lite.")
    bad = non_finite_tensors(payload["model"])
    if bad:
        raise CheckpointError(f"{path} holds NaN or inf weights ({', '.join(bad[:3])}): it was "
                              f"saved from a run that had diverged, and would fail the same way. "
                              f"Use an earlier checkpoint, or retrain with a lower learning rate.")
    return payload


def config_from_checkpoint(config_class, payload: dict, path) -> object:
    """``config_class.from_dict(payload["config"])``, with the file named in any error."""
    try:
        return config_class.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its model configuration is not valid here ({error}). "
                              f"It was written by another version of frcnn_lite or edited by "
                              f"hand; use a checkpoint of this version.") from error


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
        saved = config_from_checkpoint(type(model.config), payload, path)
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


def export_model(path: Union[str, Path], model, *, history: Optional[list] = None,
                 data: Optional[dict] = None) -> Path:
    """Save only what inference needs (no optimizer state): the shipped demo model.

    ``data`` describes the data the model was trained on (class names, where the
    data lives, input size rules; plain JSON values), so that ``evaluate`` and
    ``detect`` can rebuild the same pipeline (:func:`read_data`, chapter 14).
    """
    training = None if history is None else {"history": history}
    return save_checkpoint(path, model, training=training, data=data)


def read_data(path: Union[str, Path]) -> Optional[dict]:
    """The ``data`` record a checkpoint was saved with (:func:`export_model`), or None."""
    data = read_checkpoint(path).get("data")
    if data is not None and not isinstance(data, dict):
        raise CheckpointError(f"{path}: its 'data' entry must be a dict, got "
                              f"{type(data).__name__}; the file is damaged.")
    return data
