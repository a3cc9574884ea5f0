"""Tests for frcnn_lite.distributed: two CPU processes on gloo, over 127.0.0.1 only.

The oracle for DistributedDataParallel is its invariant: replicas that start
equal and all-reduce their gradients stay bit-identical, while each rank
trains on different images. The ``torchrun -m frcnn_lite.distributed`` command
line is run by chapter 12 (book/12_real_data.ipynb, under nbval).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from frcnn_lite.checkpoint import read_checkpoint
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.distributed import DistributedTrainer, cleanup_distributed, init_distributed
from frcnn_lite.model import FasterRCNN
from frcnn_lite.recipes import SHAPES_MODEL, CachedDataset
from frcnn_lite.train import TrainConfig

CONFIG = TrainConfig(iterations=3, batch_size=1, lr=0.01, checkpoint_every=2, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model() -> FasterRCNN:
    return FasterRCNN(SHAPES_MODEL, min_size=96, max_size=96, pre_nms_top_n_train=200,
                      post_nms_top_n_train=50, roi_batch_size_per_image=16)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.cuda.is_available = lambda: False  # a gloo (CPU) test, also where a GPU is visible
    got_rank, got_world, device = init_distributed()
    assert (got_rank, got_world, device.type) == (rank, world, "cpu")
    torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
    model = _tiny_model()
    data = CachedDataset(ShapesDataset("train", 8, image_size=(96, 96), seed=1))
    trainer = DistributedTrainer(model, data, CONFIG, checkpoint_path=Path(out) / "ddp.ckpt")
    shards = [trainer.rank_indices(i) for i in range(CONFIG.iterations)]
    history = trainer.fit()
    torch.save({"state": model.state_dict(), "shards": shards,
                "losses": [h["loss"] for h in history]}, Path(out) / f"rank{rank}.pt")
    cleanup_distributed()


def test_two_gloo_processes_keep_identical_replicas(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # every parameter and buffer is bit-identical across the replicas
    assert r0["state"].keys() == r1["state"].keys()
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    # ... the logged loss is the mean over ranks, so the logs agree too
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == CONFIG.iterations
    # each iteration the two ranks trained on different images (DistributedSampler)
    for a, b in zip(r0["shards"], r1["shards"]):
        assert len(a) == len(b) == CONFIG.batch_size and not set(a) & set(b)
    # training moved the weights away from rank 0's initialisation
    torch.manual_seed(100)
    initial = _tiny_model().state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in r0["state"].items())
    # rank 0 alone wrote the checkpoint, and it holds the final replica
    saved = read_checkpoint(tmp_path / "ddp.ckpt")
    assert saved["training"]["iteration"] == CONFIG.iterations
    assert saved["model"].keys() == r0["state"].keys()
    for name, value in saved["model"].items():
        assert torch.equal(value, r0["state"][name]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.ckpt", "rank0.pt", "rank1.pt"]


def test_single_process_without_torchrun(tmp_path, monkeypatch):
    """No process group: rank 0 of 1, the plain Trainer's loop (and bf16 autocast on CPU)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path, even on a GPU
    assert init_distributed()[:2] == (0, 1)
    torch.manual_seed(0)
    model = _tiny_model()
    data = CachedDataset(ShapesDataset("train", 4, image_size=(96, 96), seed=1))
    config = TrainConfig(iterations=2, batch_size=2, lr=0.01, seed=0)
    trainer = DistributedTrainer(model, data, config, amp=True, progress=False)
    assert trainer.world_size == 1 and trainer.amp_dtype == torch.bfloat16
    assert sorted(trainer.rank_indices(0) + trainer.rank_indices(1)) == [0, 1, 2, 3]
    history = trainer.fit()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        DistributedTrainer(_tiny_model(), data, TrainConfig(iterations=1, batch_size=8),
                           progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda():
    """Chapter 12's GPU path: float16 autocast with loss scaling, then inference, on CUDA."""
    torch.manual_seed(0)
    model = _tiny_model()
    data = CachedDataset(ShapesDataset("train", 4, image_size=(96, 96), seed=1))
    trainer = DistributedTrainer(model, data, TrainConfig(iterations=3, batch_size=2, lr=0.01),
                                 amp=True, progress=False)
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.float16
    assert trainer.scaler.is_enabled()
    history = trainer.fit()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    with torch.no_grad():
        out = model.eval()([data[0][0].cuda()])[0]
    assert out["boxes"].is_cuda and out["boxes"].dtype == torch.float32
