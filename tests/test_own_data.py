"""Own data end to end: labelling-tool exports, checks before training, the CLI, COCO files."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch

from frcnn_lite.cli import main
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.book.tool_export import TOOL_CATEGORY_IDS, write_tool_export
from frcnn_lite.own_data import (DataError, check_dataset, coco_ground_truth, coco_results,
                                 data_record, holdout, open_dataset, suggest_scales)

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset("train", 6, image_size=(SIZE, SIZE), min_size=10, seed=5)


@pytest.fixture
def no_training(monkeypatch):
    import frcnn_lite.train

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(frcnn_lite.train, "train_joint", refuse)


def test_tool_exports_read_back_as_the_generator_drew_them(shapes, tmp_path):
    ann = write_tool_export(shapes, tmp_path / "coco", "coco")
    voc = write_tool_export(shapes, tmp_path / "voc", "voc")
    assert ann.name == "instances_train.json"  # CVAT layout: images in ../images/train/
    coco_train, voc_train = open_dataset(ann), open_dataset(voc)
    coco_eval = open_dataset(ann, training=False)
    voc_eval = open_dataset(voc, training=False)
    # classes come from the data: COCO in category-id order (0-based, gaps), VOC sorted
    by_id = sorted(zip(TOOL_CATEGORY_IDS, shapes.classes))
    assert coco_train.classes == tuple(name for _, name in by_id)
    assert data_record(coco_train)["category_ids"] == sorted(TOOL_CATEGORY_IDS)
    assert voc_train.classes == tuple(sorted(shapes.classes))
    assert len(coco_eval) == len(voc_eval) == len(shapes) + 2  # two images without objects
    for i in range(len(shapes)):
        _, want = shapes[i]
        names = [shapes.classes[k - 1] for k in want["labels"].tolist()]
        for data in (coco_eval, voc_eval):
            _, got = data[i]
            assert torch.equal(got["boxes"], want["boxes"]), (data, i)  # 1-based VOC undone
            assert [data.classes[k - 1] for k in got["labels"].tolist()] == names
    for data in (coco_eval, voc_eval):
        assert [len(data[i][1]["boxes"]) for i in (-1, -2)] == [0, 0]
        assert data[0][1]["difficult"].tolist()[0] is True  # the crowd / difficult box
    # training leaves the flagged box out, evaluation keeps it flagged (and ignores it)
    for train, full in ((coco_train, coco_eval), (voc_train, voc_eval)):
        assert torch.equal(train[0][1]["boxes"], full[0][1]["boxes"][1:])
        assert check_dataset(train)["objects"] == check_dataset(full, "validation")["objects"]


def test_results_and_ground_truth_are_coco_files_pycocotools_scores(shapes, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from frcnn_lite.evaluate import evaluate_coco

    voc = open_dataset(write_tool_export(shapes, tmp_path, "voc"), training=False)
    targets = [voc[i][1] for i in range(len(voc))]
    generator = torch.Generator().manual_seed(0)
    predictions = []
    for t in targets:  # the ground truth jittered, plus one false positive per image
        boxes = torch.cat([t["boxes"] + torch.randn(t["boxes"].shape, generator=generator),
                           torch.tensor([[1.0, 1.0, 20.0, 20.0]])])
        predictions.append({"boxes": boxes, "labels": torch.cat([t["labels"],
                                                                 torch.tensor([1])]),
                            "scores": torch.rand(len(boxes), generator=generator)})
    ours = evaluate_coco(predictions, targets, len(voc.classes), class_names=voc.classes)
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(json.dumps(coco_ground_truth(targets, voc)))
    dt_file.write_text(json.dumps(coco_results(predictions, targets, voc)))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluation = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(ours["stats"]["AP"], abs=1e-12)
    assert evaluation.stats[1] == pytest.approx(ours["stats"]["AP50"], abs=1e-12)
    assert 0.2 < ours["stats"]["AP"] < 1.0  # jitter and false positives cost something


def test_holdout_and_suggested_scales(shapes, tmp_path):
    data = open_dataset(write_tool_export(shapes, tmp_path, "coco"))
    train, val = holdout(data, 0.25, seed=1)
    assert sorted(train.indices + val.indices) == list(range(len(data)))
    assert len(val) == 2 and val.classes == data.classes
    with pytest.raises(DataError, match="--val-data"):
        holdout(data, 0.01)
    scales = suggest_scales(data, 128, 128)  # boxes of 10-51 px, doubled by the resize
    assert scales[0] <= 20 and scales[-1] >= 100 and all(b == 2 * a for a, b in
                                                         zip(scales, scales[1:]))


def _break(kind, root, ann):
    """Each malformed input, as a labelling mistake would make it; returns what to find."""
    if kind == "coco-missing-image":
        (root / "images" / "train" / "train_0003.png").unlink()
        return ["train_0003.png", "instances_train.json"]
    data = json.loads(ann.read_text()) if ann.suffix == ".json" else None
    if kind == "coco-box-outside":
        data["annotations"][4]["bbox"] = [50.0, 10.0, 30.0, 10.0]  # to x = 80 > 64
        ann.write_text(json.dumps(data))
        return ["instances_train.json", f"annotation {data['annotations'][4]['id']}",
                "outside"]
    if kind == "coco-unknown-category":
        data["annotations"][2]["category_id"] = 77
        ann.write_text(json.dumps(data))
        return ["instances_train.json", f"annotation {data['annotations'][2]['id']}", "77"]
    if kind == "coco-empty-file":
        ann.write_text("")
        return ["instances_train.json", "empty"]
    if kind == "coco-no-annotations":
        data["annotations"] = []
        ann.write_text(json.dumps(data))
        return ["instances_train.json", "no annotations"]
    xml = root / "Annotations" / "train_0002.xml"
    if kind == "voc-missing-image":
        (root / "JPEGImages" / "train_0002.png").unlink()
        return ["train_0002.png", "train_0002.xml"]
    if kind == "voc-box-outside":
        tree = ET.parse(xml)
        tree.getroot().find("object/bndbox/xmax").text = str(SIZE + 9)
        tree.write(xml)
        return ["train_0002.xml", "object 0", "outside"]
    if kind == "voc-empty-file":
        xml.write_text("")
        return ["train_0002.xml", "empty"]
    if kind == "voc-empty-split":
        (root / "ImageSets" / "Main" / "train.txt").write_text("\n")
        return ["train.txt", "no images"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "coco-missing-image", "coco-box-outside", "coco-unknown-category", "coco-empty-file",
    "coco-no-annotations", "voc-missing-image", "voc-box-outside", "voc-empty-file",
    "voc-empty-split"])
def test_malformed_data_stops_before_training_naming_file_and_object(kind, shapes, tmp_path,
                                                                    capsys, no_training):
    fmt = kind.split("-")[0]
    ann = write_tool_export(shapes, tmp_path / fmt, fmt)
    expected = _break(kind, tmp_path / fmt, ann)
    out = tmp_path / "model.pt"
    assert main(["train", "--data", str(ann), "--min-size", str(SIZE), "--iterations", "2",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists() and not out.with_suffix(".ckpt").exists()


def _cli(*args, cwd):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "frcnn_lite", *args, "--quiet"], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_train_evaluate_detect_from_the_command_line(fmt, shapes, tmp_path):
    """The acceptance test: a tool's export -> train -> evaluate -> detect, as subprocesses;
    pycocotools scores the results file `evaluate` writes to the AP it prints."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = write_tool_export(shapes, tmp_path / "export", fmt)
    model = tmp_path / "runs" / "mine.pt"
    split = ["--split", "train"] if fmt == "voc" else []
    printed = _cli("train", "--data", str(data), *split, "--val-fraction", "0.25",
                   "--min-size", str(SIZE), "--iterations", "3", "--batch-size", "2",
                   "--checkpoint-every", "2", "--out", str(model), cwd=tmp_path)
    assert "validation data: 2 images" in printed and model.is_file()
    assert not model.with_suffix(".ckpt").exists()
    printed = _cli("evaluate", "--model", str(model), "--data", str(data), *split,
                   "--out", str(tmp_path / "eval"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == len(shapes) + 2
    ground_truth = Path(metrics["ground_truth"])
    assert (ground_truth == data.resolve()) == (fmt == "coco")  # the tool's own file for COCO
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ground_truth))
        results = gt.loadRes(str(tmp_path / "eval" / "detections.json"))
        evaluation = COCOeval(gt, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap = float(re.search(r"COCO AP@\[\.5:\.95\] ([0-9.]+)", printed).group(1))
    assert evaluation.stats[0] == pytest.approx(metrics["coco"]["AP"], abs=1e-9)
    assert evaluation.stats[1] == pytest.approx(metrics["coco"]["AP50"], abs=1e-9)
    assert round(evaluation.stats[0], 4) == pytest.approx(ap, abs=1e-4)
    assert len(results.dataset["annotations"]) > 0
    if fmt == "coco":  # the model knows its data: evaluate without --data scores its held-out
        printed = _cli("evaluate", "--model", str(model), cwd=tmp_path)  # images
        assert "on 2 validation images" in printed
    # detect: a folder of images -> drawn images + one JSON, class names from the data
    folder = (tmp_path / "export" / ("images/train" if fmt == "coco" else "JPEGImages"))
    _cli("detect", str(folder), "--model", str(model), "--score-threshold", "0.0",
         "--out", str(tmp_path / "drawn"), cwd=tmp_path)
    report = json.loads((tmp_path / "drawn" / "detections.json").read_text())
    assert len(report["images"]) == len(shapes) + 2
    assert sorted(report["classes"]) == sorted(shapes.classes)
    assert all(Path(r["drawn"]).stat().st_size > 1000 for r in report["images"])
    labels = {d["label"] for r in report["images"] for d in r["detections"]}
    assert labels <= set(shapes.classes)


def test_interrupted_own_data_run_resumes_to_the_same_model(shapes, tmp_path, monkeypatch,
                                                            capsys):
    import frcnn_lite.train
    from frcnn_lite.checkpoint import read_checkpoint

    ann = write_tool_export(shapes, tmp_path / "export", "coco")
    args = ["--data", str(ann), "--min-size", str(SIZE), "--iterations", "4",
            "--batch-size", "2", "--checkpoint-every", "1", "--quiet", "--device", "cpu"]
    assert main(["train", *args, "--out", str(tmp_path / "straight.pt")]) == 0
    step = frcnn_lite.train.Trainer.step

    def interrupted(self, indices):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return step(self, indices)

    out = tmp_path / "resumed.pt"
    monkeypatch.setattr(frcnn_lite.train.Trainer, "step", interrupted)
    assert main(["train", *args, "--out", str(out)]) == 130
    assert out.with_suffix(".ckpt").is_file() and not out.exists()
    assert "run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(frcnn_lite.train.Trainer, "step", step)
    assert main(["train", *args, "--out", str(out)]) == 0
    assert "(resuming)" in capsys.readouterr().out
    straight = read_checkpoint(tmp_path / "straight.pt")["model"]
    resumed = read_checkpoint(out)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
