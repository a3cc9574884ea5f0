"""Our from-scratch RoI max pooling (chapter 7) vs ``torchvision.ops.roi_pool`` (its C++ op).

    python benchmarks/roi_pool_vs_torchvision.py
    python benchmarks/roi_pool_vs_torchvision.py --device cuda --clock wall

Two maps: the tiny backbone's on the demo model's input size (from its
``model.config``) with that model's test proposal count, and VGG-16's conv5_3
map of a 600 x 1000 image (512 x 38 x 63) with 300 RoIs, as the paper's
test. RoIs are random boxes 16-300 px (seeded). Forward, and forward +
backward (training). Checks that values and gradients are equal first.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torchvision

from _setups import run_and_report


def cases(device):
    from frcnn_lite.model import load_demo_model

    demo = load_demo_model()
    c = demo.config
    tiny_map = (demo.backbone.out_channels, *demo.backbone.feature_size((c.min_size, c.max_size)))
    g = torch.Generator().manual_seed(0)
    for name, (ch, h, w), image, n in (("tiny", tiny_map, (c.min_size, c.max_size), c.post_nms_top_n_test),
                                         ("vgg16", (512, 38, 63), (600, 1000), 300)):
        features = torch.randn(1, ch, h, w, generator=g)
        xy = torch.rand(n, 2, generator=g) * torch.tensor([image[1], image[0]], dtype=torch.float)
        wh = 16 + torch.rand(n, 2, generator=g) * (min(300, min(image)) - 16)
        rois = torch.cat([torch.zeros(n, 1), xy, xy + wh], dim=1)
        yield name, features.to(device), rois.to(device)


def run(args) -> dict:
    from frcnn_lite.roi_pool import roi_pool
    from frcnn_lite.book.speed import compare, machine_info
    from frcnn_lite.utils import pick_device

    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else pick_device()
    clock = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    impls = {"frcnn_lite": lambda f, r: roi_pool(f, r, 7, 1 / 16, validate=False),
             "torchvision": lambda f, r: torchvision.ops.roi_pool(f, r, 7, 1 / 16)}
    result = {"machine": machine_info(device), "clock": clock, "cases": {}}
    for name, features, rois in cases(device):
        leaf = features.clone().requires_grad_()
        outs = {k: fn(leaf, rois) for k, fn in impls.items()}
        grads = {k: torch.autograd.grad(o.square().sum(), leaf)[0] for k, o in outs.items()}
        equal = bool(torch.equal(outs["frcnn_lite"], outs["torchvision"])
                     and torch.allclose(grads["frcnn_lite"], grads["torchvision"]))
        with torch.inference_mode():
            fwd = compare({k: (lambda fn=fn: fn(features, rois)) for k, fn in impls.items()},
                          repeat=args.repeat, warmup=1, device=device, clock=clock)
        both = compare({k: (lambda fn=fn: fn(leaf, rois).sum().backward()) for k, fn in impls.items()},
                       repeat=args.repeat, warmup=1, device=device, clock=clock)
        result["cases"][name] = {"features": list(features.shape), "rois": rois.shape[0],
                                 "equal": equal, "forward_ms": fwd, "forward_backward_ms": both,
                                 "forward_ratio": fwd["torchvision"] / fwd["frcnn_lite"],
                                 "forward_backward_ratio": both["torchvision"] / both["frcnn_lite"]}
    return result


def report(r: dict) -> None:
    m = r["machine"]
    print(f"device {m['device']} ({m.get('gpu', m['cpu'])}), {m['torch_threads']} thread(s), "
          f"clock {r['clock']}; median ms; ratio = torchvision / frcnn_lite (> 1: ours faster)")
    for name, c in r["cases"].items():
        f, b = c["forward_ms"], c["forward_backward_ms"]
        print(f"{name:6s} features {tuple(c['features'])}, {c['rois']} RoIs, equal {c['equal']}: "
              f"forward {f['frcnn_lite']:.2f} vs {f['torchvision']:.2f} (ratio {c['forward_ratio']:.2f}), "
              f"fwd+bwd {b['frcnn_lite']:.2f} vs {b['torchvision']:.2f} "
              f"(ratio {c['forward_backward_ratio']:.2f})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default=None)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--json", default=None)
    return p


def main() -> None:
    args = parser().parse_args()
    run_and_report(args, run, report)


if __name__ == "__main__":
    main()
