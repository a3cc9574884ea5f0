"""``python -m frcnn_lite train``: a named recipe, or your own COCO/VOC data (chapter 14)."""

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

from frcnn_lite.cli_args import BACKBONES, CLIError, _output_file, _pick
from frcnn_lite.cli_predict import _evaluate_dataset, _finite, _print_result


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
