"""Command line: ``python -m frcnn_lite train|evaluate|detect`` (``--help`` on each).

    python -m frcnn_lite train --recipe demo --out data/demo_model.pt     # the shipped model
    python -m frcnn_lite train --scheme alternating --iterations 400 --out /tmp/alt.pt
    python -m frcnn_lite evaluate --model data/demo_model.pt --num-images 200
    python -m frcnn_lite detect photo.png --out photo_detections.png

Training checkpoints to ``<out>.ckpt`` (or ``<out>.ckpt/`` for the four steps)
as it goes; run the same command again after an interruption to resume. The
checkpoint is deleted once the model is written (``--keep-checkpoint`` keeps it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional


def _train(args) -> int:
    from frcnn_lite.checkpoint import export_model
    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.recipes import RECIPES, evaluate_model
    from frcnn_lite.train import train_alternating, train_joint
    from frcnn_lite.utils import seed_everything

    recipe = RECIPES[args.recipe]
    train_cfg = recipe.train
    overrides = {k: v for k, v in (("iterations", args.iterations), ("lr", args.lr),
                                   ("batch_size", args.batch_size), ("seed", args.seed))
                 if v is not None}
    train_cfg = dataclasses.replace(train_cfg, **overrides)
    scheme = args.scheme or recipe.scheme
    dataset = recipe.dataset("train", args.num_images)
    seed_everything(train_cfg.seed)
    model = FasterRCNN(recipe.model)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    print(f"training ({scheme}) on {len(dataset)} shapes images for {train_cfg.iterations} "
          f"iterations; checkpoints: {ckpt}", flush=True)
    start = time.perf_counter()
    if scheme == "joint":
        history = train_joint(model, dataset, train_cfg, checkpoint_path=ckpt, device=args.device,
                              progress=not args.quiet)
    else:
        model, logs = train_alternating(model, dataset, recipe.alternating(train_cfg),
                                        checkpoint_dir=ckpt, device=args.device,
                                        progress=not args.quiet)
        history = [dict(row, step=name) for name, log in logs.items() for row in log]
    seconds = time.perf_counter() - start
    export_model(out, model.cpu(), history=history)
    print(f"trained in {seconds / 60:.1f} min; model written to {out}", flush=True)
    if not args.keep_checkpoint:  # the run is complete: the resume state is no longer needed
        shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink(missing_ok=True)
    if args.eval_images:
        result = evaluate_model(model, recipe.dataset("test", args.eval_images),
                                device=args.device)
        print(f"mAP@0.5 (VOC07 11-point) on {args.eval_images} test images: {result['mAP']:.4f}")
    return 0


def _evaluate(args) -> int:
    from frcnn_lite.model import load_model
    from frcnn_lite.datasets import ShapesDataset
    from frcnn_lite.model import DEMO_MODEL_PATH
    from frcnn_lite.recipes import evaluate_model

    model = load_model(args.model or DEMO_MODEL_PATH, device=args.device or "cpu")
    size = model.config.min_size if args.image_size is None else args.image_size
    dataset = ShapesDataset(args.split, args.num_images, image_size=(size, size), seed=args.seed)
    result = evaluate_model(model, dataset, device=args.device, use_07_metric=not args.area)
    metric = "VOC07 11-point" if not args.area else "area"
    print(f"mAP@0.5 ({metric}) on {len(dataset)} {args.split} images: {result['mAP']:.4f}")
    for name, ap in result["ap"].items():
        print(f"  {name:10s} AP {ap:.4f}  ({result['num_gt'][name]} objects)")
    return 0


def _detect(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    from frcnn_lite.model import load_model
    from frcnn_lite.datasets import CLASSES
    from frcnn_lite.model import DEMO_MODEL_PATH
    from frcnn_lite.book.viz import show_detections

    model = load_model(args.model or DEMO_MODEL_PATH, device=args.device or "cpu")
    path = Path(args.image)
    try:
        image = to_tensor(Image.open(path).convert("RGB"))  # (3, H, W) in [0, 1]
    except (FileNotFoundError, OSError) as error:
        print(f"error: cannot read image {path}: {error}", file=sys.stderr)
        return 2
    output = model([image.to(next(model.parameters()).device)])[0]
    prediction = {k: v.cpu() for k, v in output.items()}
    keep = prediction["scores"] >= args.score_threshold
    names = CLASSES if model.config.num_classes == len(CLASSES) else None
    height, width = image.shape[-2:]
    fig, ax = plt.subplots(figsize=(6 * width / max(height, width) + 0.5, 6 * height / max(height, width)))
    show_detections(image, prediction=prediction, class_names=names, ax=ax,
                    score_threshold=args.score_threshold,
                    title=f"{int(keep.sum())} detections (score >= {args.score_threshold})")
    out = Path(args.out) if args.out else path.with_name(f"{path.stem}_detections.png")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    for box, label, score in zip(prediction["boxes"][keep], prediction["labels"][keep],
                                 prediction["scores"][keep]):
        name = names[int(label) - 1] if names else str(int(label))
        print(f"{name:10s} {float(score):.3f}  " + " ".join(f"{v:.1f}" for v in box.tolist()))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from frcnn_lite.recipes import RECIPES

    parser = argparse.ArgumentParser(prog="python -m frcnn_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector on the shapes dataset",
                       description="Train Faster R-CNN on the synthetic shapes dataset, with "
                                   "approximate joint training (§3.2 ii) or the 4-step "
                                   "alternating training (§3.2, its 4-step form). Rerun to resume.")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="demo",
                   help="model + schedule preset (default: demo, the shipped model)")
    p.add_argument("--scheme", choices=("joint", "alternating"), default=None,
                   help="training scheme (default: the recipe's, joint)")
    p.add_argument("--iterations", type=int, default=None, help="mini-batches (per step)")
    p.add_argument("--batch-size", type=int, default=None, help="images per mini-batch")
    p.add_argument("--lr", type=float, default=None, help="base learning rate")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--num-images", type=int, default=None, help="training images")
    p.add_argument("--out", default="model.pt", help="where to write the trained model")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (folder for alternating); default <out>.ckpt")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the resume checkpoint after a finished run (default: delete it)")
    p.add_argument("--eval-images", type=int, default=200,
                   help="test images to evaluate on at the end (0 = skip)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="mAP of a model on the shapes test split",
                       description="VOC mAP@0.5 of a trained model on freshly generated shapes "
                                   "images (11-point VOC 2007 rule by default).")
    p.add_argument("--model", default=None, help="checkpoint (default: data/demo_model.pt)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--image-size", type=int, default=None, help="square image side (default: "
                   "the model's min_size)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--area", action="store_true", help="all-point (area) AP instead of 11-point")
    p.add_argument("--device", default=None)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("detect", help="draw a model's detections on an image file",
                       description="Run a model on one image file and write a PNG with its "
                                   "detections drawn; also prints them.")
    p.add_argument("image", help="an image file (PNG, JPEG, ...)")
    p.add_argument("--model", default=None, help="checkpoint (default: data/demo_model.pt)")
    p.add_argument("--out", default=None, help="output PNG (default: <image>_detections.png)")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--device", default=None)
    p.set_defaults(run=_detect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
