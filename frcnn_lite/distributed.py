"""Scale-out: the library's :class:`~frcnn_lite.train.Trainer` on several GPUs (or CPU processes).

One process per device, launched by ``torchrun``; each holds a full replica
of the model, trains on its own shard of every mini-batch, and PyTorch's
``DistributedDataParallel`` averages the gradients across processes during
``backward()``, so every replica takes the same SGD step and the replicas
stay identical. With ``W`` processes of ``batch_size`` images each, one
iteration sees ``W * batch_size`` images (the paper trains on 1 GPU; scale
``lr`` with the effective batch, the usual linear rule, when you add GPUs).

    torchrun --standalone --nproc_per_node=2 -m frcnn_lite.distributed \\
        --recipe smoke --iterations 20 --checkpoint /tmp/ddp.ckpt

Backend: NCCL on GPUs, gloo on CPU. Only rank 0 writes checkpoints and shows
progress; every rank can resume from the same checkpoint. The logged losses
are the mean over ranks. ``amp=True`` runs the forward pass in mixed
precision (float16 with loss scaling on CUDA, bfloat16 on CPU).

``DistributedTrainer`` also works without ``torchrun`` (one process, no
process group): then it is the plain Trainer plus optional mixed precision.

Built in chapter 12.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from frcnn_lite.checkpoint import CheckpointError
from frcnn_lite.train import TrainConfig, Trainer

__all__ = ["init_distributed", "cleanup_distributed", "DistributedTrainer", "main"]


def init_distributed(backend: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """Join the process group described by ``torchrun``'s environment variables.

    Returns ``(rank, world_size, device)``: ``cuda:LOCAL_RANK`` with NCCL when
    GPUs are visible, else ``cpu`` with gloo. Without ``torchrun``
    (no ``WORLD_SIZE`` in the environment) it returns ``(0, 1, device)`` and
    creates no group.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), init_method="env://")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of every rank's script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class _Losses(nn.Module):
    """``forward`` = ``model.losses``: DDP synchronises gradients only for calls
    that go through its own ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets, rpn: bool, detector: bool, proposer=None):
        return self.model.losses(images, targets, rpn=rpn, detector=detector, proposer=proposer)


class DistributedTrainer(Trainer):
    """:class:`~frcnn_lite.train.Trainer` under DDP: same stages, schedule and checkpoints.

    Each iteration, rank ``r`` trains on its ``batch_size`` images of the
    epoch's shuffled order, as ``DistributedSampler`` deals them (seeded by
    ``config.seed`` and the epoch: a pure function of the iteration, so
    resume stays exact). Call inside a process group (:func:`init_distributed`)
    or without one (a single process). Extra keywords go to ``Trainer``.

    Args:
        amp: mixed precision (autocast) for the forward pass and the losses.
        find_unused_parameters: passed to ``DistributedDataParallel``; needed
            only if a trained parameter gets no gradient in some iterations.
    """

    def __init__(self, model: nn.Module, dataset, config: TrainConfig = TrainConfig(), *,
                 amp: bool = False, find_unused_parameters: bool = False, **kwargs):
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        kwargs["progress"] = kwargs.get("progress", True) and self.rank == 0
        if kwargs.get("device") is None:
            kwargs["device"] = (torch.device("cuda", torch.cuda.current_device())
                                if torch.cuda.is_available() else torch.device("cpu"))
        super().__init__(model, dataset, config, **kwargs)  # moves the model, sets the stage
        self.sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=True, seed=config.seed, drop_last=True)
        if len(self.sampler) < config.batch_size:
            raise ValueError(f"{len(dataset)} images dealt to {self.world_size} processes leave "
                             f"{len(self.sampler)} per process, fewer than batch_size="
                             f"{config.batch_size}.")
        self._epoch, self._order = -1, []
        losses = _Losses(self.model)
        # DDP registers the parameters that require grad now, after the stage froze the rest;
        # it broadcasts rank 0's weights, so every replica starts identical.
        self.engine = (DistributedDataParallel(
            losses, device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters) if self.distributed else losses)
        self.amp = amp
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        use_scaler = amp and self.device.type == "cuda"
        self.scaler = (torch.amp.GradScaler("cuda", enabled=use_scaler)
                       if hasattr(torch.amp, "GradScaler")  # torch >= 2.3
                       else torch.cuda.amp.GradScaler(enabled=use_scaler))

    def rank_indices(self, iteration: int) -> List[int]:
        """This rank's dataset indices for mini-batch ``iteration``."""
        per_epoch = len(self.sampler) // self.config.batch_size
        epoch, position = divmod(iteration, per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)  # a fresh shuffle, the same on every rank
            self._epoch, self._order = epoch, list(self.sampler)
        size = self.config.batch_size
        return self._order[position * size:(position + 1) * size]

    def step(self, indices: List[int]) -> Dict[str, float]:
        """One synchronised SGD step. ``indices`` (the single-process batch that
        ``Trainer.fit`` computes) is replaced by this rank's shard."""
        indices = self.rank_indices(self.iteration)
        images, targets = self._batch(indices)
        with self._divergence_named(indices), torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.engine(images, targets, rpn=self.stage.rpn_loss,
                                 detector=self.stage.detector_loss, proposer=self.proposer)
        names = list(losses)
        mean = torch.stack([losses[n].detach().float() for n in names])  # (L,)
        if self.distributed:  # log the mean over ranks; all ranks see it, so all stop together
            dist.all_reduce(mean)
            mean /= self.world_size
        values = dict(zip(names, mean.tolist()))  # one sync per step, as in Trainer
        for name, value in values.items():
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{name} = {value} (mean over {self.world_size} processes) at iteration "
                    f"{self.iteration} in stage {self.stage.name!r}; rank {self.rank} had "
                    f"images {indices} (they passed their checks, so the run diverged). Lower "
                    f"the learning rate or add warm-up, and {self._restart_hint()}.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward()  # DDP all-reduces the gradients here
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def save(self, rng_state=None) -> None:
        """Rank 0 writes the checkpoint (the replicas are identical)."""
        if self.rank == 0:
            super().save(rng_state)

    def _training_state(self, rng_state) -> dict:
        state = super()._training_state(rng_state)
        state["data"] = {**state["data"], "world_size": self.world_size}
        return state

    def _check_same_data(self, saved) -> None:
        """Also refuse another number of processes: each would see other mini-batches."""
        super()._check_same_data(saved)
        if saved is not None and saved.get("world_size", self.world_size) != self.world_size:
            raise CheckpointError(
                f"{self.checkpoint_path} was trained by {saved['world_size']} process(es), this "
                f"run has {self.world_size}; resume with --nproc_per_node={saved['world_size']} "
                f"(the batches and the effective batch size depend on it), or use another "
                f"checkpoint path.")

    def fit(self) -> List[Dict[str, float]]:
        history = super().fit()
        if self.distributed:
            # DDP sends rank 0's buffers (BatchNorm statistics) before each forward, so after
            # the last one they differ by one update; send them once more.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
            dist.barrier()  # rank 0's final checkpoint is written before anyone moves on
        return history


def main(argv: Optional[List[str]] = None) -> int:
    """``torchrun --nproc_per_node=N -m frcnn_lite.distributed [--recipe smoke] ...``"""
    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.recipes import RECIPES
    from frcnn_lite.utils import seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="smoke", choices=sorted(RECIPES))
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--batch-size", type=int, help="images per process per iteration")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--num-images", type=int, help="training images (default: recipe's)")
    parser.add_argument("--checkpoint", help="checkpoint path (rank 0 writes; rerun to resume)")
    parser.add_argument("--amp", action="store_true", help="mixed precision")
    args = parser.parse_args(argv)
    rank, world, device = init_distributed()
    recipe = RECIPES[args.recipe]
    overrides = {k: v for k, v in (("iterations", args.iterations), ("lr", args.lr),
                                   ("batch_size", args.batch_size)) if v is not None}
    try:
        config = dataclasses.replace(recipe.train, **overrides)
    except (TypeError, ValueError) as error:  # TrainConfig names the bad value
        parser.error(str(error))
    seed_everything(config.seed)  # the same initial weights everywhere (DDP also broadcasts)
    model = FasterRCNN(recipe.model)
    trainer = DistributedTrainer(model, recipe.dataset("train", args.num_images), config,
                                 checkpoint_path=args.checkpoint, device=device, amp=args.amp)
    history = trainer.fit()
    if rank == 0:
        print(f"{world} process(es) on {device.type}, {config.iterations} iterations of "
              f"{world} x {config.batch_size} images: final loss {history[-1]['loss']:.4f}")
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
