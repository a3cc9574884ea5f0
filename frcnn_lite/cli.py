"""Command line: ``python -m frcnn_lite train|evaluate|detect`` (``--help`` on each).

The book's synthetic shapes (the shipped demo model):

    python -m frcnn_lite train --recipe demo --out data/demo_model.pt     # the shipped model
    python -m frcnn_lite evaluate                # the shipped model on its own test data
    python -m frcnn_lite detect photo.png --out photo_detections.png

Your own data, a COCO JSON file (with its images) or a VOC folder (with a split):

    python -m frcnn_lite train --data labels.json --images images/ --val-fraction 0.2 \\
        --backbone resnet50 --out runs/mine.pt
    python -m frcnn_lite train --data VOC/ --split train --val-split val --out runs/voc.pt
    python -m frcnn_lite evaluate --model runs/mine.pt --out runs/eval  # COCO results JSON
    python -m frcnn_lite detect my_photos/ --model runs/mine.pt --out runs/detections

Training checkpoints to ``<out>.ckpt`` (or ``<out>.ckpt/`` for the four steps)
as it goes; run the same command again after an interruption to resume. The
checkpoint is deleted once the model is written (``--keep-checkpoint`` keeps it).
Every argument and every input file is checked before anything runs.

Built in chapter 14 (the shapes commands in chapter 9).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# --backbone names -> frcnn_lite.backbones names
BACKBONES = {"tiny": "tiny", "zf": "zf", "vgg16": "vgg16", "resnet": "resnet50_c4",
             "resnet50": "resnet50_c4", "resnet101": "resnet101_c4",
             "resnet50_c4": "resnet50_c4", "resnet101_c4": "resnet101_c4"}


class CLIError(Exception):
    """A problem with the command's arguments or inputs; printed as ``error: ...``, exit 2."""


# -- argument types: each names the problem; argparse adds the argument's name ------------
def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(low: float, high: float = math.inf, *, low_open: bool = False,
          high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            interval = (f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                        if math.isfinite(high) else f"{'>' if low_open else '>='} {low:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {'in ' if math.isfinite(high) else ''}"
                                             f"{interval}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def _sizes(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as "
                                         f"'32,64,128', got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a positive number, got {text!r}")
    return values


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} was asked for but no CUDA GPU is "
                                             f"visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has "
                                             f"{torch.cuda.device_count()} GPU(s)")
    elif device.type not in ("cpu", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _pick(device: Optional[str]) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _output_file(path: str, flag: str) -> Path:
    """A path a file will be written to: not a folder, its parent not a file."""
    out = Path(path)
    if out.is_dir():
        raise CLIError(f"{flag} {out} is an existing directory; give a file path such as "
                       f"{out / 'model.pt'}.")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"{flag} {out}: {parent} is a file, so the folder cannot be made.")
    return out


# -- train ----------------------------------------------------------------------------------
def _train(args) -> int:
    if args.recipe is None and args.data is None:
        return _explain_train(args)
    if args.recipe is not None and args.data is not None:
        raise CLIError("give either --recipe (the synthetic shapes) or --data (your own "
                       "COCO/VOC data), not both.")
    out = _output_file(args.out, "--out")
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    if ckpt.resolve() == out.resolve():
        raise CLIError(f"--checkpoint {ckpt} is the same file as --out; give another path.")
    if args.recipe is not None:
        misplaced = [flag for flag, value in (
            ("--images", args.images), ("--split", args.split), ("--val-data", args.val_data),
            ("--val-split", args.val_split), ("--val-fraction", args.val_fraction),
            ("--backbone", args.backbone), ("--init-from", args.init_from),
            ("--min-size", args.min_size), ("--scales", args.scales)) if value is not None]
        if misplaced:
            raise CLIError(f"{', '.join(misplaced)} only apply to --data (your own data); the "
                           f"recipe {args.recipe!r} fixes its data and model.")
        return _train_recipe(args, out, ckpt)
    if args.scheme == "alternating":
        raise CLIError("--scheme alternating is available with --recipe only; own data trains "
                       "with approximate joint training (--scheme joint).")
    if args.num_images is not None or args.eval_images is not None:
        raise CLIError("--num-images and --eval-images apply to --recipe; with --data, all "
                       "listed images train, and --val-data/--val-split/--val-fraction validate.")
    from frcnn_lite.own_data import DataError

    try:
        return _train_own(args, out, ckpt)
    except DataError as error:
        raise CLIError(str(error)) from error


def _explain_train(args) -> int:
    from frcnn_lite.recipes import RECIPES

    demo = RECIPES["demo"]
    print(f"train needs --recipe or --data; nothing was run.\n"
          f"  --recipe demo    would train the shipped demo detector from scratch on "
          f"{demo.num_train_images} synthetic shapes images\n"
          f"                   ({demo.train.iterations} iterations, about 12 minutes on a 2-core "
          f"CPU) and write {args.out}\n"
          f"  --recipe smoke   a seconds-long run (tests)\n"
          f"  --data PATH      train on your own data: a COCO JSON file (--images FOLDER) or a\n"
          f"                   VOC folder (--split NAME); see `python -m frcnn_lite train --help`",
          file=sys.stderr)
    return 2


def _train_recipe(args, out: Path, ckpt: Path) -> int:
    from frcnn_lite.checkpoint import export_model
    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.recipes import RECIPES, evaluate_model
    from frcnn_lite.train import TrainConfig, train_alternating, train_joint
    from frcnn_lite.utils import seed_everything

    recipe = RECIPES[args.recipe]
    overrides = {k: v for k, v in (("iterations", args.iterations), ("lr", args.lr),
                                   ("batch_size", args.batch_size), ("seed", args.seed))
                 if v is not None}
    train_cfg = dataclasses.replace(recipe.train, **overrides)
    scheme = args.scheme or recipe.scheme
    dataset = recipe.dataset("train", args.num_images)
    if train_cfg.batch_size > len(dataset):
        raise CLIError(f"--batch-size {train_cfg.batch_size} is more than the {len(dataset)} "
                       f"training images (--num-images).")
    seed_everything(train_cfg.seed)
    model = FasterRCNN(recipe.model)
    device = _pick(args.device)
    print(f"training ({scheme}) on {len(dataset)} shapes images for {train_cfg.iterations} "
          f"iterations on {device}; checkpoints: {ckpt}", flush=True)
    start = time.perf_counter()
    if scheme == "joint":
        history = train_joint(model, dataset, train_cfg, checkpoint_path=ckpt, device=device,
                              progress=not args.quiet)
    else:
        model, logs = train_alternating(model, dataset, recipe.alternating(train_cfg),
                                        checkpoint_dir=ckpt, device=device,
                                        progress=not args.quiet)
        history = [dict(row, step=name) for name, log in logs.items() for row in log]
    seconds = time.perf_counter() - start
    data = recipe.data_record(args.recipe, num_train_images=len(dataset))
    export_model(out, model.cpu(), history=history, data=data)
    print(f"trained in {seconds / 60:.1f} min; model written to {out}", flush=True)
    eval_images = 200 if args.eval_images is None else args.eval_images
    if eval_images:
        result = evaluate_model(model, recipe.dataset("test", eval_images), device=device)
        print(f"mAP@0.5 (VOC07 11-point) on {eval_images} test images: {result['mAP']:.4f}")
        data["validation"] = {"split": "test", "images": eval_images, "mAP": result["mAP"]}
        export_model(out, model.cpu(), history=history, data=data)  # now with its score
    if not args.keep_checkpoint:  # the run is complete: the resume state is no longer needed
        shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink(missing_ok=True)
    return 0


def _own_model(args, num_classes: int, train_set, resuming: bool):
    """The detector to train: from --init-from's detector, or a fresh one (--backbone)."""
    import torch

    from frcnn_lite.backbones import build_backbone
    from frcnn_lite.config import FasterRCNNConfig
    from frcnn_lite.model import FasterRCNN, load_model
    from frcnn_lite.own_data import suggest_scales
    from frcnn_lite.recipes import SHAPES_MODEL

    notes = []
    if args.init_from is not None:
        source = load_model(args.init_from)
        if args.backbone is not None and BACKBONES[args.backbone] != source.config.backbone:
            raise CLIError(f"--backbone {args.backbone} differs from the backbone of --init-from "
                           f"{args.init_from} ({source.config.backbone}); leave --backbone out.")
        config = dataclasses.replace(source.config, num_classes=num_classes, pretrained=False)
        if args.min_size is not None:
            config = dataclasses.replace(config, min_size=args.min_size,
                                         max_size=args.max_size or args.min_size)
        if args.scales is not None:
            config = dataclasses.replace(config, scales=args.scales)
        model = FasterRCNN(config)
        own = model.state_dict()
        copied = {k: v for k, v in source.state_dict().items()
                  if k in own and own[k].shape == v.shape}
        model.load_state_dict(copied, strict=False)
        fresh = sorted(k for k in own if k not in copied)
        notes.append(f"initialised {len(copied)} of {len(own)} tensors from {args.init_from}"
                     + (f"; new (other classes): {', '.join(fresh)}" if fresh else ""))
        return model, notes
    name = BACKBONES[args.backbone or "tiny"]
    pretrained = args.pretrained if args.pretrained is not None else name not in ("tiny", "zf")
    if pretrained and name in ("tiny", "zf"):
        raise CLIError(f"--backbone {args.backbone} has no ImageNet weights (torchvision "
                       f"publishes none); drop --pretrained, or use vgg16 / resnet50 / resnet101.")
    # tiny: the book's CPU detector settings (chapter 9); the others: the paper's.
    base = dataclasses.replace(SHAPES_MODEL, backbone=name) if name == "tiny" else \
        FasterRCNNConfig(backbone=name)
    min_size = args.min_size or 600
    max_size = args.max_size or (min_size if args.min_size else 1000)
    if max_size < min_size:
        raise CLIError(f"--max-size {max_size} is smaller than --min-size {min_size}.")
    scales = args.scales or suggest_scales(train_set, min_size, max_size)
    if args.scales is None:
        notes.append(f"anchor scales {list(scales)} px chosen from the training boxes' sizes "
                     f"after resizing (pass --scales to choose)")
    config = dataclasses.replace(base, num_classes=num_classes, min_size=min_size,
                                 max_size=max_size, scales=scales, pretrained=pretrained)
    load_weights = pretrained and not resuming  # a resumed run's weights come from the checkpoint
    kwargs = {"weights_path": args.weights} if args.weights and load_weights else {}
    try:
        backbone = build_backbone(name, pretrained=load_weights, **kwargs)
    except RuntimeError as error:
        raise CLIError(f"--backbone {args.backbone} with ImageNet weights: {error}\nOffline? "
                       f"Copy the file named above onto this machine and pass --weights FILE, "
                       f"or train from random weights with --no-pretrained.") from error
    except (OSError, EOFError) as error:
        raise CLIError(f"--weights {args.weights}: cannot read it ({error}).") from error
    if args.weights and not load_weights and not resuming:
        raise CLIError("--weights is for an ImageNet file of --backbone vgg16/resnet50/resnet101; "
                       "use --init-from for a frcnn_lite model.")
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    settings.pop("num_classes"), settings.pop("backbone")  # the module names its backbone
    torch.manual_seed(args.seed or 0)
    return FasterRCNN(backbone, num_classes, **settings), notes


def _train_own(args, out: Path, ckpt: Path) -> int:
    import torch

    from frcnn_lite.checkpoint import export_model
    from frcnn_lite.own_data import (check_dataset, class_names_of, data_record, holdout,
                                     left_out_of_training, open_dataset)
    from frcnn_lite.recipes import CachedDataset
    from frcnn_lite.train import TrainConfig, train_joint
    from frcnn_lite.utils import seed_everything

    if args.val_fraction is not None and (args.val_data or args.val_split):
        raise CLIError("give --val-fraction or --val-data/--val-split, not both.")
    train_set = open_dataset(args.data, images=args.images, split=args.split, training=True)
    classes = class_names_of(train_set)
    val_set = None
    if args.val_data or args.val_split:
        val_set = open_dataset(args.val_data or args.data, images=args.val_images,
                               split=args.val_split, classes=classes, training=False)
    elif args.val_fraction is not None:
        every = open_dataset(args.data, images=args.images, split=args.split, classes=classes,
                             training=False)
        train_part, val_set = holdout(every, args.val_fraction, seed=args.seed or 0)
        train_set = type(train_part)(train_set, train_part.indices)
    stats = check_dataset(CachedDataset(train_set), progress=not args.quiet)
    print(f"training data: {train_set.source}: {stats['images']} images "
          f"({stats['empty_images']} without objects), {stats['objects']} objects; "
          f"classes: {', '.join(f'{k} ({n})' for k, n in stats['per_class'].items())}", flush=True)
    skipped = left_out_of_training(train_set)
    if skipped:
        print(f"{skipped} crowd / difficult objects in the data do not train (evaluation "
              f"ignores them too)")
    if val_set is not None:
        val_stats = check_dataset(val_set, "validation data", progress=not args.quiet)
        print(f"validation data: {val_stats['images']} images, {val_stats['objects']} objects",
              flush=True)
    else:
        print("no validation data (add --val-fraction 0.2, or --val-data / --val-split)")
    cached = CachedDataset(train_set)  # decoded once: the preflight read every image
    pretrained_default = args.pretrained if args.pretrained is not None else \
        BACKBONES[args.backbone or "tiny"] not in ("tiny", "zf")
    from_scratch = args.init_from is None and not pretrained_default
    train_cfg = TrainConfig(
        iterations=args.iterations or 4000, batch_size=args.batch_size or 2,
        lr=args.lr or (0.02 if from_scratch else 0.001 if args.init_from is None else 0.01),
        warmup_iterations=min(100, (args.iterations or 4000) // 10), seed=args.seed or 0,
        checkpoint_every=args.checkpoint_every)
    if train_cfg.batch_size > len(cached):
        raise CLIError(f"--batch-size {train_cfg.batch_size} is more than the {len(cached)} "
                       f"training images.")
    seed_everything(train_cfg.seed)
    resuming = ckpt.exists()
    model, notes = _own_model(args, len(classes), cached, resuming)
    for note in notes:
        print(note)
    device = _pick(args.device)
    epochs = train_cfg.iterations * train_cfg.batch_size / len(cached)
    print(f"training {model.config.backbone} (pretrained: {model.config.pretrained}) for "
          f"{train_cfg.iterations} iterations of {train_cfg.batch_size} images ({epochs:.1f} "
          f"epochs), lr {train_cfg.lr:g}, images resized to {model.config.min_size} px "
          f"(longer side <= {model.config.max_size}), on {device}; checkpoint: {ckpt}"
          + (" (resuming)" if resuming else ""), flush=True)
    start = time.perf_counter()
    history = train_joint(model, cached, train_cfg, checkpoint_path=ckpt, device=device,
                          progress=not args.quiet)
    seconds = time.perf_counter() - start
    record = data_record(train_set)
    if val_set is not None:
        result = _evaluate_dataset(model, val_set, device=device, progress=not args.quiet)
        _print_result(result, "validation")
        record["validation"] = {**data_record(val_set), "mAP": _finite(result["voc"]["mAP"]),
                                "coco_AP": _finite(result["coco"]["AP"])}
        if isinstance(val_set, torch.utils.data.Subset):  # held out of --data
            record["validation"]["indices"] = list(val_set.indices)
    export_model(out, model.cpu(), history=history, data=record)
    print(f"trained in {seconds / 60:.1f} min; model written to {out}", flush=True)
    if not args.keep_checkpoint:
        ckpt.unlink(missing_ok=True)
    return 0


# -- evaluate -----------------------------------------------------------------------------
def _evaluate_dataset(model, dataset, *, device, use_07_metric: bool = True,
                      progress: bool = False) -> dict:
    """Predictions, VOC mAP@0.5 and COCO AP of ``model`` on ``dataset``."""
    import torch

    from frcnn_lite.evaluate import evaluate_coco, evaluate_voc
    from frcnn_lite.own_data import class_names_of
    from frcnn_lite.recipes import predict_dataset

    names = class_names_of(dataset)
    predictions, targets = predict_dataset(model, dataset, device=device, progress=progress)
    for target in targets:
        target.setdefault("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool))
    voc = evaluate_voc(predictions, targets, model.config.num_classes,
                       use_07_metric=use_07_metric, class_names=names)
    coco = evaluate_coco(predictions, targets, model.config.num_classes, class_names=names)
    return {"predictions": predictions, "targets": targets, "voc": voc,
            "coco": coco["stats"], "coco_per_class": coco["per_class"],
            "metric": "VOC07 11-point" if use_07_metric else "area"}


def _print_result(result: dict, what: str) -> None:
    voc = result["voc"]
    print(f"mAP@0.5 ({result['metric']}) on {len(result['targets'])} {what} images: "
          f"{voc['mAP']:.4f}")
    print(f"COCO AP@[.5:.95] {result['coco']['AP']:.4f}, AP50 {result['coco']['AP50']:.4f}, "
          f"AP75 {result['coco']['AP75']:.4f}")
    for name, ap in voc["ap"].items():
        print(f"  {name:12s} AP {ap:.4f}  ({voc['num_gt'][name]} objects)")


def _eval_dataset_for(args, model, record: dict):
    """The data ``evaluate`` scores: --data, else what the model's data record says."""
    from frcnn_lite.datasets import CLASSES, ShapesDataset
    from frcnn_lite.own_data import open_dataset

    classes = record.get("classes")
    if args.data is not None:
        if classes is None and model.config.num_classes == len(CLASSES):
            classes = CLASSES
        return open_dataset(args.data, images=args.images, split=args.split, classes=classes,
                            training=False), "given"
    kind = record.get("kind")
    if kind in ("coco", "voc"):
        val = record.get("validation")
        if not val:
            raise CLIError(f"{args.model} was trained on {record.get('path')} without validation "
                           f"data; pass --data (and --images or --split) to evaluate it.")
        dataset = open_dataset(val["path"], images=val.get("images"), split=val.get("split"),
                               classes=classes, training=False)
        if "indices" in val:
            from frcnn_lite.own_data import _Subset
            dataset = _Subset(dataset, val["indices"])
        return dataset, "validation"
    if model.config.num_classes != len(CLASSES):
        raise CLIError(f"{args.model or 'the model'} records no data and does not have the "
                       f"shapes dataset's {len(CLASSES)} classes; pass --data.")
    if record.get("image_size"):
        size = tuple(record["image_size"])
        if args.image_size is not None:
            size = (args.image_size, args.image_size)
    else:
        side = args.image_size or model.config.min_size
        size = (side, side)
        if args.image_size is None:
            print(f"note: the model records no data; assuming shapes images of "
                  f"{side}x{side} px (its min_size); pass --image-size to choose.")
    seed = record.get("dataset_seed", 0) if args.seed is None else args.seed
    if args.split not in (None, "train", "val", "test"):
        raise CLIError(f"--split {args.split!r}: the shapes data has the splits train, val and "
                       f"test (a VOC split needs --data).")
    dataset = ShapesDataset(args.split or "test", args.num_images or 200, image_size=size,
                            seed=seed)
    dataset.kind = "shapes"
    return dataset, args.split or "test"


def _evaluate(args) -> int:
    from frcnn_lite.checkpoint import read_data
    from frcnn_lite.model import DEMO_MODEL_PATH, load_model
    from frcnn_lite.own_data import DataError, coco_ground_truth, coco_results

    model_path = Path(args.model) if args.model else DEMO_MODEL_PATH
    out = None
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {out} is a file; give a folder for detections.json and "
                           f"metrics.json.")
    device = _pick(args.device)
    model = load_model(model_path, device=device)
    record = read_data(model_path) or {}
    try:
        dataset, what = _eval_dataset_for(args, model, record)
    except DataError as error:
        raise CLIError(str(error)) from error
    if args.num_images is not None and getattr(dataset, "kind", None) != "shapes":
        from frcnn_lite.own_data import _Subset
        dataset = _Subset(dataset, list(range(min(args.num_images, len(dataset)))))
    if len(dataset) == 0:
        raise CLIError("the evaluation data has no images.")
    result = _evaluate_dataset(model, dataset, device=device, use_07_metric=not args.area,
                               progress=not args.quiet)
    _print_result(result, what)
    if out is None:
        print("(pass --out FOLDER to write detections.json, COCO results, and metrics.json)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    results = coco_results(result["predictions"], result["targets"], dataset)
    (out / "detections.json").write_text(json.dumps(results))
    base = dataset.dataset if hasattr(dataset, "indices") else dataset
    if getattr(base, "kind", None) == "coco" and not hasattr(dataset, "indices"):
        ground_truth = Path(base.ann_file).resolve()
    else:
        ground_truth = out / "ground_truth.json"
        ground_truth.write_text(json.dumps(coco_ground_truth(result["targets"], dataset)))
    metrics = {"model": str(model_path), "data": getattr(dataset, "source", what),
               "images": len(result["targets"]), "ground_truth": str(ground_truth),
               "detections": str(out / "detections.json"),
               "voc": {"metric": result["metric"], "iou": 0.5, "mAP": result["voc"]["mAP"],
                       "ap": result["voc"]["ap"], "num_gt": result["voc"]["num_gt"]},
               "coco": result["coco"], "coco_per_class": result["coco_per_class"]}
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1))
    print(f"wrote {out / 'detections.json'} ({len(results)} detections; ground truth "
          f"{ground_truth}) and {out / 'metrics.json'}")
    return 0


def _finite(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- detect ---------------------------------------------------------------------------------
def _images_in(paths: List[str]) -> List[Path]:
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and p.is_file())
            if not inside:
                raise CLIError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise CLIError(f"cannot read image {path}: no such file or folder.")
    return found


def _detect(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from frcnn_lite.book.viz import show_detections
    from frcnn_lite.checkpoint import read_data
    from frcnn_lite.datasets import CLASSES
    from frcnn_lite.model import DEMO_MODEL_PATH, load_model
    from frcnn_lite.real_data import load_image

    images = _images_in(args.images)
    single = len(args.images) == 1 and Path(args.images[0]).is_file()
    out = Path(args.out) if args.out else None
    if single and (out is None or out.suffix.lower() in IMAGE_SUFFIXES):
        png = out or images[0].with_name(f"{images[0].stem}_detections.png")
        if png.is_dir():
            raise CLIError(f"--out {png} is a directory.")
        pngs, json_path = [png], png.with_suffix(".json")
    else:
        if out is None:
            first = Path(args.images[0])
            out = first.parent / f"{first.stem if first.is_file() else first.name}_detections"
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {out} is a file; give a folder for the drawn images.")
        pngs = []
        for path in images:
            name = f"{path.stem}.png"
            while out / name in pngs:  # two inputs with one name (other folders)
                name = f"{path.parent.name}_{name}"
            pngs.append(out / name)
        json_path = out / "detections.json"
    model_path = Path(args.model) if args.model else DEMO_MODEL_PATH
    device = _pick(args.device)
    model = load_model(model_path, device=device)
    record = read_data(model_path) or {}
    names = record.get("classes") or (CLASSES if model.config.num_classes == len(CLASSES)
                                      else [str(k) for k in range(1, model.config.num_classes + 1)])
    decoded = []
    for path in images:  # read them all first: a bad file stops before any output
        try:
            decoded.append(load_image(path))
        except (FileNotFoundError, ValueError) as error:
            raise CLIError(f"cannot read image {path}: {error}") from error
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = []
    from tqdm.auto import tqdm

    for path, png, image in tqdm(list(zip(images, pngs, decoded)), desc="detect",
                                 disable=args.quiet or len(images) < 2):
        prediction = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = prediction["scores"] >= args.score_threshold
        height, width = image.shape[-2:]
        fig, ax = plt.subplots(figsize=(6 * width / max(height, width) + 0.5,
                                        6 * height / max(height, width)))
        show_detections(image, prediction=prediction, class_names=list(names), ax=ax,
                        score_threshold=args.score_threshold,
                        title=f"{int(keep.sum())} detections (score >= {args.score_threshold})")
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        found = [{"box": [round(v, 2) for v in box], "label": names[int(label) - 1],
                  "score": round(float(score), 4)}
                 for box, label, score in zip(prediction["boxes"][keep].tolist(),
                                              prediction["labels"][keep].tolist(),
                                              prediction["scores"][keep].tolist())]
        report.append({"file": str(path), "drawn": str(png), "width": int(width),
                       "height": int(height), "detections": found})
        if single:
            for det in found:
                print(f"{det['label']:10s} {det['score']:.3f}  "
                      + " ".join(f"{v:.1f}" for v in det["box"]))
    json_path.write_text(json.dumps({"model": str(model_path), "classes": list(names),
                                     "score_threshold": args.score_threshold,
                                     "box_format": "x1, y1, x2, y2 (pixels)",
                                     "images": report}, indent=1))
    print(f"wrote {pngs[0] if single else str(out) + '/'} and {json_path} "
          f"({sum(len(r['detections']) for r in report)} detections in {len(report)} images)")
    return 0


# -- the parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from frcnn_lite.recipes import RECIPES

    parser = argparse.ArgumentParser(prog="python -m frcnn_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    device_help = "cpu, cuda or cuda:N (default: cuda if available)"

    p = sub.add_parser(
        "train", help="train a detector on the shapes dataset or on your own data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train Faster R-CNN: on the synthetic shapes (--recipe) or on your own "
                    "COCO / VOC data (--data).\nRerun the same command to resume after an "
                    "interruption.")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="shapes model + schedule preset (demo: the shipped model, ~12 min CPU)")
    p.add_argument("--data", default=None,
                   help="your data: a COCO JSON file, or a VOC folder (Annotations/, "
                        "JPEGImages/, ImageSets/Main/)")
    p.add_argument("--images", default=None,
                   help="COCO: the folder file_name is relative to (default: found beside the "
                        "JSON)")
    p.add_argument("--split", default=None,
                   help="VOC: the image list in ImageSets/Main (default trainval/train/default)")
    p.add_argument("--val-data", default=None, help="validation COCO JSON or VOC folder")
    p.add_argument("--val-images", default=None, help="COCO: the validation images folder")
    p.add_argument("--val-split", default=None, help="VOC: the validation image list")
    p.add_argument("--val-fraction", type=_real(0, 1, low_open=True, high_open=True),
                   default=None, help="hold out this fraction of --data to validate")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default=None, metavar="NAME",
                   help="tiny (CPU, from scratch), vgg16, resnet50, resnet101 (default tiny)")
    p.add_argument("--pretrained", dest="pretrained", action="store_true", default=None,
                   help="ImageNet weights through torchvision (default for vgg16/resnet)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random initial weights")
    p.add_argument("--weights", default=None,
                   help="a downloaded torchvision ImageNet weights file (offline machines)")
    p.add_argument("--init-from", default=None,
                   help="start from a frcnn_lite model (its settings; class layers new)")
    p.add_argument("--min-size", type=_whole(16), default=None,
                   help="resize the shorter image side to this (default 600, the paper's)")
    p.add_argument("--max-size", type=_whole(16), default=None,
                   help="longer side at most (default 1000; = --min-size when that is given)")
    p.add_argument("--scales", type=_sizes, default=None,
                   help="anchor sizes in px, e.g. 32,64,128 (default: from the data's boxes)")
    p.add_argument("--scheme", choices=("joint", "alternating"), default=None,
                   help="training scheme (default: joint; alternating with --recipe only)")
    p.add_argument("--iterations", type=_whole(1), default=None,
                   help="mini-batches (per step); default: the recipe's, 4000 with --data")
    p.add_argument("--batch-size", type=_whole(1), default=None, help="images per mini-batch")
    p.add_argument("--lr", type=_real(0, low_open=True), default=None, help="base learning rate")
    p.add_argument("--seed", type=_whole(0), default=None, help="random seed")
    p.add_argument("--num-images", type=_whole(1), default=None,
                   help="--recipe: training images")
    p.add_argument("--eval-images", type=_whole(0), default=None,
                   help="--recipe: test images evaluated at the end (default 200; 0 = skip)")
    p.add_argument("--out", default="model.pt", help="where to write the trained model")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (folder for alternating); default <out>.ckpt")
    p.add_argument("--checkpoint-every", type=_whole(1), default=200,
                   help="--data: iterations between checkpoints")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the resume checkpoint after a finished run (default: delete it)")
    p.add_argument("--device", type=_device, default=None, help=device_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "evaluate", help="VOC and COCO mAP of a model; COCO results JSON",
        description="VOC mAP@0.5 (11-point VOC 2007 rule by default) and COCO AP of a model. "
                    "Without --data: the data the model records (the shipped model: its shapes "
                    "test images; an own-data model: its validation data).")
    p.add_argument("--model", default=None, help="checkpoint (default: data/demo_model.pt)")
    p.add_argument("--data", default=None, help="a COCO JSON file or a VOC folder")
    p.add_argument("--images", default=None, help="COCO: the images folder")
    p.add_argument("--split", default=None,
                   help="VOC: the image list; shapes: train, val or test (default test)")
    p.add_argument("--num-images", type=_whole(1), default=None,
                   help="shapes: images to draw (default 200); own data: the first N")
    p.add_argument("--image-size", type=_whole(32), default=None,
                   help="shapes: square image side (default: what the model was trained on)")
    p.add_argument("--seed", type=_whole(0), default=None, help="shapes: dataset seed")
    p.add_argument("--area", action="store_true", help="all-point (area) AP instead of 11-point")
    p.add_argument("--out", default=None,
                   help="folder for detections.json (COCO results) and metrics.json")
    p.add_argument("--device", type=_device, default=None, help=device_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser(
        "detect", help="draw a model's detections on images",
        description="Run a model on image files or folders of images; write each image with "
                    "its detections drawn, and one JSON file of all detections.")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders")
    p.add_argument("--model", default=None, help="checkpoint (default: data/demo_model.pt)")
    p.add_argument("--out", default=None,
                   help="one image: the output PNG (default <image>_detections.png, JSON "
                        "beside it); folders: the output folder (default <folder>_detections)")
    p.add_argument("--score-threshold", type=_real(0, 1), default=0.5,
                   help="draw and list detections scoring at least this (default 0.5)")
    p.add_argument("--device", type=_device, default=None, help=device_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_detect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from frcnn_lite.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CLIError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the trainer saved its checkpoint and said how to resume
        print("interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
