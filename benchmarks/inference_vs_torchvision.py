"""Inference and training speed, and peak memory: frcnn_lite vs torchvision's FasterRCNN.

    python benchmarks/inference_vs_torchvision.py                 # tiny demo model, CPU
    python benchmarks/inference_vs_torchvision.py --setup vgg16 --train-repeat 0
    python benchmarks/inference_vs_torchvision.py --device cuda --amp

Both detectors live in one process and are built identically
(:func:`frcnn_lite.book.speed.torchvision_twin`: same backbone module and weights,
anchors, input size, proposal counts, NMS thresholds, head width; RoI *max*
pooling in both; ``--roi-align`` gives torchvision its default RoIAlign
instead). Runs alternate between the two (a, b, a, b, ...) after warm-up, and
the median is reported; inference runs under ``torch.inference_mode()``;
``--amp`` (CUDA only) wraps both in ``torch.autocast`` with float16.
Both use the same ``torch.set_num_threads(--threads)`` (default 1). With one
CPU thread the default clock is the process's CPU time (``--clock cpu``),
which on a shared machine counts work, not waiting for a core; ``--clock
wall`` gives elapsed time.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` around the
inference runs; on the CPU (Linux) each library runs in a fresh subprocess and
the number is the process's high-water resident memory (``VmHWM`` in
/proc/self/status, reset just before the runs) minus its resident memory just
before the runs (model built, data made), i.e. what inference added at its
peak. (tracemalloc would miss torch's allocations, and ``ru_maxrss`` inherits
the parent process's peak.)

Prints ms per image, training images per second, peak memory and the ratios
torchvision / frcnn_lite (>= 1 means frcnn_lite is at least as fast).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys

import torch

from _setups import build, run_and_report, targets_for


def autocast(device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    if device.type != "cuda":  # torchvision's CPU roi_pool has no bfloat16 kernel
        raise SystemExit("--amp (float16 autocast) needs --device cuda.")
    return torch.autocast("cuda", dtype=torch.float16)


def models(setup: str, device: torch.device, batch_size: int, roi_align: bool,
           roi_pool_impl: str | None = None):
    from frcnn_lite.book.speed import torchvision_twin

    ours, images = build(setup, device, batch_size)
    if roi_pool_impl:  # the head's RoI op: "ours" (chapter 7) or "torchvision" (C++)
        ours.roi_heads.head.roi_pool_impl = roi_pool_impl
    theirs = torchvision_twin(ours, roi_align=roi_align).to(device).eval()
    return {"frcnn_lite": ours, "torchvision": theirs}, images


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory_child(args) -> None:
    """Subprocess body: one library's extra peak memory during inference, in MB (CPU, Linux).

    Resident memory before the runs (model built, data made) is VmRSS; writing "5" to
    /proc/self/clear_refs resets the high-water mark VmHWM to it, so VmHWM after the runs is
    the peak during inference. (ru_maxrss would not do: Linux carries the parent's peak over
    into a child process.)
    """
    torch.set_num_threads(args.threads)
    nets, images = models(args.setup, torch.device("cpu"), args.batch_size, args.roi_align,
                          args.roi_pool_impl)
    model = nets[args.peak_memory_of]
    nets.clear()
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    with torch.inference_mode(), autocast(torch.device("cpu"), args.amp):
        for _ in range(2):
            model(images)
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_extra_mb": max(peak - before, 0.0), "peak_rss_mb": peak,
                      "rss_before_mb": before}))


def peak_memory(args, device, nets, images) -> dict:
    out = {}
    if device.type == "cuda":
        for name, model in nets.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.inference_mode(), autocast(device, args.amp):
                model(images)
            torch.cuda.synchronize()
            out[name] = {"peak_extra_mb": (torch.cuda.max_memory_allocated() - base) / 2 ** 20,
                         "method": "torch.cuda.max_memory_allocated"}
        return out
    for name in nets:
        cmd = [sys.executable, __file__, "--setup", args.setup, "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--peak-memory-of", name]
        cmd += ["--amp"] * args.amp + ["--roi-align"] * args.roi_align
        cmd += ["--roi-pool-impl", args.roi_pool_impl] if args.roi_pool_impl else []
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True
                                           ).stdout.strip().splitlines()[-1])
        out[name] = {**result, "method": "VmHWM - VmRSS before inference, fresh subprocess"}
    return out


def run(args) -> dict:
    from frcnn_lite.book.speed import compare, machine_info
    from frcnn_lite.utils import pick_device

    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else pick_device()
    clock = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    nets, images = models(args.setup, device, args.batch_size, args.roi_align, args.roi_pool_impl)
    b = len(images)
    with torch.inference_mode(), autocast(device, args.amp):
        infer = compare({n: (lambda m=m: m(images)) for n, m in nets.items()},
                        repeat=args.repeat, warmup=args.warmup, device=device, clock=clock)
    result = {"setup": args.setup, "batch_size": b, "amp": args.amp, "roi_align": args.roi_align,
              "roi_pool_impl": nets["frcnn_lite"].roi_heads.head.roi_pool_impl, "clock": clock,
              "config": nets["frcnn_lite"].config.to_dict(), "machine": machine_info(device),
              "inference_ms_per_image": {n: t / b for n, t in infer.items()},
              "inference_ratio": infer["torchvision"] / infer["frcnn_lite"]}
    if args.train_repeat:
        targets = targets_for(images, nets["frcnn_lite"].config.num_classes, device)
        optimizers = {n: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)
                      for n, m in nets.items()}

        def step(name):
            model = nets[name].train()
            with autocast(device, args.amp):
                losses = model(images, targets)
            optimizers[name].zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizers[name].step()

        train = compare({n: (lambda n=n: step(n)) for n in nets}, repeat=args.train_repeat,
                        warmup=args.warmup, device=device, clock=clock)
        for model in nets.values():
            model.eval()
        result["train_images_per_s"] = {n: b * 1e3 / t for n, t in train.items()}
        result["train_ratio"] = train["torchvision"] / train["frcnn_lite"]
    if args.memory:
        result["peak_memory"] = peak_memory(args, device, nets, images)
    return result


def report(r: dict) -> None:
    m = r["machine"]
    print(f"setup {r['setup']}, batch {r['batch_size']}, input {r['config']['min_size']}-"
          f"{r['config']['max_size']} px, device {m['device']} ({m.get('gpu', m['cpu'])}), "
          f"{m['torch_threads']} thread(s), clock {r['clock']}, amp {r['amp']}, our RoI op "
          f"{r['roi_pool_impl']}, torchvision's {'RoIAlign' if r['roi_align'] else 'RoI max pool'}")
    ms = r["inference_ms_per_image"]
    print(f"  inference ms/image: frcnn_lite {ms['frcnn_lite']:.1f}, torchvision "
          f"{ms['torchvision']:.1f}, ratio torchvision/frcnn_lite {r['inference_ratio']:.2f}")
    if "train_images_per_s" in r:
        ips = r["train_images_per_s"]
        print(f"  training images/s: frcnn_lite {ips['frcnn_lite']:.2f}, torchvision "
              f"{ips['torchvision']:.2f}, ratio frcnn_lite/torchvision {r['train_ratio']:.2f}")
    if "peak_memory" in r:
        pm = r["peak_memory"]
        print(f"  peak extra memory MB: frcnn_lite {pm['frcnn_lite']['peak_extra_mb']:.0f}, "
              f"torchvision {pm['torchvision']['peak_extra_mb']:.0f} "
              f"({pm['frcnn_lite']['method']})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="tiny", choices=["tiny", "vgg16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10, help="timed runs per library (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--train-repeat", type=int, default=5, help="timed training steps; 0 skips")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both libraries")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="default: process CPU time with 1 CPU thread (robust on a shared "
                        "machine), else wall time")
    p.add_argument("--roi-pool-impl", choices=["ours", "torchvision"], default=None,
                   help="override frcnn_lite's RoI op (default: the model config's)")
    p.add_argument("--amp", action="store_true", help="mixed precision, float16 (CUDA only)")
    p.add_argument("--roi-align", action="store_true", help="torchvision with RoIAlign instead")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--peak-memory-of", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.peak_memory_of:
        return peak_memory_child(args)
    run_and_report(args, run, report)


if __name__ == "__main__":
    main()
