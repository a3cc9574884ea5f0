"""Where the time goes: careful timing, per-stage times (paper Table 5), a torchvision twin.

Paper: §4.1 and Table 5 (timings on a K40 GPU: VGG-16 takes 141 ms in the
shared conv layers, 10 ms in the proposal layers, 47 ms in the region-wise
layers, 198 ms in all; ZF 31 + 3 + 25 = 59 ms). Table 5's rows, as stages of
:class:`frcnn_lite.model.FasterRCNN` (the names ``TABLE_V_GROUPS``,
``PAPER_TABLE_V`` and :func:`table_v` keep the roman number they were given
first):

- **conv**: the input transform and the backbone (the shared conv layers);
- **proposal**: the RPN head (3x3 conv, two 1x1 convs) and the proposal layer
  (decode, clip, top-N, NMS);
- **region-wise**: RoI pooling, the fc layers of the Fast R-CNN head, and the
  post-processing (per-class decode, score threshold, NMS).

Rules for honest timings, all in :func:`measure`: warm-up runs first (the
first call allocates memory and picks kernels), then the median of several
runs (robust to a busy machine); on a GPU, ``torch.cuda.synchronize()``
before reading the clock (kernels run asynchronously); inference under
``torch.inference_mode()``. Two implementations are compared by alternating
their runs, so that both see the same background load.

Shape glossary: ``B`` images, ``(H, W)`` image size, ``C, Hf, Wf`` feature map,
``P`` proposals, ``R`` RoIs, ``K`` classes.

Built in chapter 13.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_pool

STAGES = ("transform", "backbone", "rpn_head", "proposal_layer", "roi_pool", "head_fc",
          "postprocess")
TABLE_V_GROUPS = {"conv": ("transform", "backbone"), "proposal": ("rpn_head", "proposal_layer"),
                  "region-wise": ("roi_pool", "head_fc", "postprocess")}
# Table 5 of the paper, ms per image on a K40 GPU (VGG-16 and ZF, 300 proposals, 600 x ~1000).
PAPER_TABLE_V = {"VGG-16": {"conv": 141.0, "proposal": 10.0, "region-wise": 47.0, "total": 198.0},
                 "ZF": {"conv": 31.0, "proposal": 3.0, "region-wise": 25.0, "total": 59.0}}


def synchronize(device: torch.device | str) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so the clock reads finished work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1,
            device: torch.device | str = "cpu",
            clock: str = "wall") -> List[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times: each in ms.

    ``clock="wall"`` reads elapsed time (what a user waits). ``clock="cpu"``
    reads this process's CPU time (``time.process_time``): on a machine
    shared with other jobs it counts only the work done, not the waiting for
    a core, so with one torch thread it approximates the wall time on an
    idle machine. It is meaningless for GPU work.
    """
    _check_timing(repeat, warmup, clock)
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        fn()  # the first calls allocate memory and pick kernels
    times = []
    for _ in range(repeat):
        synchronize(device)  # GPU kernels run asynchronously: wait for them
        start = now()
        fn()
        synchronize(device)
        times.append((now() - start) * 1e3)
    return times


def compare(fns: Dict[str, Callable[[], object]], *, repeat: int = 5,
            warmup: int = 1, device: torch.device | str = "cpu",
            clock: str = "wall") -> Dict[str, float]:
    """Median ms of each of several functions, their runs interleaved (a, b,
    a, b, ...): any background load is spread over all of them equally,
    which matters on a shared machine.
    """
    _check_timing(repeat, warmup, clock)
    for fn in fns.values():  # warm every one up first
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name] += measure(fn, repeat=1, warmup=0, device=device,
                                   clock=clock)
    return {name: statistics.median(t) for name, t in times.items()}


def _check_timing(repeat: int, warmup: int, clock: str) -> None:
    """``repeat >= 1`` timed runs, ``warmup >= 0`` untimed ones, a known clock."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got {repeat} and {warmup}.")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}.")


@torch.inference_mode()
def stage_times(model, images: List[torch.Tensor], *, repeat: int = 3,
                warmup: int = 1, clock: str = "wall") -> Dict[str, float]:
    """Median ms of each stage of ``model.predict(images)`` and of the whole.

    The stages (:data:`STAGES`, cut by :func:`predict_stages`) run one after
    the other exactly as ``predict`` runs them, with a GPU sync after each;
    ``"total"`` is a separate timing of ``model.predict``, so the stages'
    sum can be checked against it.
    """
    _check_timing(repeat, warmup, clock)
    device = next(model.parameters()).device
    runs = {**predict_stages(model, images),  # the stages, in order
            "total": lambda: model.predict(images)}  # then the whole
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for i in range(warmup + repeat):
        for name, run in runs.items():
            ms = measure(run, repeat=1, warmup=0, device=device, clock=clock)
            if i >= warmup:
                times[name] += ms
    return {name: statistics.median(t) for name, t in times.items()}


def predict_stages(model, images: List[torch.Tensor], state: Optional[dict] = None
                   ) -> Dict[str, Callable[[], None]]:
    """``model.predict(images)`` cut into the :data:`STAGES` of Table 5: ``{stage: run}``.

    Called in the order of STAGES, each ``run()`` does one stage on what the
    earlier ones left in ``state`` (a dict they share; pass your own to read
    it), as ``predict`` would: after the last, ``state["detections"]`` holds
    what ``predict`` returns (detections in original image coordinates).
    """
    from frcnn_lite.rpn import flatten_head_outputs
    from frcnn_lite.fast_rcnn import postprocess_detections
    from frcnn_lite.transform import map_boxes_back

    rpn, heads = model.rpn, model.roi_heads
    head = heads.head
    s = {} if state is None else state

    def transform():
        s["batch"], s["sizes"], _ = model.prepare(images)

    def backbone():
        s["features"] = model.backbone(s["batch"])  # (B, C, Hf, Wf)

    def rpn_head():
        s["logits"], s["deltas"] = flatten_head_outputs(*rpn.head(s["features"]))
        s["anchors"] = rpn.anchors(s["features"].shape[-2:])  # cached per size in practice

    def proposal_layer():
        s["proposals"], _ = rpn._proposals(s["anchors"], s["logits"], s["deltas"], s["sizes"])

    def roi_pool():
        s["pooled"] = head.pool(s["features"], s["proposals"])  # (R, C, 7, 7)

    def head_fc():
        x = head.dropout(torch.relu(head.fc6(s["pooled"].flatten(1))))
        x = head.dropout(torch.relu(head.fc7(x)))
        s["scores"], s["box_deltas"] = head.cls_score(x), head.bbox_pred(x)

    def postprocess():
        dets = postprocess_detections(
            s["scores"], s["box_deltas"], s["proposals"], s["sizes"],
            score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img, box_weights=heads.box_weights)
        for det, image, size in zip(dets, images, s["sizes"]):
            det["boxes"] = map_boxes_back(det["boxes"], size, tuple(image.shape[-2:]))
        s["detections"] = dets

    runs = (transform, backbone, rpn_head, proposal_layer, roi_pool, head_fc, postprocess)
    return dict(zip(STAGES, runs))


def table_v(stages: Dict[str, float]) -> Dict[str, float]:
    """Group :func:`stage_times` into the paper's Table 5 columns (ms): conv, proposal,
    region-wise, their sum ``"sum"``, and the separately timed ``"total"``."""
    row = {group: sum(stages[s] for s in names) for group, names in TABLE_V_GROUPS.items()}
    row["sum"] = sum(row.values())
    row["total"] = stages["total"]
    return row


def machine_info(device: torch.device | str = "cpu") -> Dict[str, object]:
    """What the numbers were measured on: CPU model, cores, threads, torch, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torchvision

    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# -- torchvision's FasterRCNN built exactly like a frcnn_lite one --------------------------
# torchvision's FasterRCNN keyword -> the FasterRCNNConfig field that means the same.
TWIN_SETTINGS = {
    "rpn_pre_nms_top_n_train": "pre_nms_top_n_train",
    "rpn_post_nms_top_n_train": "post_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "pre_nms_top_n_test",
    "rpn_post_nms_top_n_test": "post_nms_top_n_test",
    "rpn_nms_thresh": "rpn_nms_thresh",
    "rpn_fg_iou_thresh": "rpn_fg_iou",
    "rpn_bg_iou_thresh": "rpn_bg_iou",
    "rpn_batch_size_per_image": "rpn_batch_size_per_image",
    "rpn_positive_fraction": "rpn_positive_fraction",
    "box_score_thresh": "score_thresh",
    "box_nms_thresh": "nms_thresh",
    "box_detections_per_img": "detections_per_img",
    "box_fg_iou_thresh": "roi_fg_iou",
    "box_bg_iou_thresh": "roi_bg_iou_hi",
    "box_batch_size_per_image": "roi_batch_size_per_image",
    "box_positive_fraction": "roi_positive_fraction",
}

class RoIMaxPool(MultiScaleRoIAlign):
    """Fast R-CNN's RoI max pooling in the slot of torchvision's ``box_roi_pool``.

    torchvision's FasterRCNN only accepts a MultiScaleRoIAlign there, so this
    subclasses it and pools the single map with ``torchvision.ops.roi_pool``.
    """

    def __init__(self, output_size: int, spatial_scale: float):
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.pool_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, features, proposals, image_shapes):
        return roi_pool(features["0"], proposals, self.pool_size, self.spatial_scale)


class SingleMap(nn.Module):
    """Wraps a frcnn_lite backbone for torchvision (which reads ``out_channels``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.body, self.out_channels = backbone, backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def torchvision_twin(ours, *, roi_align: bool = False):
    """torchvision's ``FasterRCNN`` built like ``ours`` (a frcnn_lite model).

    Same backbone module (a copy, same weights), anchors, input size,
    proposal counts, NMS thresholds, samplers, head width
    (:data:`TWIN_SETTINGS`); RoI max pooling unless ``roi_align``
    (torchvision's default pooling, bilinear, sampling ratio 2). Remaining
    differences are each library's design: torchvision centres anchors at
    ``j * stride`` (ours ``(j + 0.5) * stride``), pads batches to a multiple
    of 32, uses RPN smooth-L1 beta 1/9 with batch normalisation.
    """
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import (FastRCNNPredictor,
                                                          TwoMLPHead)

    c, stride = ours.config, ours.backbone.stride
    backbone = SingleMap(copy.deepcopy(ours.backbone))
    anchors = AnchorGenerator(sizes=(tuple(int(s) for s in c.scales),),
                              aspect_ratios=(tuple(c.ratios),))
    pool = (MultiScaleRoIAlign(["0"], c.pool_size, sampling_ratio=2)
            if roi_align else RoIMaxPool(c.pool_size, 1.0 / stride))
    head = TwoMLPHead(backbone.out_channels * c.pool_size ** 2,
                      c.representation_size)
    predictor = FastRCNNPredictor(c.representation_size, c.num_classes + 1)
    settings = {tv: getattr(c, name) for tv, name in TWIN_SETTINGS.items()}
    return TVFasterRCNN(
        backbone, num_classes=None, min_size=c.min_size, max_size=c.max_size,
        image_mean=list(ours.backbone.mean), image_std=list(ours.backbone.std),
        rpn_anchor_generator=anchors, box_roi_pool=pool, box_head=head,
        box_predictor=predictor, **settings)
