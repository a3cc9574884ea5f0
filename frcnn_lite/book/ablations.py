"""Ablations on a frozen, trained backbone: retrain only what the ablation changes.

Paper: §3.2, steps 3 and 4 of the four-step training (the shared conv layers
are fixed; only the RPN's layers, then only the Fast R-CNN layers, are
trained), used here to rerun Tables 8, 9 and 10, the test-time proposal
count (Table 2) and the small-object anchors of §4.2 in miniature (chapter 11).

Why: trained from scratch for the few hundred iterations a CPU allows, a
detector is so weak that the differences between anchor settings drown in the
noise. The shipped demo model's backbone already computes good features, so
each ablation keeps it frozen, computes the feature maps of its images *once*
(the backbone is most of the cost), and trains fresh heads on them:

    two_stage, heads="rpn": fresh 1x1 RPN layers (their 2A and 4A outputs depend
        on the anchors) on the checkpoint's 3x3 RPN conv; the checkpoint's Fast
        R-CNN head, frozen, turns the proposals into detections (step 3 of
        §3.2, and how Table 2 pairs one detector with several proposal methods)
    two_stage, heads="all": as "rpn", but with a fresh Fast R-CNN head, trained too
    one_stage: the checkpoint's 3x3 RPN conv, frozen, under fresh 1x1 layers that
        give K + 1 class scores and a box per anchor (Table 10)

    config = FrozenBackboneConfig(scales=(16, 32, 64, 128), dataset="small_objects")
    rows = run_grid([config], memo=memo)      # frcnn_lite.book.experiments.run_grid

Shape glossary: ``N`` images, ``C`` feature channels, ``(Hf, Wf)`` feature
size, ``(h, w)`` resized image size (the model's ``min_size``/``max_size``),
``(H, W)`` original size. Sizes (anchor scales, objects) are in pixels of the
*resized* image for anchors, of the *original* image for datasets and metrics.

Built in chapter 11.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from frcnn_lite.anchors import grid_anchors
from frcnn_lite.model import DEMO_MODEL_PATH, FasterRCNN
from frcnn_lite.book.experiments import GridRun
from frcnn_lite.book.one_stage import OneStageDetector
from frcnn_lite.rpn import flatten_head_outputs, rpn_loss
from frcnn_lite.transform import map_boxes_back

DATASETS = ("shapes", "small_objects")
# The heads' tensors are small, so CPU threads barely help them, and on a busy machine they
# hurt badly: 20 RPN iterations took 17 s with two threads and 1 s with one on the shared
# 2-core machine that executed chapter 11. Runs use one thread and restore the setting.
NUM_THREADS = 1


@dataclass(frozen=True)
class FrozenBackboneConfig(GridRun):
    """One ablation run on a frozen, trained backbone (steps 3-4 of §3.2).

    ``None`` means "as in the checkpoint"; the names are the paper's.
    ``run(device, memo)`` trains fresh heads on the backbone's cached feature
    maps and evaluates them (:func:`run_frozen`);
    :func:`frcnn_lite.book.experiments.run_grid` caches and tabulates rows.
    """

    detector: str = "two_stage"  # or "one_stage" (Table 10)
    heads: str = "rpn"  # fresh RPN 1x1 layers; "all": a fresh Fast R-CNN too
    scales: Optional[Tuple[float, ...]] = None  # anchor scales (Table 8)
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor h / w (Table 8)
    lambda_reg: float = 10.0  # the balance of Eq. 1 (Table 9)
    post_nms_top_n_test: Optional[int] = None  # test proposals (Table 2)
    dataset: str = "shapes"  # or "small_objects": 8-40 px in 256 px images
    num_train: int = 200  # images whose feature maps train the heads
    num_test: int = 100
    iterations: int = 300  # SGD mini-batches of batch_size feature maps
    batch_size: int = 4
    lr: float = 0.05
    seed: int = 0  # the heads' initialisation and the batch order
    checkpoint: str = "demo"  # or the path of a frcnn_lite checkpoint

    def __post_init__(self):
        _check_frozen_config(self)
        _as_float_tuples(self, "scales", "ratios")  # (16,) keys as (16.0,)

    def fingerprint(self) -> dict:
        """The key hashes the weights too: a new demo model, new runs."""
        return {"weights": checkpoint_fingerprint(self.checkpoint)}

    def run(self, device, memo: dict) -> dict:
        """Train the heads on cached features, evaluate: one row's metrics."""
        return run_frozen(self, device, memo)


def _check_frozen_config(config: FrozenBackboneConfig) -> None:
    """The choices of a :class:`FrozenBackboneConfig` are among the known ones."""
    if config.detector not in ("two_stage", "one_stage"):
        raise ValueError(f"detector must be 'two_stage' or 'one_stage', got {config.detector!r}.")
    if config.heads not in ("rpn", "all"):
        raise ValueError(f"heads must be 'rpn' (fresh RPN, the checkpoint's detector head) "
                         f"or 'all' (both heads fresh), got {config.heads!r}.")
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {config.dataset!r}.")


def _as_float_tuples(config, *names: str) -> None:
    """Store each named field (a sequence or None) of a frozen dataclass as a float tuple."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            object.__setattr__(config, name, tuple(float(v) for v in value))


def run_frozen(config: FrozenBackboneConfig, device, memo: dict) -> dict:
    """One row: train ``config``'s heads on cached features (or reuse ``memo``'s), evaluate.

    Runs with :data:`NUM_THREADS` torch threads and restores the setting.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    try:
        return _run_frozen(config, device, memo)
    finally:
        torch.set_num_threads(previous)


def _run_frozen(config: FrozenBackboneConfig, device, memo: dict) -> dict:
    detector = load_detector(config, memo)
    bank_train = feature_bank(config, "train", device, memo)
    bank_test = feature_bank(config, "test", device, memo)
    start = time.perf_counter()
    model = build_heads(config, detector).to(device)
    state = memo.get(("heads", config.training_key()))
    if state is not None:  # only post_nms_top_n_test differs: reuse the heads
        model.load_state_dict(state["weights"])
        train_seconds = state["seconds"]
    else:
        train_heads(model, bank_train, config)
        train_seconds = time.perf_counter() - start
        memo[("heads", config.training_key())] = {
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "seconds": train_seconds}
    eval_start = time.perf_counter()
    row = evaluate_heads(model, bank_test)
    return {**row, "train_seconds": round(train_seconds, 1),
            "seconds": round(train_seconds + time.perf_counter() - eval_start, 1),
            "scales_used": list(config.scales or detector.config.scales),
            "feature_seconds": round(bank_train["seconds"] + bank_test["seconds"], 1)}


def paper_like_scales(scales) -> Tuple[Tuple[float, ...], float]:
    """``(three, small)``: the checkpoint's three largest anchor scales (the paper's
    128, 256, 512 for VOC) and a scale half the smallest of them (the 64 it adds
    for COCO, §4.2), read from ``scales`` so that a retrained model keeps the recipe."""
    ordered = sorted(float(s) for s in scales)
    if len(ordered) < 3:
        raise ValueError(f"need at least 3 anchor scales, got {tuple(scales)}.")
    three = tuple(ordered[-3:])
    return three, three[0] / 2


def checkpoint_path(checkpoint: str) -> Path:
    return DEMO_MODEL_PATH if checkpoint == "demo" else Path(checkpoint)


def checkpoint_fingerprint(checkpoint: str) -> str:
    """The SHA-1 of the checkpoint file (first 12 hex digits)."""
    path = checkpoint_path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; ablations start from a trained model "
                                f"(python -m frcnn_lite train --recipe demo --out {path}).")
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def load_detector(config: FrozenBackboneConfig, memo: dict) -> FasterRCNN:
    """The trained detector whose backbone every run shares (loaded once per ``memo``)."""
    from frcnn_lite.model import load_model

    key = ("detector", str(checkpoint_path(config.checkpoint)))
    if key not in memo:
        model = load_model(checkpoint_path(config.checkpoint)).eval()
        for p in model.backbone.parameters():
            p.requires_grad_(False)  # frozen: steps 3-4 of §3.2 keep the shared convs fixed
        memo[key] = model
    return memo[key]


def make_dataset(name: str, split: str, count: int, seed: int = 0):
    """The shapes data of chapter 11, 256 x 256 images (before the model's resize)."""
    from frcnn_lite.datasets import ShapesDataset

    if name == "shapes":  # the demo model's data
        return ShapesDataset(split, count, seed=seed)
    if name == "small_objects":  # sqrt(area) log-uniform in 8-40 px: ~85% under 32 px
        return ShapesDataset(split, count, min_size=8, max_size=40, objects_per_image=(3, 8),
                             seed=seed)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}.")


@torch.no_grad()
def extract_features(detector: FasterRCNN, dataset, device, batch_size: int = 8) -> Dict:
    """Run the frozen backbone over ``dataset`` once, with the detector's own transform.

    Returns ``{"features" (N, C, Hf, Wf), "sizes" [(h, w)], "originals" [(H, W)],
    "targets" [resized targets], "originals_targets" [targets], "seconds"}``.
    Images of one dataset share a size, so their feature maps stack.
    """
    start = time.perf_counter()
    detector = detector.to(device).eval()
    features, sizes, originals, targets, raw = [], [], [], [], []
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        images = [image.to(device) for image, _ in items]
        plain = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
                 for _, t in items]
        batch, batch_sizes, resized = detector.prepare(images, plain)
        features.append(detector.backbone(batch))  # (b, C, Hf, Wf)
        sizes += batch_sizes
        targets += resized
        originals += [tuple(image.shape[-2:]) for image in images]
        raw += [{k: v.cpu() for k, v in t.items()} for t in plain]
    return {"features": torch.cat(features), "sizes": sizes, "originals": originals,
            "targets": targets, "original_targets": raw,
            "seconds": time.perf_counter() - start}


def feature_bank(config: FrozenBackboneConfig, split: str, device, memo: dict) -> Dict:
    """:func:`extract_features` of a config's split, computed once per ``memo``."""
    count = config.num_train if split == "train" else config.num_test
    key = ("features", str(checkpoint_path(config.checkpoint)), config.dataset, split, count,
           str(device))
    if key not in memo:
        data = make_dataset(config.dataset, split, count)
        memo[key] = extract_features(load_detector(config, memo), data, device)
    return memo[key]


def build_heads(config: FrozenBackboneConfig, detector: FasterRCNN):
    """A detector on ``detector``'s frozen backbone, with fresh heads.

    Two-stage: a :class:`FasterRCNN` with the checkpoint's settings but the
    ablated fields of ``config``; one-stage: a :class:`OneStageDetector` with
    the same anchors and input size. Fresh layers are seeded by
    ``config.seed``. The RPN's 3x3 conv does not depend on the anchors: every
    model keeps the checkpoint's, frozen. Its 1x1 layers (2A and 4A outputs)
    are what the anchor settings change: fresh.
    """
    torch.manual_seed(config.seed)
    if config.detector == "one_stage":
        model = _one_stage_heads(config, detector)
        conv = model.conv  # the same 3x3 window as the RPN's
    else:
        settings = _ablated_settings(config, detector)
        model = FasterRCNN(detector.backbone, **settings)
        conv = model.rpn.head.conv
    conv.load_state_dict(detector.rpn.head.conv.state_dict())
    conv.requires_grad_(False)
    if config.detector == "two_stage" and config.heads == "rpn":
        # step 3 of §3.2: only the RPN's own layers learn
        model.roi_heads.load_state_dict(detector.roi_heads.state_dict())
        model.roi_heads.requires_grad_(False)
    return model


def _one_stage_heads(config: FrozenBackboneConfig, detector: FasterRCNN) -> OneStageDetector:
    """Table 10's one-stage detector on ``detector``'s backbone, anchors and input size."""
    base = detector.config
    return OneStageDetector(detector.backbone, base.num_classes,
                            scales=config.scales if config.scales is not None else base.scales,
                            ratios=config.ratios, min_size=base.min_size,
                            max_size=base.max_size, lambda_reg=config.lambda_reg / 10.0,
                            batch_size_per_image=base.rpn_batch_size_per_image)


def _ablated_settings(config: FrozenBackboneConfig, detector: FasterRCNN) -> dict:
    """``FasterRCNN``'s keyword arguments: the checkpoint's settings with ``config``'s
    ablated fields (the backbone is left out: the module itself is passed, shared)."""
    base = detector.config
    scales = config.scales if config.scales is not None else base.scales
    post = config.post_nms_top_n_test or base.post_nms_top_n_test
    settings = dataclasses.replace(base, scales=tuple(scales), ratios=tuple(config.ratios),
                                   lambda_reg=config.lambda_reg, post_nms_top_n_test=post,
                                   pre_nms_top_n_test=max(base.pre_nms_top_n_test, post),
                                   roi_pool_impl="torchvision")  # same numbers (ch. 7), faster
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    fields.pop("backbone")
    return fields


def head_parameters(model) -> List[torch.nn.Parameter]:
    """What the ablation trains: every parameter not frozen (never the backbone's)."""
    frozen = {id(p) for p in model.backbone.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]


def head_losses(model, features: torch.Tensor, sizes, targets) -> Dict[str, torch.Tensor]:
    """The training losses of the heads on precomputed ``features (B, C, Hf, Wf)``."""
    if isinstance(model, OneStageDetector):
        logits, deltas = model.head(features)  # (B, N, K + 1), (B, N, 4)
        anchors = grid_anchors(features.shape[-2:], model.backbone.stride, model.base_anchors)
        return model.loss(anchors, logits, deltas, sizes, targets)
    if not any(p.requires_grad for p in model.roi_heads.parameters()):
        return rpn_losses(model.rpn, features, sizes, targets)  # no proposals needed
    proposals, losses = model.rpn(features, sizes, targets)  # Eq. 1 with the ablated anchors
    _, detector_losses = model.roi_heads(features, proposals, sizes, targets)
    return {**losses, **detector_losses}


def rpn_losses(rpn, features: torch.Tensor, sizes, targets) -> Dict[str, torch.Tensor]:
    """Eq. 1 of ``rpn`` (a :class:`RegionProposalNetwork`) without making proposals."""
    logits, deltas = flatten_head_outputs(*rpn.head(features))  # (B, N, 2), (B, N, 4)
    labels, reg_targets = rpn.targets_for(rpn.anchors(features.shape[-2:]), sizes, targets)
    return rpn_loss(logits.reshape(-1, 2), deltas.reshape(-1, 4), labels.reshape(-1),
                    reg_targets.reshape(-1, 4), normalization=rpn.loss_normalization,
                    num_locations=features.shape[0] * features.shape[-2] * features.shape[-1],
                    lambda_reg=rpn.lambda_reg, beta=rpn.smooth_l1_beta)


def train_heads(model, bank: Dict, config: FrozenBackboneConfig) -> List[float]:
    """SGD on the heads only: momentum 0.9, weight decay 5e-4, a linear
    warm-up, and the paper's 10x drop at 3/4 of the iterations (§3.1.3).

    ``bank``: :func:`feature_bank`'s cached feature maps. Returns the losses.
    """
    from frcnn_lite.train import TrainConfig, batch_indices

    model.train()
    model.backbone.eval()  # frozen: BatchNorm statistics must not move either
    optimizer = torch.optim.SGD(head_parameters(model), lr=config.lr,
                                momentum=0.9, weight_decay=5e-4)
    schedule = TrainConfig(iterations=config.iterations, lr=config.lr,
                           warmup_iterations=max(1, config.iterations // 10))
    features, history = bank["features"], []
    for iteration in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule.lr_factor(iteration)
        idx = batch_indices(iteration, len(features), config.batch_size,
                            config.seed)
        losses = head_losses(model, features[idx],
                             [bank["sizes"][i] for i in idx],
                             [bank["targets"][i] for i in idx])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


@torch.no_grad()
def predict_heads(model, bank: Dict, batch_size: int = 16) -> Tuple[List[dict], List]:
    """Detections (and two-stage proposals) in original coordinates, from cached features."""
    model.eval()
    predictions, proposals = [], []
    features = bank["features"]
    for first in range(0, len(features), batch_size):
        idx = list(range(first, min(first + batch_size, len(features))))
        feats, sizes = features[idx], [bank["sizes"][i] for i in idx]
        originals = [bank["originals"][i] for i in idx]
        if isinstance(model, OneStageDetector):
            logits, deltas = model.head(feats)
            anchors = grid_anchors(feats.shape[-2:], model.backbone.stride, model.base_anchors)
            shapes = [feats.new_empty((0, *o)) for o in originals]  # detect reads only .shape
            dets = model.detect(anchors, logits, deltas, sizes, shapes)
        else:
            boxes, _ = model.rpn(feats, sizes)
            dets, _ = model.roi_heads(feats, boxes, sizes)
            for det, size, original in zip(dets, sizes, originals):
                det["boxes"] = map_boxes_back(det["boxes"], size, original)
            proposals += [map_boxes_back(b, s, o).cpu() for b, s, o in zip(boxes, sizes, originals)]
        predictions += [{k: v.cpu() for k, v in det.items()} for det in dets]
    return predictions, proposals


def evaluate_heads(model, bank: Dict) -> Dict[str, float]:
    """mAP, AP small/medium/large and proposal recall (see :func:`experiments.metrics`)."""
    from frcnn_lite.book.experiments import metrics

    predictions, proposals = predict_heads(model, bank)
    return metrics(predictions, bank["original_targets"], proposals or None,
                   model.num_classes if isinstance(model, OneStageDetector)
                   else model.config.num_classes)
