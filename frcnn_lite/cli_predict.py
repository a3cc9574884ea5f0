"""``python -m frcnn_lite evaluate`` and ``detect`` (chapter 14)."""

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

from frcnn_lite.cli_args import CLIError, IMAGE_SUFFIXES, _pick


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
