"""Training throughput and accuracy: frcnn_lite vs torchvision's FasterRCNN, same budget.

    python benchmarks/train_vs_torchvision.py                       # demo recipe, 300 iterations
    python benchmarks/train_vs_torchvision.py --iterations 1000 --device cuda

Both detectors are built the same way in one process: the same backbone module
(torchvision's gets a copy of ours with the same initial weights), the same
anchors (scales x ratios, one feature map), image size, RoI max pooling 7x7,
two-fc head of the same width, RPN/RoI sampling sizes, proposal counts and NMS
thresholds, the same SGD schedule, the same mini-batches in the same order.
They are trained one after the other for the same number of iterations, then
evaluated on the same test images with frcnn_lite.evaluate.evaluate_voc (VOC07
11-point mAP@0.5). The script prints images/s, mAP and the ratios ours / theirs.

Differences that remain (each library's own design, not configuration):
torchvision centres anchors at ``j * stride`` (ours ``(j + 0.5) * stride``),
pads batches to a multiple of 32 (ours: the stride, 16), normalises the RPN box
loss by the sampled anchors with smooth-L1 beta 1/9 (ours: the paper's Eq. 1,
N_reg = anchor locations, lambda = 10), and drops proposals under 1e-3 px (ours
``rpn_min_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from frcnn_lite.book.speed import torchvision_twin  # same backbone, anchors, sizes, RoI max pooling


def train(model, dataset, config, device) -> float:
    """Train with the frcnn_lite schedule and batch order; returns seconds spent."""
    from frcnn_lite.train import batch_indices

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    for iteration in range(config.iterations):
        items = [dataset[i] for i in batch_indices(iteration, len(dataset), config.batch_size,
                                                   config.seed)]
        images = [image.to(device) for image, _ in items]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
                   for _, t in items]
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    from frcnn_lite.evaluate import evaluate_voc
    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.recipes import RECIPES, predict_dataset
    from frcnn_lite.utils import pick_device, seed_everything

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--num-images", type=int, default=400, help="training images")
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both runs (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else pick_device()
    recipe = RECIPES[args.recipe]
    config = dataclasses.replace(recipe.train, iterations=args.iterations,
                                 warmup_iterations=min(recipe.train.warmup_iterations,
                                                       args.iterations // 5))
    train_set = recipe.dataset("train", args.num_images)
    for i in range(len(train_set)):  # draw every image once so neither run pays for it
        train_set[i]
    test_set = recipe.dataset("test", args.eval_images)

    seed_everything(config.seed)
    ours = FasterRCNN(recipe.model)
    theirs = torchvision_twin(ours)  # built before training: identical initial backbone
    print(f"{args.iterations} iterations x {config.batch_size} images, "
          f"{recipe.model.min_size}px, device {device}", flush=True)
    results = {}
    for name, model in (("frcnn_lite", ours), ("torchvision", theirs)):
        seconds = train(model, train_set, config, device)
        predictions, targets = predict_dataset(model, test_set, device=device)
        m_ap = evaluate_voc(predictions, targets, recipe.model.num_classes)["mAP"]
        results[name] = (args.iterations * config.batch_size / seconds, m_ap)
        print(f"{name:12s} {results[name][0]:7.2f} images/s  mAP@0.5 {m_ap:.4f}  "
              f"({seconds:.1f} s)", flush=True)
    (ours_speed, ours_map), (tv_speed, tv_map) = results["frcnn_lite"], results["torchvision"]
    print(f"ratio frcnn_lite / torchvision: throughput {ours_speed / tv_speed:.2f}x, "
          f"mAP {ours_map / max(tv_map, 1e-9):.2f}x ({ours_map - tv_map:+.4f})")
    if args.json:
        import json

        from frcnn_lite.book.speed import machine_info

        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine_info(device), "threads":
                       torch.get_num_threads(), "images_per_s": {k: v[0] for k, v in results.items()},
                       "mAP": {k: v[1] for k, v in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
