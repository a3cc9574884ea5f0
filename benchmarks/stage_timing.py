"""Where the time goes: per-stage times of frcnn_lite laid out like the paper's Table V.

    python benchmarks/stage_timing.py                      # tiny demo model and VGG-16 600x1000
    python benchmarks/stage_timing.py --setups tiny --clock wall --threads 2
    python benchmarks/stage_timing.py --device cuda        # GPU: wall clock, synchronised

Stages (:data:`frcnn_lite.book.speed.STAGES`): input transform, backbone, RPN head,
proposal layer, RoI pooling, fc head, post-processing; grouped as the paper's
Table V columns conv / proposal / region-wise (VGG-16 on a K40: 141 / 10 / 47
/ 198 ms). ``tiny`` is the shipped demo model at the input size of its
``model.config``; ``vgg16`` is the paper's test configuration at 600 x 1000
with random weights (see ``benchmarks/_setups.py``: weights do not change the
time, except that every one of the 300 x 20 boxes passes the score threshold).

Also measures how the tiny model's time grows with the input size and with the
number of proposals (``--scaling``), for chapter 13's plots.
"""

from __future__ import annotations

import argparse

import torch

from _setups import build, run_and_report


def scaling(model, images, *, repeat: int, clock: str) -> dict:
    """Stage times vs input size (shorter side) and vs proposals kept after NMS."""
    import dataclasses

    from frcnn_lite.model import FasterRCNN
    from frcnn_lite.book.speed import stage_times

    out = {"image_size": [], "proposals": []}
    base = model.config.min_size
    for factor in (0.5, 1.0, 1.5, 2.0, 3.0):
        size = int(round(base * factor / 16)) * 16
        resized = FasterRCNN(dataclasses.replace(model.config, min_size=size,
                                                 max_size=max(size, model.config.max_size * size
                                                              // base)))
        resized.load_state_dict(model.state_dict())
        resized.to(next(model.parameters()).device).eval()
        out["image_size"].append({"min_size": size, **stage_times(resized, images, repeat=repeat,
                                                                   clock=clock)})
    pre, post = model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_test
    for n in (10, 30, 100, 300, 1000):
        model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_test = max(pre, 2 * n), n
        with torch.inference_mode():
            batch, sizes, _ = model.prepare(images)
            kept = sum(len(p) for p in model.rpn(model.backbone(batch), sizes)[0]) / len(images)
        out["proposals"].append({"post_nms_top_n": n, "kept": kept,
                                 **stage_times(model, images, repeat=repeat, clock=clock)})
    model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_test = pre, post
    return out


def run(args) -> dict:
    from frcnn_lite.book.speed import PAPER_TABLE_V, machine_info, stage_times, table_v
    from frcnn_lite.utils import pick_device

    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else pick_device()
    clock = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    result = {"machine": machine_info(device), "clock": clock, "paper_table_v": PAPER_TABLE_V,
              "setups": {}}
    for name in args.setups:
        model, images = build(name, device, 1)
        repeat = args.repeat if name == "tiny" else args.repeat_vgg
        stages = stage_times(model, images, repeat=repeat, warmup=1, clock=clock)
        c = model.config
        result["setups"][name] = {
            "input": f"{c.min_size}-{c.max_size}", "image": list(images[0].shape[-2:]),
            "feature_map": list(model.backbone.feature_size(tuple(model.prepare(images)[0].shape[-2:]))),
            "pre_nms_top_n_test": c.pre_nms_top_n_test, "post_nms_top_n_test": c.post_nms_top_n_test,
            "roi_pool_impl": c.roi_pool_impl, "repeat": repeat, "stages_ms": stages,
            "table_v_ms": table_v(stages)}
        if name == "tiny" and args.scaling:
            result["scaling_tiny"] = scaling(model, images, repeat=args.repeat, clock=clock)
        del model
    return result


def report(r: dict) -> None:
    m = r["machine"]
    print(f"device {m['device']} ({m.get('gpu', m['cpu'])}), {m['torch_threads']} thread(s), "
          f"clock {r['clock']}; ms per image, median")
    print(f"{'':24s}{'conv':>8s}{'proposal':>10s}{'region':>8s}{'sum':>8s}{'total':>8s}")
    for name, s in r["setups"].items():
        t = s["table_v_ms"]
        label = f"{name} {s['input']}"
        print(f"{label:24s}{t['conv']:8.1f}{t['proposal']:10.1f}{t['region-wise']:8.1f}"
              f"{t['sum']:8.1f}{t['total']:8.1f}")
        print("    " + ", ".join(f"{k} {v:.1f}" for k, v in s["stages_ms"].items()))
    for name, t in r["paper_table_v"].items():
        label = f"paper {name} (K40)"
        print(f"{label:24s}{t['conv']:8.1f}{t['proposal']:10.1f}{t['region-wise']:8.1f}"
              f"{t['total']:8.1f}{t['total']:8.1f}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", nargs="+", default=["tiny", "vgg16"], choices=["tiny", "vgg16"])
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="default: cpu time with 1 CPU thread, else wall")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--repeat-vgg", type=int, default=3)
    p.add_argument("--no-scaling", dest="scaling", action="store_false")
    p.add_argument("--json", default=None)
    return p


def main() -> None:
    args = parser().parse_args()
    run_and_report(args, run, report)


if __name__ == "__main__":
    main()
