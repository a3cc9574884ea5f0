"""Training stages of §3.2: which parameter groups each stage trains, and freezing them.

A Faster R-CNN's parameters fall into three groups (plus "fixed" backbone
layers no stage trains, e.g. VGG-16's conv1-2 when pretrained):

- ``"shared"``: the backbone's shareable conv layers (§3.1), ``backbone.shared_layers()``;
- ``"rpn"``: the layers unique to the RPN (3x3 conv, 1x1 cls and reg convs);
- ``"detector"``: the layers unique to Fast R-CNN (fc6, fc7, cls_score, bbox_pred).

:data:`STAGES` lists approximate joint training (``"joint"``) and the four steps
of the alternating scheme (``"step1"`` .. ``"step4"``); :func:`apply_stage`
freezes everything a stage does not train; :func:`stage_table` shows it.

Built in chapter 9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

from torch import nn

GROUPS = ("shared", "rpn", "detector")


@dataclass(frozen=True)
class Stage:
    """A training stage: the parameter groups it updates and the losses it minimises."""

    name: str
    trains: Tuple[str, ...]  # subset of GROUPS
    rpn_loss: bool
    detector_loss: bool
    external_proposals: bool  # step 2: proposals from another (the step-1) network
    paper: str


STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("joint", ("shared", "rpn", "detector"), True, True, False,
          "§3.2 (ii) approximate joint training: all losses summed"),
    Stage("step1", ("shared", "rpn"), True, False, False,
          "§3.2 4-step training, step 1: train the RPN from the initial backbone"),
    Stage("step2", ("shared", "detector"), False, True, True,
          "step 2: train a separate Fast R-CNN on step-1 proposals"),
    Stage("step3", ("rpn",), True, False, False,
          "step 3: RPN on the detector's convs, shared convs frozen"),
    Stage("step4", ("detector",), False, True, False,
          "step 4: fine-tune the detector's own layers, shared convs frozen"),
)}


def _stage(stage: Union[str, Stage]) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}.")
    return STAGES[stage]


def parameter_groups(model) -> Dict[str, List[Tuple[str, nn.Parameter]]]:
    """``{"shared", "rpn", "detector", "fixed"}`` -> named parameters of each group.

    "shared" are the backbone's shareable conv layers (§3.1,
    ``backbone.shared_layers()``); "fixed" the backbone layers no stage trains
    (e.g. VGG-16 conv1-2 when pretrained); "rpn" and "detector" the layers
    unique to each network.
    """
    shared_ids = {id(p) for p in model.backbone.shared_layers()}
    groups: Dict[str, List[Tuple[str, nn.Parameter]]] = {g: [] for g in (*GROUPS, "fixed")}
    for name, p in model.backbone.named_parameters():
        groups["shared" if id(p) in shared_ids else "fixed"].append((f"backbone.{name}", p))
    groups["rpn"] = [(f"rpn.{n}", p) for n, p in model.rpn.named_parameters()]
    groups["detector"] = [(f"roi_heads.{n}", p) for n, p in model.roi_heads.named_parameters()]
    return groups


def apply_stage(model, stage: Union[str, Stage]) -> List[nn.Parameter]:
    """Put ``model`` in training mode for ``stage``; return what it trains.

    Groups the stage trains get ``requires_grad=True``; every other group is
    frozen and its modules put in eval mode, so frozen BatchNorm statistics do
    not drift either ("fixed" means fixed).
    """
    stage = _stage(stage)
    model.train()
    groups = parameter_groups(model)
    for group, named in groups.items():
        for _, p in named:
            p.requires_grad_(group in stage.trains)
    modules = {"shared": model.backbone, "rpn": model.rpn,
               "detector": model.roi_heads}
    for group, module in modules.items():
        module.train(group in stage.trains)
    return [p for g in stage.trains for _, p in groups[g]]


def stage_table(model, stages: Sequence[str] = tuple(STAGES)) -> List[Dict[str, object]]:
    """One row per parameter group: its module, size, and whether each stage trains it."""
    groups = parameter_groups(model)
    where = {"shared": "backbone", "rpn": "rpn", "detector": "roi_heads", "fixed": "backbone"}
    rows = []
    for group in (*GROUPS, "fixed"):
        if group == "fixed" and not groups["fixed"]:
            continue
        row = {"group": group, "module": where[group], "tensors": len(groups[group]),
               "parameters": sum(p.numel() for _, p in groups[group])}
        row.update({s: group in _stage(s).trains for s in stages})
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table of :func:`stage_table` rows ("train" / "-" for booleans)."""
    keys = list(rows[0])
    cells = [[("train" if v else "-") if isinstance(v, bool) else str(v) for v in r.values()]
             for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
