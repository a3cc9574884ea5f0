"""Training targets per image (the book's reference) vs batched (frcnn_lite.batched).

    python benchmarks/batched_targets.py                    # CPU, 1 thread
    python benchmarks/batched_targets.py --device cuda      # synchronised wall time
    python benchmarks/batched_targets.py --json out.json

For a mini-batch of ``--batch-size`` images (8) it times, per preset (the book's
SHAPES at 256 x 256 and the paper's at 600 x 1000):

- RPN targets: ``RegionProposalNetwork.targets_for`` (label_anchors +
  sample_anchors + Eq. 2 per image) vs :func:`frcnn_lite.batched.rpn_targets_batch`;
- RoI targets: :func:`frcnn_lite.fast_rcnn.sample_rois` vs
  :func:`frcnn_lite.batched.sample_rois_batch` on 2000 proposals per image
  (the paper's training post-NMS count), then the Fast R-CNN loss on them.

Images hold 1 to 8 objects (VOC averages 2.4, the shapes images 1-6). Times
are medians of ``--repeat`` interleaved runs after one warm-up
(``frcnn_lite.book.speed.compare``): process CPU time on one CPU thread, else
synchronised wall time. Ratios are per-image / batched, so > 1 means the
batched code is faster. Nothing is asserted: this is
a measurement, not a test (tests/test_batched.py checks the results agree).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from frcnn_lite.book.speed import compare
from frcnn_lite.batched import fast_rcnn_loss_batch, rpn_targets_batch, sample_rois_batch
from frcnn_lite.config import PAPER, SHAPES
from frcnn_lite.fast_rcnn import fast_rcnn_loss, sample_rois
from frcnn_lite.rpn import RegionProposalNetwork


def make_batch(preset, batch_size: int, num_proposals: int, device, seed: int = 0):
    """Anchors, sizes, targets and proposals of a realistic mini-batch."""
    g = torch.Generator().manual_seed(seed)
    h, w = (preset.min_size, preset.min_size) if preset.min_size == preset.max_size else (600, 1000)
    sizes = [(h, w)] * batch_size
    targets, proposals = [], []
    for i in range(batch_size):
        n = 1 + i % 8
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 21, (n,)).to(device)})
        # proposals: half jittered around the objects, half anywhere
        near = boxes.repeat(num_proposals // (2 * n) + 1, 1)[:num_proposals // 2]
        near = near + torch.randn(near.shape, generator=g) * 0.1 * wh.mean()
        far_xy = torch.rand(num_proposals - near.shape[0], 2, generator=g) * torch.tensor([w * .8, h * .8])
        far = torch.cat([far_xy, far_xy + 16 + torch.rand(far_xy.shape, generator=g) * 0.2 * w], 1)
        props = torch.cat([near, far])
        props = torch.cat([props[:, :2], torch.maximum(props[:, 2:], props[:, :2] + 1)], 1)
        proposals.append(props.to(device))
    rpn = RegionProposalNetwork(8, stride=preset.stride, scales=preset.scales,
                                ratios=preset.ratios).to(device)
    anchors = rpn.anchors((h // preset.stride, w // preset.stride))
    return rpn, anchors, sizes, targets, proposals


def run(args) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    # process CPU time on one CPU thread (robust to other jobs), else synchronised wall time
    clock = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
    out = {"device": str(device), "threads": args.threads, "clock": clock, "batch_size": args.batch_size,
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "note": args.note, "presets": {}}
    for preset in (SHAPES, PAPER):
        rpn, anchors, sizes, targets, proposals = make_batch(preset, args.batch_size,
                                                             args.proposals, device)
        k = 21
        s = 128

        def roi_per_image():
            rois, labels, reg = sample_rois(proposals, targets)
            r = sum(x.shape[0] for x in rois)
            return fast_rcnn_loss(torch.zeros(r, k, device=device),
                                  torch.zeros(r, 4 * (k - 1), device=device), labels, reg)

        def roi_batched():
            rois, labels, reg = sample_rois_batch(proposals, targets)
            m = labels.numel()
            return fast_rcnn_loss_batch(torch.zeros(m, k, device=device),
                                        torch.zeros(m, 4 * (k - 1), device=device), labels, reg)

        cases = {
            "rpn_targets": (lambda: rpn.targets_for(anchors, sizes, targets),
                            lambda: rpn_targets_batch(anchors, sizes, targets)),
            "roi_targets_and_loss": (roi_per_image, roi_batched),
        }
        result = {"anchors_per_image": anchors.shape[0], "image_size": list(sizes[0]),
                  "proposals_per_image": args.proposals, "roi_slots_per_image": s}
        for name, (per_image, batched) in cases.items():
            ms = compare({"per_image": per_image, "batched": batched}, repeat=args.repeat,
                         warmup=1, device=device, clock=clock)
            result[name] = {"per_image_ms": ms["per_image"], "batched_ms": ms["batched"],
                            "ratio": ms["per_image"] / ms["batched"]}
        out["presets"][preset.name] = result
    return out


def report(result: dict) -> None:
    print(f"targets for a mini-batch of {result['batch_size']} images on {result['device']}, "
          f"clock {result['clock']} "
          f"({result['threads']} thread(s)); ratio = per-image / batched")
    for name, r in result["presets"].items():
        for case in ("rpn_targets", "roi_targets_and_loss"):
            c = r[case]
            print(f"  {name:7s} {case:21s} per-image {c['per_image_ms']:8.2f} ms   batched "
                  f"{c['batched_ms']:8.2f} ms   ratio {c['ratio']:5.2f}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--proposals", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--note", default="")
    p.add_argument("--json", default=None)
    return p


if __name__ == "__main__":
    args = parser().parse_args()
    res = run(args)
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
