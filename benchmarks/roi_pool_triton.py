"""The optional Triton RoI max-pool kernel vs torchvision's CUDA op and ours (CUDA only).

    python benchmarks/roi_pool_triton.py --json out.json

The cases of ``roi_pool_vs_torchvision.py`` (the demo model's map with its test
proposals, VGG-16's 512 x 38 x 63 map with 300 RoIs) plus the training case of
the tiny model: 8 images x 128 sampled RoIs. Checks values and gradients equal
to torchvision's first, then times forward and forward + backward (median ms,
synchronised wall clock); ratios are torchvision / other (> 1: faster than
torchvision). Without a GPU it says so and exits (Triton's CPU interpreter is
for tests, not timing).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torchvision

from roi_pool_vs_torchvision import cases


def training_case(device):
    from frcnn_lite.model import load_demo_model

    demo = load_demo_model()
    c = demo.config
    h, w = demo.backbone.feature_size((c.min_size, c.max_size))
    g = torch.Generator().manual_seed(1)
    features = torch.randn(8, demo.backbone.out_channels, h, w, generator=g)
    xy = torch.rand(8 * 128, 2, generator=g) * torch.tensor([c.max_size, c.min_size]) * 0.8
    wh = 8 + torch.rand(8 * 128, 2, generator=g) * 120
    index = torch.arange(8).repeat_interleave(128)[:, None].float()
    return "tiny_train_8x128", features.to(device), torch.cat([index, xy, xy + wh], 1).to(device)


def run(args) -> dict:
    from frcnn_lite.book.speed import compare, machine_info
    from frcnn_lite.roi_pool import roi_pool
    from frcnn_lite.roi_pool_triton import roi_pool_triton

    device = torch.device("cuda")
    impls = {"torchvision": lambda f, r: torchvision.ops.roi_pool(f, r, 7, 1 / 16),
             "frcnn_lite": lambda f, r: roi_pool(f, r, 7, 1 / 16, validate=False),
             "triton": lambda f, r: roi_pool_triton(f, r, 7, 1 / 16)}
    result = {"machine": machine_info(device), "clock": "wall", "cases": {}}
    for name, features, rois in [*cases(device), training_case(device)]:
        leaf = features.clone().requires_grad_()
        outs = {k: fn(leaf, rois) for k, fn in impls.items()}
        grads = {k: torch.autograd.grad(o.square().sum(), leaf)[0] for k, o in outs.items()}
        equal = {k: bool(torch.equal(outs[k], outs["torchvision"])
                         and torch.allclose(grads[k], grads["torchvision"])) for k in impls}
        with torch.inference_mode():
            fwd = compare({k: (lambda fn=fn: fn(features, rois)) for k, fn in impls.items()},
                          repeat=args.repeat, warmup=2, device=device, clock="wall")
        both = compare({k: (lambda fn=fn: fn(leaf, rois).sum().backward()) for k, fn in impls.items()},
                       repeat=args.repeat, warmup=2, device=device, clock="wall")
        result["cases"][name] = {
            "features": list(features.shape), "rois": rois.shape[0], "equal": equal,
            "forward_ms": fwd, "forward_backward_ms": both,
            "forward_ratio": {k: fwd["torchvision"] / fwd[k] for k in impls},
            "forward_backward_ratio": {k: both["torchvision"] / both[k] for k in impls}}
    return result


def report(r: dict) -> None:
    print(f"{r['machine'].get('gpu')}: median ms; ratio = torchvision / impl (> 1: faster)")
    for name, c in r["cases"].items():
        print(f"{name}: features {tuple(c['features'])}, {c['rois']} RoIs, equal {c['equal']}")
        for k in c["forward_ms"]:
            print(f"  {k:12s} forward {c['forward_ms'][k]:8.3f} (ratio {c['forward_ratio'][k]:5.2f})"
                  f"  fwd+bwd {c['forward_backward_ms'][k]:8.3f} "
                  f"(ratio {c['forward_backward_ratio'][k]:5.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("roi_pool_triton.py needs a CUDA GPU; nothing measured.")
        sys.exit(0)
    result = run(args)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
