"""Kernel-free explorers: figures whose controls work in the static rendered book.

The ipywidgets explorers of :mod:`frcnn_lite.book.widgets` need a running
kernel, which the rendered book does not have. The explorers here compute every
state in the notebook (one per combination of the controls' values) and hand
them to Bokeh; in the browser a control only picks which precomputed rows are
drawn. The picking is declarative (one ``GroupFilter`` per control, linked to
its slider or buttons with ``js_link``), so no JavaScript is written by hand.

- :class:`Explorer`: an image with state-dependent boxes, points, a text line
  and an optional bar chart; displays as HTML (Bokeh) with a PNG of the default
  state inside for viewers that run no scripts (GitHub, an untrusted Jupyter).
- :func:`anchor_explorer` (chapter 3), :func:`labelling_explorer` (chapter 5),
  :func:`proposal_explorer` (chapter 6), :func:`detection_explorer` (chapter 9).

The book's Sphinx extension (``tools/book_assets.py``) ships BokehJS with the
site and hides the PNG there. Nothing outside ``frcnn_lite.book`` imports this.
"""

from __future__ import annotations

import base64
import io
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from frcnn_lite.anchors import (IGNORED, NEGATIVE, POSITIVE, anchor_coverage, base_anchors,
                                grid_anchors, label_anchors)
from frcnn_lite.boxes import box_iou
from frcnn_lite.book.viz import CLASS_COLORS, COLORS, draw_boxes, show_image
from frcnn_lite.book.widgets import coverage_summary, default_feature_size
from frcnn_lite.rpn import generate_proposals

# The class name the book's CSS uses to find explorers (and to hide the PNG).
CSS_CLASS = "frcnn-explorer"


@dataclass(frozen=True)
class Control:
    """One control: a slider over evenly spaced ints, or buttons over labels.

    ``values`` are the ints a slider takes (``kind="slider"``) or the button
    labels (``kind="buttons"``, whose state value is the button's index).
    """

    name: str
    title: str
    values: tuple
    default: int
    kind: str = "slider"

    def __post_init__(self):
        if self.kind == "slider":
            steps = set(np.diff(self.values).tolist())
            if len(self.values) < 2 or len(steps) != 1 or steps.pop() <= 0:
                raise ValueError(f"control {self.name!r}: a slider needs at least two evenly "
                                 f"spaced increasing ints, got {list(self.values)}.")
            if self.default not in self.values:
                raise ValueError(f"control {self.name!r}: default {self.default} is not one of "
                                 f"{list(self.values)}.")
        elif self.kind == "buttons":
            if not 0 <= self.default < len(self.values):
                raise ValueError(f"control {self.name!r}: default index {self.default} is not "
                                 f"in 0..{len(self.values) - 1}.")
        else:
            raise ValueError(f"control {self.name!r}: kind must be 'slider' or 'buttons', got "
                             f"{self.kind!r}.")

    def states(self) -> range | tuple:
        """The values this control's column takes: slider values or button indices."""
        return self.values if self.kind == "slider" else range(len(self.values))


def slider(name, title, values, default) -> Control:
    return Control(name, title, tuple(int(v) for v in values), int(default), "slider")


def buttons(name, title, labels, default=0) -> Control:
    return Control(name, title, tuple(str(v) for v in labels), int(default), "buttons")


@dataclass
class _Layer:
    kind: str           # "boxes", "points", "text" or "bars"
    color: str
    style: dict
    rows: dict          # full state (tuple) -> dict of column name -> list


class Explorer:
    """An image whose drawn boxes, points, text and bars depend on a few controls.

    Fill it with :meth:`boxes`, :meth:`points`, :meth:`text` and :meth:`bars`
    for every state from :meth:`states`, then display it. A layer whose rows do
    not change with a control is stored once for that control (see
    :meth:`_compact`), which keeps the page small.
    """

    def __init__(self, image: torch.Tensor, controls: Sequence[Control], *, title: str = "",
                 gt_boxes: Optional[torch.Tensor] = None, bars_title: str = "",
                 bars_xlabel: str = "", width: int = 340):
        names = [c.name for c in controls]
        if len(set(names)) != len(names):
            raise ValueError(f"control names must be unique, got {names}.")
        self.image, self.controls, self.title = image.detach().cpu(), list(controls), title
        self.gt_boxes = None if gt_boxes is None else gt_boxes.detach().cpu()
        self.bars_title, self.bars_xlabel, self.width = bars_title, bars_xlabel, width
        self.layers: Dict[tuple, _Layer] = {}

    def states(self):
        """Every combination of the controls' values, as dicts ``{name: value}``."""
        for combo in itertools.product(*(c.states() for c in self.controls)):
            yield dict(zip((c.name for c in self.controls), combo))

    def _add(self, kind, key, state, color, style, columns):
        missing = {c.name for c in self.controls} - set(state)
        if missing:
            raise ValueError(f"state {state} lacks a value for {sorted(missing)}.")
        layer = self.layers.setdefault((kind, key), _Layer(kind, color, style, {}))
        full = tuple(state[c.name] for c in self.controls)
        rows = layer.rows.setdefault(full, {name: [] for name in columns})
        for name, values in columns.items():
            rows[name].extend(values)

    def boxes(self, state, boxes: torch.Tensor, role: str = "anchor", *, color=None,
              labels: Optional[Sequence[str]] = None, width: float = 1.5, dash: bool = False,
              alpha: float = 1.0, key: Optional[str] = None):
        """Boxes ``(N, 4)`` drawn in state ``state`` (a role of ``COLORS`` or ``color``)."""
        b = boxes.detach().cpu().float().reshape(-1, 4).tolist()
        columns = {"x1": [r[0] for r in b], "y1": [r[1] for r in b], "x2": [r[2] for r in b],
                   "y2": [r[3] for r in b], "label": list(labels or [""] * len(b))}
        color = color or COLORS[role]
        style = {"width": width, "dash": dash, "alpha": alpha}
        self._add("boxes", key or f"{role}:{color}", state, color, style, columns)

    def points(self, state, xy: torch.Tensor, role: str = "anchor", size: float = 3.0):
        """Points ``(N, 2)`` (x, y) drawn in state ``state``."""
        p = xy.detach().cpu().float().reshape(-1, 2).tolist()
        self._add("points", role, state, COLORS[role], {"size": size},
                  {"x": [r[0] for r in p], "y": [r[1] for r in p]})

    def text(self, state, text: str):
        """The caption shown under the image in state ``state``."""
        self._add("text", "text", state, "black", {}, {"text": [text]})

    def bars(self, state, centres: Sequence[float], heights: Sequence[float],
             role: str = "anchor", bar_width: float = 0.09):
        """A bar chart beside the image in state ``state``."""
        self._add("bars", role, state, COLORS[role], {"bar_width": bar_width},
                  {"x": list(map(float, centres)), "top": list(map(float, heights))})

    def _compact(self, layer: _Layer) -> Tuple[List[int], dict]:
        """The controls the layer's rows change with, and its rows with the rest dropped.

        A state that added nothing draws nothing; a control that changes none
        of the layer's rows is left out of its filter (rows kept once).
        """
        empty = {name: [] for name in next(iter(layer.rows.values()))}
        rows = {full: layer.rows.get(full, empty)
                for full in itertools.product(*(c.states() for c in self.controls))}
        keys = []
        for k, control in enumerate(self.controls):
            if any(r != rows[full[:k] + (control.default,) + full[k + 1:]]
                   for full, r in rows.items()):
                keys.append(k)
            else:
                rows = {full: r for full, r in rows.items() if full[k] == control.default}
        return keys, rows

    def default_state(self) -> dict:
        return {c.name: c.default for c in self.controls}

    # ----- rendering -----------------------------------------------------------------------
    def bokeh(self):
        """The Bokeh layout: controls above, the image (and bars) and the caption below."""
        from bokeh.layouts import column, row
        from bokeh.models import (CDSView, ColumnDataSource, Div, GroupFilter,
                                  IntersectionFilter, RadioButtonGroup, Slider)
        from bokeh.plotting import figure

        height, width = self.image.shape[-2:]
        filters = {c.name: GroupFilter(column_name=c.name, group=c.default)
                   for c in self.controls}
        widgets = []
        for c in self.controls:
            if c.kind == "slider":
                w = Slider(start=c.values[0], end=c.values[-1], step=c.values[1] - c.values[0],
                           value=c.default, title=c.title, width=self.width)
                w.js_link("value", filters[c.name], "group")
            else:
                widgets.append(Div(text=f"{c.title}:"))
                w = RadioButtonGroup(labels=list(c.values), active=c.default)
                w.js_link("active", filters[c.name], "group")
            w.name = f"control-{c.name}"
            widgets.append(w)
        plot_height = round(self.width * height / width)
        image = figure(width=self.width, height=plot_height, x_range=(0, width),
                       y_range=(height, 0), tools="", toolbar_location=None, title=self.title,
                       name="image")
        image.grid.visible = False
        image.image_url(url=[_jpeg_data_uri(self.image)], x=0, y=0, w=width, h=height,
                        anchor="top_left")
        if self.gt_boxes is not None and len(self.gt_boxes):
            g = self.gt_boxes.tolist()
            image.quad(left=[r[0] for r in g], top=[r[1] for r in g], right=[r[2] for r in g],
                       bottom=[r[3] for r in g], fill_alpha=0, line_color=COLORS["gt"],
                       line_width=2, line_dash="dashed")
        texts = [t for layer in self.layers.values() if layer.kind == "text"
                 for rows in layer.rows.values() for t in rows["text"]]
        lines = max((t.count("\n") + 1 for t in texts), default=1)
        has_bars = any(layer.kind == "bars" for layer in self.layers.values())
        caption = figure(width=2 * self.width - 40 if has_bars else self.width + 160,
                         height=18 * lines + 12, x_range=(0, 1), y_range=(0, 1), tools="",
                         toolbar_location=None, name="caption")
        caption.axis.visible = caption.grid.visible = False
        caption.outline_line_color = None
        bars = None
        for layer in self.layers.values():
            keys, layer_rows = self._compact(layer)
            data: Dict[str, list] = {}
            for full, rows in layer_rows.items():
                n = len(next(iter(rows.values())))
                for k in keys:
                    data.setdefault(self.controls[k].name, []).extend([full[k]] * n)
                for name, values in rows.items():
                    data.setdefault(name, []).extend(values)
            for k in keys:  # compact typed arrays: the page carries them as base64
                data[self.controls[k].name] = np.asarray(data[self.controls[k].name], np.int16)
            for name in ("x1", "y1", "x2", "y2", "x", "y", "top"):
                if name in data:
                    data[name] = np.asarray(data[name], np.float32)
            operands = [filters[self.controls[k].name] for k in keys]
            view = CDSView(filter=IntersectionFilter(operands=operands)) if operands else CDSView()
            source = ColumnDataSource(data)
            s = layer.style
            if layer.kind == "boxes":
                image.quad(left="x1", top="y1", right="x2", bottom="y2", source=source,
                           view=view, fill_alpha=0, line_color=layer.color,
                           line_width=s["width"], line_alpha=s["alpha"],
                           line_dash="dashed" if s["dash"] else "solid")
                if any(data["label"]):
                    image.text(x="x1", y="y1", text="label", source=source, view=view,
                               text_font_size="9px", text_color="white", text_baseline="bottom",
                               background_fill_color=layer.color, background_fill_alpha=0.8)
            elif layer.kind == "points":
                image.scatter(x="x", y="y", source=source, view=view, size=s["size"],
                              color=layer.color)
            elif layer.kind == "text":
                caption.text(x=0.01, y=0.95, text="text", source=source, view=view,
                             text_baseline="top", text_font_size="12px")
            else:
                if bars is None:
                    bars = figure(width=self.width - 40, height=plot_height, tools="",
                                  toolbar_location=None, title=self.bars_title, name="bars",
                                  x_axis_label=self.bars_xlabel)
                bars.vbar(x="x", top="top", width=s["bar_width"], source=source, view=view,
                          color=layer.color)
        plots = row(image, bars) if bars is not None else image
        return column(*widgets, plots, caption)

    def figure(self, dpi: int = 60):
        """A matplotlib figure of the default state (the fallback without scripts)."""
        import matplotlib.pyplot as plt

        state = self.default_state()
        full = tuple(state[c.name] for c in self.controls)
        has_bars = any(layer.kind == "bars" for layer in self.layers.values())
        fig, axes = plt.subplots(1, 2 if has_bars else 1, figsize=(10 if has_bars else 5.5, 5),
                                 dpi=dpi, squeeze=False)
        ax = show_image(self.image, ax=axes[0, 0], title=self.title)
        if self.gt_boxes is not None and len(self.gt_boxes):
            draw_boxes(ax, self.gt_boxes, color="gt", linestyle="--")
        caption = ""
        for layer in self.layers.values():
            rows = layer.rows.get(full)
            if not rows:
                continue
            if layer.kind == "boxes":
                b = torch.tensor([rows["x1"], rows["y1"], rows["x2"], rows["y2"]]).T
                draw_boxes(ax, b.reshape(-1, 4), color=layer.color,
                           linewidth=layer.style["width"], alpha=layer.style["alpha"],
                           linestyle="--" if layer.style["dash"] else "-")
            elif layer.kind == "points":
                ax.scatter(rows["x"], rows["y"], s=layer.style["size"], color=layer.color)
            elif layer.kind == "text":
                caption = rows["text"][0]
            else:
                axes[0, 1].bar(rows["x"], rows["top"], width=layer.style["bar_width"],
                               color=layer.color)
                axes[0, 1].set_title(self.bars_title)
                axes[0, 1].set_xlabel(self.bars_xlabel)
        settings = ", ".join(f"{c.title} {c.values[c.default] if c.kind == 'buttons' else c.default}"
                             for c in self.controls)
        fig.text(0.01, 0.01, f"{caption}\n(static: {settings})", fontsize=9, va="bottom")
        fig.subplots_adjust(bottom=0.18)
        return fig

    def _repr_mimebundle_(self, include=None, exclude=None):
        import matplotlib.pyplot as plt
        from bokeh.embed import components

        script, div = components(self.bokeh())
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="jpeg", bbox_inches="tight", pil_kwargs={"quality": 80})
        plt.close(fig)
        jpeg = base64.b64encode(buffer.getvalue()).decode("ascii")
        html = (f'<div class="{CSS_CLASS}">{div}{script}'
                f'<img class="{CSS_CLASS}-fallback" alt="{self.title} (default settings)" '
                f'src="data:image/jpeg;base64,{jpeg}"/></div>')
        return {"text/html": html,
                "text/plain": f"<{type(self).__name__} {self.title!r}: {len(self.controls)} "
                              f"controls, moves in the rendered book>"}


def _jpeg_data_uri(image: torch.Tensor, quality: int = 85) -> str:
    """A ``(3, H, W)`` image as a JPEG ``data:`` URI (the book's noisy images: JPEG is ~6x
    smaller than PNG)."""
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.2g}" if v < 1 else f"{v:g}" for v in values)


def anchor_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, coverage_boxes: torch.Tensor,
                    scale_sets: Sequence[Sequence[float]], ratio_sets: Sequence[Sequence[float]],
                    strides: Sequence[int] = (8, 16, 24, 32), *, default=(0, 0, 16)) -> Explorer:
    """Chapter 3: scales, ratios and stride; anchor count and dataset coverage update.

    Draws the anchors of the cells holding each ground-truth box's centre and
    every anchor centre; the caption gives the count and the coverage summary
    of ``coverage_boxes`` ``(M, 4)`` (best-anchor IoU, §3.1.1), the bars its
    histogram. ``default`` is (scale set index, ratio set index, stride).
    """
    size = tuple(image.shape[-2:])
    controls = [buttons("scales", "scales", [_fmt(s) for s in scale_sets], default[0]),
                buttons("ratios", "ratios (h/w)", [_fmt(r) for r in ratio_sets], default[1]),
                slider("stride", "stride (px)", strides, default[2])]
    ex = Explorer(image, controls, title="anchors at the objects' cells", gt_boxes=gt_boxes,
                  bars_title=f"best-anchor IoU of {len(coverage_boxes)} dataset boxes",
                  bars_xlabel="IoU with the best anchor")
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    for state in ex.states():
        scales, ratios = scale_sets[state["scales"]], ratio_sets[state["ratios"]]
        stride, base = state["stride"], base_anchors(scales, ratios)
        fh, fw = default_feature_size(size, stride)
        anchors = grid_anchors((fh, fw), stride, base)  # (fh * fw * A, 4)
        cells = (centres // stride).long()  # (G, 2) as (j, i)
        first = (cells[:, 1] * fw + cells[:, 0]) * len(base)  # row, then column, then anchor
        index = (first[:, None] + torch.arange(len(base))[None]).reshape(-1)
        ex.boxes(state, anchors[index], "anchor", width=1.0)
        ex.points(state, (anchors[:: len(base), :2] + anchors[:: len(base), 2:]) / 2, "anchor",
                  size=2.0)
        best = anchor_coverage(anchors, coverage_boxes, size)
        inside = int(((anchors[:, :2] >= 0) & (anchors[:, 2] <= size[1])[:, None]
                      & (anchors[:, 3] <= size[0])[:, None]).all(dim=1).sum())
        ex.text(state, f"{len(anchors)} anchors = {fh}x{fw} cells x {len(base)} per cell, "
                       f"{inside} inside the image\ncoverage: {coverage_summary(best)}")
        hist = torch.histc(best, bins=10, min=0, max=1).tolist()
        ex.bars(state, [0.05 + 0.1 * k for k in range(10)], hist)
    return ex


def labelling_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor,
                       fg_values: Sequence[int] = range(50, 95, 5),
                       bg_values: Sequence[int] = range(10, 55, 5), *, default=(70, 30),
                       band: float = 0.1) -> Explorer:
    """Chapter 5: the IoU thresholds fg_iou and bg_iou (in %) move anchors between labels.

    Draws the positives (red), the ignored anchors inside the image (grey) and
    the negatives within ``band`` of ``bg_iou`` (blue: the next to become
    ignored; the others are counted only), labelled by :func:`label_anchors`
    (§3.1.2).
    """
    size = tuple(image.shape[-2:])
    controls = [slider("fg", "positive if IoU >= (%)", fg_values, default[0]),
                slider("bg", "negative if IoU < (%)", bg_values, default[1])]
    ex = Explorer(image, controls, title="anchor labels", gt_boxes=gt_boxes)
    best = box_iou(anchors, gt_boxes).max(dim=1).values  # (N,)
    for state in ex.states():
        labels, _ = label_anchors(anchors, gt_boxes, size, fg_iou=state["fg"] / 100,
                                  bg_iou=state["bg"] / 100)
        inside = ((anchors[:, :2] >= 0).all(dim=1) & (anchors[:, 2] <= size[1])
                  & (anchors[:, 3] <= size[0]))
        near = (labels == NEGATIVE) & (best >= state["bg"] / 100 - band)
        ex.boxes(state, anchors[near], "negative", width=0.8, alpha=0.7)
        ex.boxes(state, anchors[(labels == IGNORED) & inside], "ignored", width=1.0)
        ex.boxes(state, anchors[labels == POSITIVE], "positive", width=1.5)
        counts = [int((labels == v).sum()) for v in (POSITIVE, NEGATIVE, IGNORED)]
        note = "  (bg_iou > fg_iou: no ignored band)" if state["bg"] > state["fg"] else ""
        ex.text(state, f"{counts[0]} positive (red), {counts[1]} negative, {counts[2]} ignored"
                       f"{note}\nblue: the {int(near.sum())} negatives with IoU within "
                       f"{band:g} of bg_iou\ngrey: {int(((labels == IGNORED) & inside).sum())}"
                       f" ignored inside the image ({int((~inside).sum())} cross the border)")
    return ex


def proposal_explorer(image: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor,
                      objectness: torch.Tensor, deltas: torch.Tensor, *,
                      pre_values: Sequence[int] = (100, 300, 1000, 6000),
                      nms_values: Sequence[int] = range(30, 110, 10),
                      post_values: Sequence[int] = (10, 30, 100), min_size: float = 4.0,
                      default=(3, 70, 1)) -> Explorer:
    """Chapter 6: top-N before NMS, the NMS IoU threshold (in %) and top-N after NMS.

    Every state runs :func:`generate_proposals` (§3.3) on one image's
    ``anchors (N, 4)``, ``objectness (N,)`` and ``deltas (N, 4)``; the caption
    gives the recall of the ground-truth boxes at IoU 0.5. ``default`` is (pre
    index, NMS %, post index); NMS at 100% keeps every box.
    """
    size = tuple(image.shape[-2:])
    controls = [buttons("pre", "top-N before NMS", [str(v) for v in pre_values], default[0]),
                slider("nms", "NMS IoU threshold (%)", nms_values, default[1]),
                buttons("post", "top-N after NMS", [str(v) for v in post_values], default[2])]
    ex = Explorer(image, controls, title="proposals", gt_boxes=gt_boxes)
    for state in ex.states():
        pre, post = pre_values[state["pre"]], post_values[state["post"]]
        boxes, _ = generate_proposals(anchors, objectness, deltas, size, pre_nms_top_n=pre,
                                      post_nms_top_n=post, nms_thresh=state["nms"] / 100,
                                      min_size=min_size)
        ex.boxes(state, boxes, "proposal", width=1.0)
        found = 0
        if len(gt_boxes) and len(boxes):
            found = int((box_iou(boxes, gt_boxes).max(dim=0).values >= 0.5).sum())
        ex.text(state, f"{len(boxes)} proposals (best {pre} by objectness, NMS at "
                       f"{state['nms'] / 100:.1f}, first {post} kept)\n"
                       f"recall at IoU 0.5: {found} of {len(gt_boxes)} objects")
    return ex


def detection_explorer(model, image: torch.Tensor, target: dict, class_names: Sequence[str], *,
                       score_values: Sequence[int] = range(10, 100, 10),
                       nms_values: Sequence[int] = range(10, 110, 10),
                       default=(50, 30)) -> Explorer:
    """Chapter 9: the score threshold and the per-class NMS threshold (both in %).

    Runs ``model`` (a :class:`FasterRCNN` in eval mode) once per NMS threshold
    with its ``roi_heads.nms_thresh`` set to it and ``score_thresh`` at the
    smallest slider value (restored afterwards), then keeps the detections
    scoring at least the slider's threshold (§3.2, the paper's test-time
    post-processing). NMS at 100% keeps every box.
    """
    controls = [slider("score", "score threshold (%)", score_values, default[0]),
                slider("nms", "per-class NMS IoU (%)", nms_values, default[1])]
    ex = Explorer(image, controls, title="detections", gt_boxes=target["boxes"])
    heads = model.roi_heads
    saved = heads.score_thresh, heads.nms_thresh
    runs = {}
    try:
        heads.score_thresh = min(score_values) / 100 - 1e-6
        for t in nms_values:
            heads.nms_thresh = t / 100
            with torch.no_grad():
                runs[t] = {k: v.cpu() for k, v in model([image.to(_device_of(model))])[0].items()}
    finally:
        heads.score_thresh, heads.nms_thresh = saved
    for state in ex.states():
        det = runs[state["nms"]]
        keep = det["scores"] >= state["score"] / 100
        labels, scores = det["labels"][keep].tolist(), det["scores"][keep].tolist()
        for c in sorted(set(labels)):
            rows = [i for i, label in enumerate(labels) if label == c]
            ex.boxes(state, det["boxes"][keep][rows], color=CLASS_COLORS[(c - 1) % 10],
                     labels=[f"{class_names[c - 1]} {scores[i]:.2f}" for i in rows],
                     key=f"class{c}")
        ex.text(state, f"{len(labels)} detections with score >= {state['score'] / 100:.2f} "
                       f"after per-class NMS at {state['nms'] / 100:.1f}\n"
                       f"(at most {heads.detections_per_img} per image; ground truth dashed)")
    return ex


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
