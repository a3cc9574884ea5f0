"""Every speed benchmark in one go, written to ``benchmarks/results/<machine>.json``.

    python benchmarks/run_all.py                  # CPU, 1 thread, process CPU time (~10 min)
    python benchmarks/run_all.py --device cuda    # a GPU: wall time, synchronised; adds --amp runs
    python benchmarks/run_all.py --quick          # fewer repeats, no VGG-16 (~2 min)

Runs, in one process per script section: the per-stage times (Table V) of the
tiny demo model and of VGG-16 at 600 x 1000, with the tiny model's scaling in
input size and proposals (``stage_timing.py``); our RoI pooling vs
torchvision's (``roi_pool_vs_torchvision.py``); inference/training speed and
peak memory vs torchvision's FasterRCNN built identically
(``inference_vs_torchvision.py``), with our from-scratch RoI op and with
torchvision's. Chapter 13 reads the JSON. The accuracy at an equal training
budget is ``train_vs_torchvision.py`` (minutes; run it separately).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

import inference_vs_torchvision
import roi_pool_vs_torchvision
import stage_timing

RESULTS = Path(__file__).resolve().parent / "results"


def machine_slug(info: dict) -> str:
    name = info.get("gpu") or f"{info['cpu']} {info['cpu_count']}cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", default=None, help="default: benchmarks/results/<machine>.json")
    args = p.parse_args()
    device = torch.device(args.device) if args.device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    common = ["--device", str(device), "--threads", str(args.threads)]
    setups = ["tiny"] if args.quick else ["tiny", "vgg16"]
    repeat = "3" if args.quick else "7"
    start = time.time()
    out = {"note": args.note, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    out["stage_timing"] = stage_timing.run(stage_timing.parser().parse_args(
        common + ["--setups", *setups, "--repeat", repeat, "--repeat-vgg", "3"]))
    stage_timing.report(out["stage_timing"])
    out["roi_pool"] = roi_pool_vs_torchvision.run(roi_pool_vs_torchvision.parser().parse_args(
        common + ["--repeat", repeat]))
    roi_pool_vs_torchvision.report(out["roi_pool"])
    runs = [("tiny", []), ("tiny", ["--roi-pool-impl", "torchvision"])]
    if not args.quick:
        runs.append(("vgg16", ["--train-repeat", "0", "--repeat", "3", "--warmup", "1",
                               "--roi-pool-impl", "torchvision"]))
    if device.type == "cuda":
        runs += [(s, a + ["--amp"]) for s, a in runs]
    out["vs_torchvision"] = []
    for setup, extra in runs:
        r = inference_vs_torchvision.run(inference_vs_torchvision.parser().parse_args(
            common + ["--setup", setup, "--repeat", "10" if setup == "tiny" else "3", *extra]))
        inference_vs_torchvision.report(r)
        out["vs_torchvision"].append(r)
    out["machine"] = out["stage_timing"]["machine"]
    out["seconds"] = time.time() - start
    path = Path(args.out) if args.out else RESULTS / f"{machine_slug(out['machine'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
