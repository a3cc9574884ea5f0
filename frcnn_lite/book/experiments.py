"""Ablation grids: train small detectors under several settings and tabulate the results.

Paper (arXiv v3 table numbers): Table 8 (anchor scales and ratios), Table 9
(lambda in Eq. 1), Table 2 (number of test-time proposals), Table 10 (one
stage vs two), and §4.2 (an extra 64² anchor scale for COCO's small objects). Chapter 11 runs
each in miniature on the shapes dataset; the instructor guide assigns them.

    rows = run_grid([ExperimentConfig(scales=(32, 64)), ExperimentConfig(scales=(16, 32, 64))])
    rows[0] -> {"config": {...}, "mAP": ..., "AP_small": ..., "AP_medium": ..., "AP_large": ...,
                "recall": ..., "seconds": ..., "cached": False}

- ``mAP``: PASCAL VOC 2007's 11-point mAP at IoU 0.5 (the benchmark's metric, by which the
  paper's VOC tables are scored).
- ``AP_small/medium/large``: AP at IoU 0.5 by COCO's size buckets (area < 32²,
  32²-96², > 96²), from pycocotools, averaged over classes that have such boxes.
- ``recall``: the fraction of ground-truth boxes some test-time proposal
  covers with IoU >= 0.5 (two-stage only; NaN for the one-stage detector).
- ``seconds``: wall time of training plus evaluation on this machine.

Two kinds of configuration run through the same grid, cache and table:
:class:`ExperimentConfig` trains a whole small detector from scratch, and
:class:`frcnn_lite.book.ablations.FrozenBackboneConfig` keeps a trained backbone
frozen and trains only the heads the ablation changes (the paper's steps 3
and 4, §3.2), which is what makes the ablations measurable on a CPU. Both
are :class:`GridRun` dataclasses: each knows how to ``run(device, memo)``;
this module caches and tabulates.

Results are cached on disk, one JSON file per configuration named by a hash
of it, so a notebook that is run again reads them instead of retraining. The
cache lives in ``cache_dir`` (default ``~/.cache/frcnn_lite/ablations``;
``data/ablations`` holds results shipped with the book). A configuration that
only changes test-time settings (``post_nms_top_n_test``) reuses the trained
weights of its training configuration within one :func:`run_grid` call (or
across calls that share a ``memo`` dict).

Built in chapter 11.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

DEFAULT_CACHE = Path(os.environ.get("FRCNN_LITE_CACHE", Path.home() / ".cache" / "frcnn_lite")) \
    / "ablations"
SHIPPED_RESULTS = Path(__file__).resolve().parents[2] / "data" / "ablations"
SIZE_BUCKETS = ("small", "medium", "large")  # COCO's area ranges, in pycocotools' order


class GridRun:
    """What :func:`run_grid` needs of a configuration (a frozen dataclass that
    defines ``run(device, memo) -> dict``): its fields as JSON, and hashes."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def fingerprint(self) -> dict:
        """What else the results depend on, hashed into :meth:`key` (nothing here)."""
        return {}

    def key(self) -> str:
        """A stable hash of every field (and the fingerprint): the cache file name."""
        text = json.dumps({**self.to_dict(), **self.fingerprint()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def training_key(self) -> str:
        """The key without the test-time proposal count (those runs share trained weights)."""
        return dataclasses.replace(self, post_nms_top_n_test=0).key()


@dataclass(frozen=True)
class ExperimentConfig(GridRun):
    """One run of the grid: model settings (paper names), data and training budget.

    Defaults are a miniature of the paper's setting sized for a CPU: 128 x 128
    shapes images, a thinner tiny backbone, anchors scaled to the objects (the
    paper's 128-512 px anchors are for 600 px images). Measured: 150 iterations
    from scratch are too few for differences between runs to exceed the noise;
    raise ``iterations`` (on a GPU) for a real ablation.
    """

    detector: str = "two_stage"  # or "one_stage" (Table 10)
    scales: Tuple[float, ...] = (16.0, 32.0, 64.0)
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    lambda_reg: float = 10.0
    post_nms_top_n_test: int = 100
    dataset: str = "shapes"  # or "small_objects"
    image_size: int = 128
    num_train: int = 200
    num_test: int = 50
    iterations: int = 150
    batch_size: int = 4
    lr: float = 0.02
    widths: Tuple[int, ...] = (8, 16, 32, 32, 64, 64, 64)  # the tiny backbone, thinner
    seed: int = 0

    def run(self, device, memo: dict) -> dict:
        """Train from scratch (or reuse ``memo``'s weights for test-time changes), evaluate."""
        start = time.perf_counter()
        model = build_model(self)
        state = memo.get(("weights", self.training_key()))
        if state is not None:  # only test-time settings differ: reuse the weights
            model.load_state_dict(state["weights"])
            train_seconds = state["seconds"]
        else:
            train(model, make_dataset(self, "train"), self, device)
            train_seconds = time.perf_counter() - start
            memo[("weights", self.training_key())] = {
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "seconds": train_seconds}
        eval_start = time.perf_counter()
        metrics = evaluate(model, make_dataset(self, "test"), device)
        return {**metrics, "train_seconds": round(train_seconds, 1),
                "seconds": round(train_seconds + time.perf_counter() - eval_start, 1)}


def make_dataset(config: ExperimentConfig, split: str):
    """The shapes data of a run: ``"shapes"`` (objects 8 px to 80% of the image) or
    ``"small_objects"`` (3-8 objects of 6-40 px: mostly COCO-small, area < 32²)."""
    from frcnn_lite.datasets import ShapesDataset
    from frcnn_lite.recipes import CachedDataset

    count = config.num_train if split == "train" else config.num_test
    size = (config.image_size, config.image_size)
    if config.dataset == "shapes":
        data = ShapesDataset(split, count, image_size=size, min_size=8, seed=config.seed)
    elif config.dataset == "small_objects":
        data = ShapesDataset(split, count, image_size=size, min_size=6, max_size=40,
                             objects_per_image=(3, 8), seed=config.seed)
    else:
        raise ValueError(f"dataset must be 'shapes' or 'small_objects', got {config.dataset!r}.")
    return CachedDataset(data)


def build_model(config: ExperimentConfig, num_classes: int = 5) -> torch.nn.Module:
    """The detector of a run, freshly initialised (seeded by ``config.seed``)."""
    from frcnn_lite.backbones import tiny
    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.book.one_stage import OneStageDetector

    torch.manual_seed(config.seed)
    backbone = tiny(widths=config.widths)
    common = dict(scales=config.scales, ratios=config.ratios, min_size=config.image_size,
                  max_size=config.image_size)
    if config.detector == "one_stage":
        return OneStageDetector(backbone, num_classes, lambda_reg=config.lambda_reg / 10.0,
                                batch_size_per_image=128, **common)
    if config.detector != "two_stage":
        raise ValueError(f"detector must be 'two_stage' or 'one_stage', got {config.detector!r}.")
    return FasterRCNN(backbone, num_classes, lambda_reg=config.lambda_reg,
                      pre_nms_top_n_train=1000, post_nms_top_n_train=200,
                      pre_nms_top_n_test=1000, post_nms_top_n_test=config.post_nms_top_n_test,
                      rpn_min_size=4.0, rpn_batch_size_per_image=128,
                      roi_batch_size_per_image=64, representation_size=128, **common)


def train(model: torch.nn.Module, dataset, config: ExperimentConfig, device) -> List[float]:
    """SGD (momentum 0.9, weight decay 5e-4), linear warm-up, one 10x drop at 3/4 (§3.1.3)."""
    from frcnn_lite.train import TrainConfig, batch_indices

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=5e-4)
    schedule = TrainConfig(iterations=config.iterations, lr=config.lr,  # the paper's step
                           warmup_iterations=max(1, config.iterations // 10))
    losses = []
    for iteration in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule.lr_factor(iteration)
        indices = batch_indices(iteration, len(dataset), config.batch_size, config.seed)
        items = [dataset[i] for i in indices]
        images = [image.to(device) for image, _ in items]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
                   for _, t in items]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device, num_classes: int = 5) -> Dict[str, float]:
    """mAP (VOC 07), AP@0.5 per COCO size bucket, and proposal recall at IoU 0.5."""
    model.to(device).eval()
    predictions, targets, proposals = [], [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        predictions.append({k: v.cpu() for k, v in model([image.to(device)])[0].items()})
        targets.append({"boxes": target["boxes"], "labels": target["labels"]})
        if hasattr(model, "rpn"):
            batch, sizes, _ = model.prepare([image.to(device)])
            boxes, _ = model.rpn.propose(model.backbone(batch), sizes)
            proposals.append(boxes[0].cpu())  # resized = original here (min_size = image size)
    return metrics(predictions, targets, proposals, num_classes)


def metrics(predictions: List[dict], targets: List[dict], proposals: Optional[List] = None,
            num_classes: int = 5) -> Dict[str, float]:
    """The row's numbers from predictions, targets and (two-stage) proposals, all in
    original image coordinates: mAP (VOC 07), AP@0.5 per COCO size bucket, recall."""
    from frcnn_lite.evaluate import evaluate_coco, evaluate_voc, proposal_recall

    voc = evaluate_voc(predictions, targets, num_classes)
    coco = evaluate_coco(predictions, targets, num_classes)
    precision = coco["coco_eval"].eval["precision"]  # (T, 101, K, 4 areas, 3 maxDets)
    row = {"mAP": voc["mAP"]}
    for area, name in enumerate(SIZE_BUCKETS, start=1):
        per_class = precision[0, :, :, area, -1]  # (101, K) at IoU 0.5, 100 detections
        valid = (per_class > -1).all(axis=0)  # classes with boxes of this size
        row[f"AP_{name}"] = float(per_class[:, valid].mean()) if valid.any() else math.nan
    row["recall"] = float(proposal_recall(proposals, [t["boxes"] for t in targets], (0.5,))[0]) \
        if proposals else math.nan
    return row


def run_experiment(config, *, cache_dir: Union[str, Path, None] = None, device=None,
                   memo: Optional[dict] = None) -> dict:
    """Run one configuration (a :class:`GridRun`: ``key()``, ``to_dict()`` and ``run(device,
    memo)``), or read its cached result; the row is written to the cache atomically."""
    from frcnn_lite.utils import pick_device

    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = cache_dir / f"{config.key()}.json"
    if path.exists():
        row = json.loads(path.read_text())
        return {**row, "cached": True}
    device = torch.device(device) if device is not None else pick_device()
    row = {"config": config.to_dict(), **config.run(device, memo if memo is not None else {}),
           "device": str(device)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, allow_nan=True))
    tmp.replace(path)  # atomic: an interrupted run leaves no half-written result
    return {**row, "cached": False}


def run_grid(configs: Iterable, *, cache_dir: Union[str, Path, None] = None, device=None,
             progress: bool = True, memo: Optional[dict] = None) -> List[dict]:
    """Run every configuration (cached ones are read back); one row per configuration.

    ``memo`` holds what runs can share in memory (trained weights for test-time
    variants, a frozen backbone's feature maps); pass the same dict to several
    calls to share it between them.
    """
    from tqdm.auto import tqdm

    configs = list(configs)
    memo = {} if memo is None else memo
    rows = []
    for config in tqdm(configs, disable=not progress, desc="ablation", dynamic_ncols=True):
        rows.append(run_experiment(config, cache_dir=cache_dir, device=device, memo=memo))
    return rows


def grid(base: ExperimentConfig = ExperimentConfig(), **axes: Sequence) -> List[ExperimentConfig]:
    """The configurations of a grid: ``grid(base, scales=[(32,), (16, 32)], lambda_reg=[1, 10])``
    varies each named field over its values (all combinations), the rest as in ``base``."""
    configs = [base]
    for field, values in axes.items():
        configs = [dataclasses.replace(c, **{field: tuple(v) if isinstance(v, list) else v})
                   for c in configs for v in values]
    return configs


def table(rows: List[dict], columns: Sequence[str] = ("mAP", "AP_small", "AP_medium", "AP_large",
                                                      "recall", "seconds"),
          vary: Optional[Sequence[str]] = None, paper: Optional[Sequence] = None) -> str:
    """A plain-text table: the configuration fields that differ between rows, the
    metrics (in %, one decimal), and an optional column of the paper's numbers."""
    if vary is None:
        keys = rows[0]["config"].keys()
        vary = [k for k in keys if len({json.dumps(r["config"][k]) for r in rows}) > 1]
    header = list(vary) + list(columns) + (["paper"] if paper is not None else [])
    body = []
    for i, row in enumerate(rows):
        cells = [_fmt_value(row["config"][k]) for k in vary]
        for c in columns:
            value = row.get(c, math.nan)
            cells.append(f"{value:.1f}" if c.endswith("seconds") else
                         ("-" if value is None or (isinstance(value, float) and math.isnan(value))
                          else f"{100 * value:.1f}"))
        if paper is not None:
            cells.append(str(paper[i]))
        body.append(cells)
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _fmt_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot(rows: List[dict], x: str, metrics: Sequence[str] = ("mAP",), ax=None, paper=None,
         labels: Optional[Sequence[str]] = None):
    """Bar chart of ``metrics`` (in %) per row, labelled by config field ``x``; the
    paper's numbers (optional) as black markers. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    names = list(labels) if labels is not None else [_fmt_value(r["config"][x]) for r in rows]
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        values = [100 * r.get(metric, math.nan) for r in rows]
        ax.bar([i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))], values,
               width=width, label=metric)
    if paper is not None:
        ax.plot(range(len(rows)), paper, "k_", markersize=18, mew=2, label="paper (mAP, VOC)")
    ax.set_xticks(range(len(rows)), names)
    ax.set_xlabel(x)
    ax.set_ylabel("%")
    # outside the axes, on the right: inside, it covered the first bar
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return ax
