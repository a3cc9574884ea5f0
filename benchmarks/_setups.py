"""The two configurations every speed benchmark uses (imported by the scripts here).

- ``tiny``: the shipped demo model (``frcnn_lite.load_demo_model()``, trained, so
  post-processing sees a realistic number of detections) on shapes test images at
  the size in ``model.config`` (never hard-coded here).
- ``vgg16``: the paper's test configuration (§3.3, §4): VGG-16, 600 x 1000 input,
  anchors 128/256/512 x 0.5/1/2, 6000 -> NMS 0.7 -> 300 proposals, 4096-wide fc6/fc7,
  21 classes, with *random* weights: the time of a forward pass does not depend on
  the weights, except through how many boxes pass the 0.05 score threshold (here
  all 300 x 20, the worst case for post-processing).
"""

from __future__ import annotations

import torch


def build(name: str, device: torch.device, batch_size: int = 1):
    """``(model, images)``: the frcnn_lite model in eval mode and a list of images."""
    from frcnn_lite.model import FasterRCNN, FasterRCNNConfig, load_demo_model

    g = torch.Generator().manual_seed(0)
    if name == "tiny":
        from frcnn_lite.recipes import RECIPES

        model = load_demo_model(device=device)  # resizes to model.config.min_size itself
        data = RECIPES["demo"].dataset("test", batch_size)
        images = [data[i][0].to(device) for i in range(batch_size)]
    elif name == "vgg16":
        torch.manual_seed(0)
        model = FasterRCNN(FasterRCNNConfig(backbone="vgg16", num_classes=20,
                                            representation_size=4096)).to(device).eval()
        images = [torch.rand(3, 600, 1000, generator=g).to(device) for _ in range(batch_size)]
    else:
        raise ValueError(f"unknown setup {name!r}: use 'tiny' or 'vgg16'.")
    return model, images


def targets_for(images, num_classes: int, device: torch.device):
    """A fixed, valid target per image (two boxes) for timing training steps."""
    targets = []
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]])
        labels = torch.tensor([1 + i % num_classes, 1 + (i + 1) % num_classes])
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return targets


def run_and_report(args, run, report) -> dict:
    """The scripts' shared ending: run, print the report, write ``--json`` if asked."""
    import json

    result = run(args)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result
