"""Tests of frcnn_lite.train and frcnn_lite.checkpoint: stages, resume, checkpoints, CLI."""

import math
import os

import pytest
import torch

from frcnn_lite.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from frcnn_lite.model import load_model
from frcnn_lite.datasets import ShapesDataset
from frcnn_lite.model import FasterRCNN, FasterRCNNConfig
from frcnn_lite.train import (STAGES, TrainConfig, Trainer, batch_indices, format_table,
                              parameter_groups, stage_table, train_alternating)

SMALL = FasterRCNNConfig(num_classes=5, min_size=64, max_size=64, scales=(16.0, 32.0),
                         ratios=(1.0,), rpn_batch_size_per_image=32, pre_nms_top_n_train=200,
                         post_nms_top_n_train=50, pre_nms_top_n_test=100, post_nms_top_n_test=20,
                         rpn_min_size=2.0, roi_batch_size_per_image=16, representation_size=32)
FAST = TrainConfig(iterations=2, batch_size=2, lr=0.01, checkpoint_every=100)


def small_model(**changes):
    torch.manual_seed(0)
    return FasterRCNN(SMALL, **changes)


def small_data(n=8):
    return ShapesDataset("train", n, image_size=(64, 64), min_size=8, max_size=40)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_groups(model, before):
    after = model.state_dict()
    groups = {"shared": "backbone.", "rpn": "rpn.", "detector": "roi_heads."}
    return {g for g, prefix in groups.items()
            if any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))}


def test_parameter_groups_partition_the_model():
    model = small_model()
    groups = parameter_groups(model)
    ids = [id(p) for named in groups.values() for _, p in named]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert not groups["fixed"]  # the tiny backbone trains every layer
    rows = stage_table(model)
    assert [r["group"] for r in rows] == ["shared", "rpn", "detector"]
    assert [r["step3"] for r in rows] == [False, True, False]
    assert [r["joint"] for r in rows] == [True, True, True]
    text = format_table(rows)
    assert "shared" in text and "train" in text


@pytest.mark.parametrize("stage", ["joint", "step1", "step2", "step3", "step4"])
def test_each_stage_changes_exactly_the_groups_the_paper_trains(stage):
    model = small_model()
    proposer = small_model() if STAGES[stage].external_proposals else None
    before = snapshot(model)
    Trainer(model, small_data(), FAST, stage=stage, proposer=proposer, progress=False,
            device="cpu").fit()
    assert changed_groups(model, before) == set(STAGES[stage].trains)


def test_batch_indices_shuffle_each_epoch_deterministically():
    first = [batch_indices(i, 10, 3, seed=1) for i in range(3)]
    assert sorted(sum(first, [])) == sorted(set(sum(first, [])))  # no repeats in an epoch
    assert batch_indices(0, 10, 3, seed=1) == first[0]
    assert batch_indices(3, 10, 3, seed=1) != first[0]  # next epoch, new order
    with pytest.raises(ValueError, match="fewer than batch_size"):
        batch_indices(0, 2, 3)


class InterruptOnce(torch.utils.data.Dataset):
    """A dataset that raises KeyboardInterrupt (Ctrl-C) the first time ``at`` is fetched."""

    def __init__(self, data, at_call):
        self.data, self.at_call, self.calls = data, at_call, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.data[i]


def test_resume_after_interruption_mid_epoch_equals_uninterrupted(tmp_path):
    config = TrainConfig(iterations=6, batch_size=2, lr=0.01, checkpoint_every=4,
                         lr_steps=(0.5,), warmup_iterations=2)
    data = small_data(8)  # 4 batches per epoch: the interruption is inside epoch 2
    reference = small_model()
    ref_log = Trainer(reference, data, config, progress=False, device="cpu").fit()

    path = tmp_path / "run.pt"
    model = small_model()
    with pytest.raises(KeyboardInterrupt):  # 2nd image of iteration 5 (0-based 4)
        Trainer(model, InterruptOnce(data, 2 * 4 + 2), config, checkpoint_path=path,
                progress=False, device="cpu").fit()
    state = load_checkpoint(path)["training"]
    assert state["iteration"] == 4 and len(state["history"]) == 4
    resumed = small_model(); torch.manual_seed(99)  # other weights and RNG state on purpose
    log = Trainer(resumed, data, config, checkpoint_path=path, progress=False, device="cpu").fit()
    # Same batches, same random samples, same schedule: equal up to float rounding (oneDNN's
    # convolutions may round differently in the last bit when tensors sit at other addresses).
    for (k, v), (_, w) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
    assert len(log) == len(ref_log) == 6
    for row, ref_row in zip(log, ref_log):
        assert row["iteration"] == ref_row["iteration"] and row["lr"] == ref_row["lr"]
        for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-5), (row["iteration"], key)
    assert [r["lr"] for r in log] == pytest.approx([0.001, 0.0055, 0.01, 0.001, 0.001, 0.001])


def test_non_finite_loss_names_the_loss_and_the_batch():
    model = small_model()
    original = model.losses

    def poisoned(images, targets, **kw):
        losses = original(images, targets, **kw)
        if trainer.iteration == 1:
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return losses

    model.losses = poisoned
    trainer = Trainer(model, small_data(), FAST, progress=False, device="cpu")
    with pytest.raises(FloatingPointError, match=r"loss_box_reg = nan at iteration 1 \(batch index 1"):
        trainer.fit()


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    model = small_model().eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    image = small_data(1)[0][0]
    a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_checkpoint_of_another_architecture_fails_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_model())
    with pytest.raises(CheckpointError, match="different architecture.*num_classes: model 3 vs "
                                              "checkpoint 5"):
        load_checkpoint(path, small_model(num_classes=3))
    with pytest.raises(CheckpointError, match="scales"):
        load_checkpoint(path, small_model(scales=(8.0, 16.0)))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", small_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(small_model().state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a frcnn_lite checkpoint"):
        load_model(bare)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_resume_refuses_another_stage_or_schedule(tmp_path):
    path = tmp_path / "run.pt"
    Trainer(small_model(), small_data(), FAST, checkpoint_path=path, progress=False,
            device="cpu").fit()
    with pytest.raises(CheckpointError, match="from stage 'joint', not 'step1'"):
        Trainer(small_model(), small_data(), FAST, stage="step1", checkpoint_path=path,
                progress=False, device="cpu").fit()
    other = TrainConfig(iterations=3, batch_size=2, lr=0.01, checkpoint_every=100)
    with pytest.raises(CheckpointError, match="same TrainConfig"):
        Trainer(small_model(), small_data(), other, checkpoint_path=path, progress=False,
                device="cpu").fit()


def test_step2_needs_a_proposer_and_unknown_stage():
    with pytest.raises(ValueError, match="proposer"):
        Trainer(small_model(), small_data(), FAST, stage="step2")
    with pytest.raises(ValueError, match="unknown stage"):
        Trainer(small_model(), small_data(), FAST, stage="step5")


def test_alternating_training_end_to_end(tmp_path):
    model = small_model()
    initial = snapshot(model)
    final, logs = train_alternating(model, small_data(), FAST, checkpoint_dir=tmp_path,
                                    progress=False, device="cpu")
    assert list(logs) == ["step1", "step2", "step3", "step4"]
    assert all(len(log) == 2 for log in logs.values())
    assert sorted(os.listdir(tmp_path)) == ["step1.pt", "step2.pt", "step3.pt", "step4.pt"]
    # steps 3-4 keep the step-2 shared convs: the final backbone is step 2's
    step2 = load_checkpoint(tmp_path / "step2.pt")["model"]
    for k, v in final.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, step2[k]), k
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in initial.items())  # input untouched
    outputs = final([small_data(1)[0][0]])
    assert set(outputs[0]) >= {"boxes", "labels", "scores"}
    # a rerun resumes every finished step instead of training again
    again, logs2 = train_alternating(small_model(), small_data(), FAST, checkpoint_dir=tmp_path,
                                     progress=False, device="cpu")
    for k, v in final.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_cli_help_and_smoke_train_evaluate_detect(tmp_path, capsys):
    from PIL import Image

    from frcnn_lite.__main__ import main

    for command in ("train", "evaluate", "detect"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage" in capsys.readouterr().out
    out = tmp_path / "smoke.pt"
    assert main(["train", "--recipe", "smoke", "--out", str(out), "--eval-images", "2",
                 "--quiet", "--device", "cpu"]) == 0
    assert out.exists() and "mAP@0.5" in capsys.readouterr().out
    assert not out.with_suffix(".ckpt").exists()  # finished: the resume state is removed
    alt = tmp_path / "alt.pt"
    assert main(["train", "--recipe", "smoke", "--scheme", "alternating", "--out", str(alt),
                 "--eval-images", "0", "--quiet", "--device", "cpu", "--keep-checkpoint"]) == 0
    assert sorted(p.name for p in alt.with_suffix(".ckpt").iterdir()) == [
        "step1.pt", "step2.pt", "step3.pt", "step4.pt"]
    assert load_model(alt).config == load_model(out).config
    assert main(["evaluate", "--model", str(out), "--num-images", "2"]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    image = ShapesDataset("test", 1)[0][0]
    png = tmp_path / "shapes.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(png)
    assert main(["detect", str(png), "--model", str(out), "--out", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert main(["detect", str(tmp_path / "missing.png"), "--model", str(out)]) == 2
