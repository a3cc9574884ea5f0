"""Issue 18: checkpoints are safe to open, never hold NaN, survive kill -9, and say what to do.

Extends tests/test_train.py (atomic write, truncated and foreign files, resume
after Ctrl-C) with: a malicious pickle through every loading path, a kill -9
in the middle of a checkpoint write, stale temporary files, non-finite
weights, and the messages for 0-byte and refused files.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from frcnn_lite.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint,
                                   remove_stale_temporaries, save_checkpoint)
from frcnn_lite.distributed import DistributedTrainer
from frcnn_lite.model import load_demo_model, load_model
from frcnn_lite.train import TrainConfig, Trainer

from test_train import SMALL, small_data, small_model

ROOT = Path(__file__).resolve().parent.parent


# -- a malicious pickle never runs ----------------------------------------------------------
class Payload:
    """Unpickling this calls os.system (it creates the marker file) unless the loader refuses."""

    marker = ""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_files(tmp_path):
    marker = tmp_path / "PWNED"
    Payload.marker = str(marker)
    evil = {"format": "frcnn_lite", "version": 1, "config": SMALL.to_dict(), "model": Payload(),
            "training": {"stage": "joint", "payload": Payload()}}
    files = {"zip": tmp_path / "zip.pt", "legacy": tmp_path / "legacy.pt",
             "pickle": tmp_path / "raw.pkl"}
    torch.save(evil, files["zip"])
    torch.save(evil, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps(evil))
    return marker, files


LOADERS = {
    "read_checkpoint": lambda p: read_checkpoint(p),
    "load_checkpoint": lambda p: load_checkpoint(p, small_model()),
    "load_model": lambda p: load_model(p),
    "load_demo_model": lambda p: load_demo_model(p),
    "Trainer resume": lambda p: Trainer(small_model(), small_data(4), TrainConfig(
        iterations=1, batch_size=2), checkpoint_path=p, progress=False, device="cpu").fit(),
    "DistributedTrainer resume": lambda p: DistributedTrainer(small_model(), small_data(4),
                                                              TrainConfig(iterations=1,
                                                                          batch_size=2),
                                                              checkpoint_path=p, progress=False,
                                                              device="cpu").fit(),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_malicious_pickle_never_runs_through_any_loading_path(tmp_path, loader):
    marker, files = _malicious_files(tmp_path)
    pickle.loads(pickle.dumps(Payload()))  # the payload is live: it does run when unpickled
    assert marker.exists()
    marker.unlink()
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as info:
            LOADERS[loader](path)
        assert not marker.exists(), (loader, kind)
        message = str(info.value)
        assert "weights_only=False" not in message and "will likely succeed" not in message
        if kind != "pickle":  # torch's refusal: say what was refused and what to use instead
            assert "refused to load" in message and "system" in message, message
            assert "Use a checkpoint written by frcnn_lite" in message


# -- kill -9 during a checkpoint write ------------------------------------------------------
KILLED_RUN = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_train import small_data, small_model
    from frcnn_lite.train import TrainConfig, Trainer

    real_save, calls = torch.save, [0]

    def dying_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half written ...
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the power goes out

    torch.save = dying_save
    config = TrainConfig(iterations=6, batch_size=2, lr=0.01, checkpoint_every=2)
    Trainer(small_model(), small_data(8), config, checkpoint_path={path!r}, progress=False,
            device="cpu").fit()
""")


def test_kill_9_during_a_checkpoint_write_leaves_a_loadable_checkpoint_and_resumes_exactly(
        tmp_path, capsys):
    path = tmp_path / "run.pt"
    script = KILLED_RUN.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == -9, result.stderr  # killed in the second save (iteration 4)
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".run.pt.")  # the half-written file
    assert load_checkpoint(path)["training"]["iteration"] == 2  # the old file is intact

    config = TrainConfig(iterations=6, batch_size=2, lr=0.01, checkpoint_every=2)
    reference = small_model()
    ref_log = Trainer(reference, small_data(8), config, progress=False, device="cpu").fit()
    resumed = small_model()
    torch.manual_seed(123)  # other RNG state on purpose: the checkpoint restores it
    trainer = Trainer(resumed, small_data(8), config, checkpoint_path=path, device="cpu",
                      progress=True)
    log = trainer.fit()
    assert "resumed joint from iteration 2 of 6" in capsys.readouterr().out
    assert trainer.resumed_from == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # the .tmp is cleaned up
    for (k, v), (_, w) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
    assert [r["iteration"] for r in log] == [r["iteration"] for r in ref_log] == [1, 2, 3, 4, 5, 6]
    for row, ref_row in zip(log, ref_log):
        assert row["loss"] == pytest.approx(ref_row["loss"], rel=1e-5)


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    (tmp_path / ".m.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pt.x.tmp").write_bytes(b"another file's: left alone")
    save_checkpoint(tmp_path / "m.pt", small_model())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp", "m.pt"]
    assert remove_stale_temporaries(tmp_path / "other.pt") == [tmp_path / ".other.pt.x.tmp"]


# -- never a checkpoint with NaN or inf weights ----------------------------------------------
def test_save_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_model())
    before = path.read_bytes()
    model = small_model()
    with torch.no_grad():
        model.rpn.head.conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not saving .*m\.pt: rpn\.head\.conv\.weight "
                                                 r"hold NaN or inf.*still holds the previous"):
        save_checkpoint(path, model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]


def test_a_diverging_run_keeps_the_last_finite_checkpoint_and_says_so(tmp_path):
    path = tmp_path / "run.pt"
    model = small_model()
    config = TrainConfig(iterations=6, batch_size=2, lr=0.01, checkpoint_every=2)
    trainer = Trainer(model, small_data(8), config, checkpoint_path=path, progress=False,
                      device="cpu")
    step = trainer.optimizer.step

    def exploding_step(*args, **kwargs):  # the 4th update overflows a weight
        step(*args, **kwargs)
        if trainer.iteration == 3:
            with torch.no_grad():
                model.roi_heads.head.cls_score.weight[0, 0] = float("inf")

    trainer.optimizer.step = exploding_step
    with pytest.raises(FloatingPointError, match=r"training diverged in stage 'joint': the "
                                                 r"weights are NaN or inf at iteration 4; the "
                                                 r"checkpoint keeps iteration 2, the last finite"):
        trainer.fit()
    assert load_checkpoint(path)["training"]["iteration"] == 2  # resumable, finite
    resumed = Trainer(small_model(), small_data(8), config, checkpoint_path=path,
                      progress=False, device="cpu")
    assert len(resumed.fit()) == 6 and resumed.resumed_from == 2


def test_a_real_divergence_leaves_only_finite_checkpoints(tmp_path):
    path = tmp_path / "run.pt"
    config = TrainConfig(iterations=30, batch_size=2, lr=1e6, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"diverged") as info:
        Trainer(small_model(), small_data(8), config, checkpoint_path=path, progress=False,
                device="cpu").fit()
    if path.exists():  # whatever was written is finite and can be loaded
        iteration = load_checkpoint(path, small_model())["training"]["iteration"]
        assert f"iteration {iteration}" in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_checkpoint_holding_nan_is_refused_on_reading(tmp_path):
    state = small_model().state_dict()
    state["roi_heads.head.bbox_pred.bias"][0] = float("inf")
    torch.save({"format": "frcnn_lite", "version": 1, "config": SMALL.to_dict(), "model": state},
               tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt holds NaN or inf weights "
                                              r"\(roi_heads\.head\.bbox_pred\.bias\).*earlier"):
        load_model(tmp_path / "nan.pt")


# -- errors a user can act on ---------------------------------------------------------------
def test_empty_checkpoint_says_what_happened(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    for load in (read_checkpoint, load_model, lambda p: Trainer(
            small_model(), small_data(4), TrainConfig(iterations=1, batch_size=2),
            checkpoint_path=p, progress=False, device="cpu").fit()):
        with pytest.raises(CheckpointError, match=r"empty\.pt is empty \(0 bytes\): a write to "
                                                  r"it was cut off.*Delete it"):
            load(tmp_path / "empty.pt")


def test_directory_and_bad_config_in_a_checkpoint(tmp_path):
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"folder\.pt is a directory"):
        load_model(tmp_path / "folder.pt")
    with pytest.raises(IsADirectoryError, match=r"folder\.pt is a directory"):
        save_checkpoint(tmp_path / "folder.pt", small_model())
    payload = {"format": "frcnn_lite", "version": 1, "model": small_model().state_dict(),
               "config": {**SMALL.to_dict(), "rpn_fg_iou": 0.1}}  # edited by hand
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: its model configuration is not "
                                              r"valid.*rpn_bg_iou <= rpn_fg_iou"):
        load_model(tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: its model configuration"):
        load_checkpoint(tmp_path / "edited.pt", small_model())
    torch.save({**payload, "config": SMALL.to_dict(), "model": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"'config' and 'model' must be dicts"):
        read_checkpoint(tmp_path / "list.pt")


def test_a_missing_map_location_device_is_not_called_corrupt(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_model())
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    with pytest.raises(ValueError, match=rf"device '{missing}' is not available here"):
        read_checkpoint(path, map_location=missing)


def test_a_distributed_run_resumes_only_with_the_same_number_of_processes(tmp_path):
    path = tmp_path / "ddp.pt"
    config = TrainConfig(iterations=2, batch_size=2, lr=0.01)
    DistributedTrainer(small_model(), small_data(4), config, checkpoint_path=path,
                       progress=False, device="cpu").fit()
    payload = torch.load(path, weights_only=True)
    assert payload["training"]["data"]["world_size"] == 1
    payload["training"]["data"]["world_size"] = 2  # as if 2 processes had trained it
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\), this run has 1; "
                                              r"resume with --nproc_per_node=2"):
        DistributedTrainer(small_model(), small_data(4), config, checkpoint_path=path,
                           progress=False, device="cpu").fit()
