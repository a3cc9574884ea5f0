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

from frcnn_lite.cli_args import BACKBONES, CLIError, _device, _real, _sizes, _whole
from frcnn_lite.cli_predict import _detect, _evaluate
from frcnn_lite.cli_train import _train


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
