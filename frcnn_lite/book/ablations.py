"""Ablations on a frozen, trained backbone: retrain only what the ablation changes.

Paper: §3.2, steps 3 and 4 of the four-step training (the shared conv layers
are fixed; only the RPN's layers, then only the Fast R-CNN layers, are
trained), used here to rerun Tables VIII, IX and X, the test-time proposal
count and the small-object anchors of §4.2 in miniature (chapter 11).

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
        give K + 1 class scores and a box per anchor (Table X)

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
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from frcnn_lite.anchors import grid_anchors
from frcnn_lite.model import DEMO_MODEL_PATH, FasterRCNN
from frcnn_lite.book.one_stage import OneStageDetector
from frcnn_lite.rpn import flatten_head_outputs, rpn_loss
from frcnn_lite.transform import map_boxes_back

DATASETS = ("shapes", "small_objects")
# The heads' tensors are small, so CPU threads barely help them, and on a busy machine they
# hurt badly: 20 RPN iterations took 17 s with two threads and 1 s with one on the shared
# 2-core machine that executed chapter 11. Runs use one thread and restore the setting.
NUM_THREADS = 1


@dataclass(frozen=True)
class FrozenBackboneConfig:
    """One ablation run on a frozen backbone. ``None`` means "as in the checkpoint".

    ``scales``/``ratios``/``lambda_reg`` (Eq. 1)/``post_nms_top_n_test`` are the
    paper's names; ``dataset`` is ``"shapes"`` (the demo model's data) or
    ``"small_objects"`` (objects of 8-40 px in 256 px images, mostly COCO-small);
    ``iterations`` mini-batches of ``batch_size`` feature maps; ``seed`` sets the
    heads' initialisation and the batch order (the images stay the same);
    ``heads``: ``"rpn"`` trains fresh 1x1 RPN layers and keeps the rest of the
    checkpoint (fast: a few seconds), ``"all"`` also a fresh Fast R-CNN head.
    """

    detector: str = "two_stage"  # or "one_stage" (Table X)
    heads: str = "rpn"  # or "all"
    scales: Optional[Tuple[float, ...]] = None
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    lambda_reg: float = 10.0
    post_nms_top_n_test: Optional[int] = None
    dataset: str = "shapes"
    num_train: int = 200
    num_test: int = 100
    iterations: int = 300
    batch_size: int = 4
    lr: float = 0.05
    seed: int = 0
    checkpoint: str = "demo"  # or a path to a frcnn_lite checkpoint

    def __post_init__(self):
        if self.detector not in ("two_stage", "one_stage"):
            raise ValueError(f"detector must be 'two_stage' or 'one_stage', got {self.detector!r}.")
        if self.heads not in ("rpn", "all"):
            raise ValueError(f"heads must be 'rpn' (fresh RPN, the checkpoint's detector head) "
                             f"or 'all' (both heads fresh), got {self.heads!r}.")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}.")
        for name in ("scales", "ratios"):
            value = getattr(self, name)
            if value is not None:  # tuples of floats, so (16, 32) and (16.0, 32.0) hash alike
                object.__setattr__(self, name, tuple(float(v) for v in value))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def key(self) -> str:
        """Hash of every field *and* of the checkpoint's weights: a new demo model, new runs."""
        text = json.dumps({**self.to_dict(), "weights": checkpoint_fingerprint(self.checkpoint)},
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def training_key(self) -> str:
        """The key without the test-time proposal count (those runs share trained heads)."""
        return dataclasses.replace(self, post_nms_top_n_test=0).key()

    def run(self, device, memo: dict) -> dict:
        """Train the heads on cached features, evaluate; the metrics of one row."""
        previous = torch.get_num_threads()
        torch.set_num_threads(NUM_THREADS)
        try:
            return self._run(device, memo)
        finally:
            torch.set_num_threads(previous)

    def _run(self, device, memo: dict) -> dict:
        detector = load_detector(self, memo)
        bank_train = feature_bank(self, "train", device, memo)
        bank_test = feature_bank(self, "test", device, memo)
        start = time.perf_counter()
        model = build_heads(self, detector).to(device)
        state = memo.get(("heads", self.training_key()))
        if state is not None:  # only post_nms_top_n_test differs: reuse the heads
            model.load_state_dict(state["weights"])
            train_seconds = state["seconds"]
        else:
            train_heads(model, bank_train, self)
            train_seconds = time.perf_counter() - start
            memo[("heads", self.training_key())] = {
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "seconds": train_seconds}
        eval_start = time.perf_counter()
        row = evaluate_heads(model, bank_test)
        return {**row, "train_seconds": round(train_seconds, 1),
                "seconds": round(train_seconds + time.perf_counter() - eval_start, 1),
                "scales_used": list(self.scales or detector.config.scales),
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
    """A detector sharing ``detector``'s frozen backbone, with fresh heads for ``config``.

    Two-stage: :class:`FasterRCNN` with the checkpoint's configuration except the
    ablated fields. One-stage: :class:`OneStageDetector` with the same anchors and
    input size. Initialisation is seeded by ``config.seed``.
    """
    base = detector.config
    scales = config.scales if config.scales is not None else base.scales
    post = config.post_nms_top_n_test or base.post_nms_top_n_test
    torch.manual_seed(config.seed)
    trained_conv = detector.rpn.head.conv.state_dict()  # anchor-independent: shared start
    if config.detector == "one_stage":
        model = OneStageDetector(detector.backbone, base.num_classes, scales=scales,
                                 ratios=config.ratios, min_size=base.min_size,
                                 max_size=base.max_size, lambda_reg=config.lambda_reg / 10.0,
                                 batch_size_per_image=base.rpn_batch_size_per_image)
        model.conv.load_state_dict(trained_conv)  # the same 3x3 window as the RPN's
        model.conv.requires_grad_(False)
        return model
    settings = dataclasses.replace(base, scales=tuple(scales), ratios=tuple(config.ratios),
                                   lambda_reg=config.lambda_reg, post_nms_top_n_test=post,
                                   pre_nms_top_n_test=max(base.pre_nms_top_n_test, post),
                                   roi_pool_impl="torchvision")  # same numbers (ch. 7), faster
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    fields.pop("backbone")  # the module itself is passed: shared and frozen
    model = FasterRCNN(detector.backbone, **fields)
    # The RPN's 3x3 conv does not depend on the anchors: keep the checkpoint's, frozen. The
    # 1x1 layers (2A and 4A outputs) are what the anchor settings change: fresh.
    model.rpn.head.conv.load_state_dict(trained_conv)
    model.rpn.head.conv.requires_grad_(False)
    if config.heads == "rpn":  # step 3 of §3.2: only the RPN's own layers learn
        model.roi_heads.load_state_dict(detector.roi_heads.state_dict())
        model.roi_heads.requires_grad_(False)
    return model


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
    """SGD on the heads only (momentum 0.9, weight decay 5e-4), warm-up, 10x drop at 3/4."""
    from frcnn_lite.train import TrainConfig, batch_indices

    model.train()
    model.backbone.eval()  # frozen: BatchNorm statistics must not move either
    params = head_parameters(model)
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=5e-4)
    schedule = TrainConfig(iterations=config.iterations, lr=config.lr,  # the paper's step
                           warmup_iterations=max(1, config.iterations // 10))
    features = bank["features"]
    history = []
    for iteration in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule.lr_factor(iteration)
        idx = batch_indices(iteration, len(features), config.batch_size, config.seed)
        losses = head_losses(model, features[idx], [bank["sizes"][i] for i in idx],
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
