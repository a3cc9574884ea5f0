"""Training Faster R-CNN: approximate joint training and the four-step alternating scheme.

Paper: §3.2 (sharing features between the RPN and Fast R-CNN).

- (ii) *Approximate joint training*: one network, the RPN's and the detector's
  losses summed, proposals treated as constants (no gradient through their
  coordinates). Stage ``"joint"``.
- (i) *alternating training*, in the 4-step form the paper uses (the last
  part of §3.2): ``"step1"`` train the RPN (shared convs
  + RPN layers); ``"step2"`` train a separate Fast R-CNN (its own copy of the
  shared convs + detector layers) on step-1 proposals; ``"step3"`` give the
  detector's network the RPN layers, freeze the shared convs, fine-tune only the
  RPN's own layers; ``"step4"`` shared convs still frozen, fine-tune only the
  detector's own layers on step-3 proposals. One network shares the convs.

:data:`STAGES` says which parameter group each stage trains
(:func:`stage_table` prints it for a model); :class:`Trainer` runs any stage
with the paper's step schedule (scaled to the run's length), seeds, periodic
atomic checkpoints and exact resume. Checkpoint I/O lives in :mod:`checkpoint`.

Built in chapter 9.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from frcnn_lite.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                   non_finite_tensors, remove_stale_temporaries,
                                   sample_digest, save_checkpoint, set_rng_state)
from frcnn_lite.checks import check_boxes_inside, check_image, check_target
from frcnn_lite.config import TrainConfig
from frcnn_lite.model import FasterRCNN, load_model
from frcnn_lite.run_checks import check_device, check_int, check_writable_file
from frcnn_lite.stages import (GROUPS, STAGES, Stage, _stage, apply_stage, format_table,
                               parameter_groups, stage_table)
from frcnn_lite.utils import pick_device, seed_everything

__all__ = ["TrainConfig", "Stage", "STAGES", "parameter_groups", "apply_stage", "stage_table",
           "format_table", "Trainer", "train_joint", "step1_train_rpn", "step2_train_detector",
           "step3_finetune_rpn", "step4_finetune_detector", "train_alternating", "batch_indices",
           "load_model", "CheckpointError"]

LOG = logging.getLogger(__name__)


def batch_indices(iteration: int, num_images: int, batch_size: int, seed: int = 0) -> List[int]:
    """Dataset indices of mini-batch ``iteration``: a fresh shuffle each epoch.

    A pure function of its arguments, so a resumed run sees exactly the batches
    the interrupted run would have seen (no data-loader state to save).
    """
    check_int(batch_size, "batch_size", minimum=1)
    per_epoch = num_images // batch_size
    if per_epoch == 0:
        raise ValueError(f"the dataset has {num_images} images, fewer than batch_size={batch_size}.")
    epoch, position = divmod(iteration, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=generator)
    return order[position * batch_size:(position + 1) * batch_size].tolist()


class Trainer:
    """Run one stage (:data:`STAGES`) of training, with checkpoints and exact resume.

    ``Trainer(model, dataset, TrainConfig(...), stage="joint", checkpoint_path=...).fit()``
    returns the loss log, a list of ``{"iteration", "lr", "loss", <components>,
    "seconds"}``. With ``checkpoint_path``, a checkpoint (model, optimizer,
    scheduler, RNG states, iteration, loss log) is written atomically every
    ``checkpoint_every`` iterations, at the end, and when the run is
    interrupted (Ctrl-C); ``fit()`` on an existing checkpoint resumes from it
    (it says so: "resumed from iteration N"; ``resumed_from`` keeps N).

    Every sample is checked before the forward pass, so a bad one (a NaN pixel,
    a box outside its image) is named by its dataset index. Checkpoints record
    the data (its length, a hash of the first mini-batch); a resume on other
    data is refused unless ``check_data=False`` (e.g. random augmentation).
    NaN or inf weights are never saved: the last finite checkpoint is kept.
    """

    def __init__(self, model: FasterRCNN, dataset, config: TrainConfig = TrainConfig(), *,
                 stage: Union[str, Stage] = "joint", proposer: Optional[FasterRCNN] = None,
                 checkpoint_path: Union[str, Path, None] = None, device=None,
                 progress: bool = True, resume: bool = True, check_data: bool = True):
        self.stage = _stage(stage)
        if self.stage.external_proposals and proposer is None:
            raise ValueError(f"stage {self.stage.name!r} trains the detector on another network's "
                             f"proposals: pass proposer=<the step-1 RPN network>.")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty.")
        if len(dataset) < config.batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than batch_size="
                             f"{config.batch_size}; lower batch_size or add images.")
        data_classes = getattr(dataset, "num_classes", None)
        if isinstance(data_classes, int) and data_classes > model.config.num_classes:
            raise ValueError(f"the dataset has {data_classes} classes but the model detects "
                             f"{model.config.num_classes}; build the model with "
                             f"num_classes={data_classes}.")
        self.model, self.dataset, self.config = model, dataset, config
        self.device = check_device(device) if device is not None else pick_device()
        self.model.to(self.device)
        self.proposer = proposer
        if proposer is not None:
            proposer.to(self.device).eval().requires_grad_(False)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if self.checkpoint_path is not None:
            check_writable_file(self.checkpoint_path)
        self.progress, self.resume, self.check_data = progress, resume, check_data
        self.iteration = 0
        self.resumed_from: Optional[int] = None
        self._saved_iteration: Optional[int] = None  # the iteration the checkpoint file holds
        self._data: Optional[dict] = None  # what the run trains on (see _training_state)
        self.history: List[Dict[str, float]] = []
        params = apply_stage(self.model, self.stage)
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, config.lr_factor)

    # -- checkpoints ---------------------------------------------------------
    def _training_state(self, rng_state) -> dict:
        return {"stage": self.stage.name, "config": _plain(dataclasses.asdict(self.config)),
                "iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state,
                "history": self.history,
                "data": self._data or {"num_images": len(self.dataset)}}

    def save(self, rng_state=None) -> None:
        """Write the checkpoint now (atomically: a temporary file, then a rename);
        ``FloatingPointError`` (the old file kept) if the weights hold NaN or inf."""
        if self.checkpoint_path is not None:
            state = self._training_state(rng_state if rng_state is not None else get_rng_state())
            try:
                save_checkpoint(self.checkpoint_path, self.model, training=state)
            except FloatingPointError as error:
                kept = (f"the checkpoint keeps iteration {self._saved_iteration}, the last "
                        f"finite state" if self._saved_iteration is not None
                        else "no checkpoint was written")
                raise FloatingPointError(
                    f"training diverged in stage {self.stage.name!r}: the weights are NaN or inf "
                    f"at iteration {self.iteration}; {kept}. Lower the learning rate (now "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}) or add warm-up. ({error})"
                ) from error
            self._saved_iteration = self.iteration

    def _try_resume(self) -> bool:
        if self.checkpoint_path is not None:
            remove_stale_temporaries(self.checkpoint_path)  # left by a kill during a save
        if not (self.resume and self.checkpoint_path is not None and self.checkpoint_path.exists()):
            return False
        checkpoint = load_checkpoint(self.checkpoint_path, self.model, map_location=self.device)
        state = checkpoint.get("training")
        if state is None or "stage" not in state:
            raise CheckpointError(f"{self.checkpoint_path} holds a model but no training state "
                                  f"(an exported model); it cannot be resumed. Use another path.")
        missing = sorted({"config", "iteration", "optimizer", "scheduler", "rng", "history"}
                         - set(state))
        if missing:
            raise CheckpointError(f"{self.checkpoint_path}: the training state lacks {missing}; "
                                  f"the file is damaged or was edited. Use an earlier checkpoint "
                                  f"or another checkpoint path.")
        if state["stage"] != self.stage.name:
            raise CheckpointError(f"{self.checkpoint_path} is from stage {state['stage']!r}, not "
                                  f"{self.stage.name!r}; give each stage its own checkpoint file.")
        if state["config"] != _plain(dataclasses.asdict(self.config)):
            raise CheckpointError(f"{self.checkpoint_path} was trained with {state['config']}, "
                                  f"not {dataclasses.asdict(self.config)}; resume with the same "
                                  f"TrainConfig or use another checkpoint path.")
        if self.check_data:
            self._check_same_data(state.get("data"))
        self._data = state.get("data")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.iteration, self.history = state["iteration"], list(state["history"])
        self.resumed_from = self._saved_iteration = self.iteration
        return True

    def _check_same_data(self, saved: Optional[dict]) -> None:
        """Refuse to resume on data other than the run started with."""
        if saved is None:  # a checkpoint of an older version: nothing to compare
            return
        fix = (f"Resume with the same data, or train into another checkpoint path (or delete "
               f"{self.checkpoint_path}); check_data=False skips this check.")
        if saved.get("num_images") != len(self.dataset):
            raise CheckpointError(f"{self.checkpoint_path} was trained on {saved.get('num_images')}"
                                  f" images, but this dataset has {len(self.dataset)}. " + fix)
        if "indices" in saved:
            indices = [int(i) for i in saved["indices"]]
            if sample_digest([self.dataset[i] for i in indices]) != saved["sha256"]:
                raise CheckpointError(f"{self.checkpoint_path} was trained on other data: the "
                                      f"dataset's images {indices} differ from the ones the run "
                                      f"started with. " + fix)

    # -- the loop --------------------------------------------------------------
    def _sample(self, i: int):
        """``dataset[i]``, checked, so that a bad sample is named by its dataset index."""
        sample = self.dataset[i]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(f"dataset[{i}] must be an (image, target) pair, got "
                            f"{type(sample).__name__}.")
        image, target = sample
        check_image(image, f"dataset[{i}] image")
        check_target(target, self.model.config.num_classes, f"dataset[{i}] target")
        check_boxes_inside(target["boxes"], tuple(image.shape[-2:]), f"dataset[{i}] target['boxes']")
        return image, target

    def _batch(self, indices: List[int]):
        images, targets = [], []
        samples = [self._sample(i) for i in indices]
        if self._data is None:  # the run's first mini-batch: remember what the data was
            self._data = {"num_images": len(self.dataset), "indices": list(indices),
                          "sha256": sample_digest(samples)}
        for image, target in samples:
            images.append(image.to(self.device))
            targets.append({k: v.to(self.device) if torch.is_tensor(v) else v
                            for k, v in target.items()})
        return images, targets

    def step(self, indices: List[int]) -> Dict[str, float]:
        """One SGD step on the images ``indices``; returns the loss components (floats)."""
        images, targets = self._batch(indices)
        with self._divergence_named(indices):
            losses = self.model.losses(images, targets, rpn=self.stage.rpn_loss,
                                       detector=self.stage.detector_loss, proposer=self.proposer)
        values = {k: float(v.detach()) for k, v in losses.items()}  # the log; one sync per step
        for name, value in values.items():
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{name} = {value} at iteration {self.iteration} (batch index "
                    f"{self.iteration}, dataset images {indices}) in stage {self.stage.name!r}: "
                    f"training stopped (the images and targets passed their checks, so the run "
                    f"diverged). Lower the learning rate (now "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}) or add warm-up, and "
                    f"{self._restart_hint()}.")
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        self.scheduler.step()
        return values

    @contextlib.contextmanager
    def _divergence_named(self, indices: List[int]):
        """A NaN/inf inside the forward pass of checked samples: the run diverged."""
        try:
            yield
        except ValueError as error:
            bad = non_finite_tensors(self.model.state_dict())
            if not bad and "NaN or inf" not in str(error):
                raise
            where = f"weights {', '.join(bad[:3])} are NaN or inf" if bad else str(error)
            raise FloatingPointError(
                f"training diverged at iteration {self.iteration} in stage {self.stage.name!r} "
                f"(dataset images {indices} passed their checks): {where}. Lower the learning "
                f"rate (now {self.optimizer.param_groups[0]['lr']:.3g}) or add warm-up, and "
                f"{self._restart_hint()}.") from error

    def _restart_hint(self) -> str:
        if self.checkpoint_path is None or self._saved_iteration is None:
            return "start again"
        return (f"resume from the last checkpoint {self.checkpoint_path} (iteration "
                f"{self._saved_iteration}, finite weights)")

    def fit(self) -> List[Dict[str, float]]:
        """Train until ``config.iterations`` (resuming from the checkpoint if there is one)."""
        from tqdm.auto import tqdm

        if not self._try_resume():
            seed_everything(self.config.seed)
        else:  # printed with the progress bar; logged always (logger "frcnn_lite.train")
            done = " (already complete)" if self.iteration >= self.config.iterations else ""
            note = (f"resumed {self.stage.name} from iteration {self.iteration} of "
                    f"{self.config.iterations}{done} ({self.checkpoint_path})")
            LOG.info(note)
            if self.progress:
                print(note, flush=True)
        apply_stage(self.model, self.stage)
        bar = tqdm(total=self.config.iterations, initial=self.iteration, disable=not self.progress,
                   desc=self.stage.name, dynamic_ncols=True)
        start = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)
        try:
            while self.iteration < self.config.iterations:
                rng_at_start = get_rng_state()  # what a resume must restore if we stop mid-step
                indices = batch_indices(self.iteration, len(self.dataset),
                                        self.config.batch_size, self.config.seed)
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    values = self.step(indices)
                except KeyboardInterrupt:
                    self.save(rng_at_start)  # nothing of this step was applied: redo it on resume
                    raise
                self.iteration += 1
                values = {"iteration": self.iteration, "lr": lr, "loss": sum(values.values()),
                          **values, "seconds": time.perf_counter() - start}
                self.history.append(values)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
                if self.iteration % self.config.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted at iteration {self.iteration}"
                  + (f"; resume with the same command (checkpoint {self.checkpoint_path})"
                     if self.checkpoint_path else ""))
            raise
        bar.close()
        self.save()
        self.model.eval()
        return self.history


def _plain(values):
    """Tuples -> lists, recursively (the form a checkpoint stores)."""
    if isinstance(values, dict):
        return {k: _plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_plain(v) for v in values]
    return values


def _path(directory, name):
    return None if directory is None else Path(directory) / f"{name}.pt"


def train_joint(model: FasterRCNN, dataset, config: TrainConfig, *, checkpoint_path=None,
                **kwargs) -> List[Dict[str, float]]:
    """Approximate joint training (§3.2 ii): all four losses, all groups trained."""
    return Trainer(model, dataset, config, stage="joint", checkpoint_path=checkpoint_path,
                   **kwargs).fit()


def step1_train_rpn(model: FasterRCNN, dataset, config: TrainConfig, **kwargs):
    """Step 1: train the RPN (shared convs + RPN layers) on the RPN loss, Eq. 1."""
    return Trainer(model, dataset, config, stage="step1", **kwargs).fit()


def step2_train_detector(model: FasterRCNN, proposer: FasterRCNN, dataset, config: TrainConfig,
                         **kwargs):
    """Step 2: train ``model`` (its own shared convs + detector) on ``proposer``'s proposals."""
    return Trainer(model, dataset, config, stage="step2", proposer=proposer, **kwargs).fit()


def step3_finetune_rpn(model: FasterRCNN, dataset, config: TrainConfig, *,
                       rpn_from: Optional[FasterRCNN] = None, **kwargs):
    """Step 3: shared convs frozen, fine-tune the RPN's own layers (initialised from
    ``rpn_from.rpn``, the step-1 RPN, when given; py-faster-rcnn starts them afresh)."""
    if rpn_from is not None:
        model.rpn.load_state_dict(rpn_from.rpn.state_dict())
    return Trainer(model, dataset, config, stage="step3", **kwargs).fit()


def step4_finetune_detector(model: FasterRCNN, dataset, config: TrainConfig, **kwargs):
    """Step 4: shared convs frozen, fine-tune the detector's own layers on the model's proposals."""
    return Trainer(model, dataset, config, stage="step4", **kwargs).fit()


def train_alternating(model: FasterRCNN, dataset,
                      configs: Union[TrainConfig, Dict[str, TrainConfig]], *,
                      checkpoint_dir: Union[str, Path, None] = None, **kwargs
                      ) -> Tuple[FasterRCNN, Dict[str, List[Dict[str, float]]]]:
    """The 4-step alternating training (§3.2, "4-Step Alternating Training").

    ``model`` holds the initial weights.

    Steps 1 and 2 train two separate copies of ``model`` (both from the same
    initialisation, as both start from ImageNet in the paper); steps 3-4
    continue on the step-2 network, which ends with shared convs. ``configs``
    is one TrainConfig for every step or ``{"step1": ..., ..., "step4": ...}``.
    Returns the final network and each step's loss log. With ``checkpoint_dir``
    each step checkpoints to ``<dir>/stepN.pt`` and a rerun resumes.
    """
    if isinstance(configs, TrainConfig):
        configs = {s: configs for s in ("step1", "step2", "step3", "step4")}
    c, rpn_net, detector = configs, copy.deepcopy(model), copy.deepcopy(model)

    def kw(step):  # the step's checkpoint file, and the caller's keywords
        return {"checkpoint_path": _path(checkpoint_dir, step), **kwargs}

    logs = {}
    logs["step1"] = step1_train_rpn(rpn_net, dataset, c["step1"], **kw("step1"))
    logs["step2"] = step2_train_detector(detector, rpn_net, dataset, c["step2"],
                                         **kw("step2"))
    logs["step3"] = step3_finetune_rpn(detector, dataset, c["step3"],
                                       rpn_from=rpn_net, **kw("step3"))
    logs["step4"] = step4_finetune_detector(detector, dataset, c["step4"],
                                            **kw("step4"))
    return detector.eval(), logs
