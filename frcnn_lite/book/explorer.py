"""The machinery of the kernel-free explorers: controls, layers, and :class:`Explorer`.

Every state is computed in the notebook (one per combination of the controls'
values) and handed to Bokeh; in the browser a control only picks which
precomputed rows are drawn, through one ``GroupFilter`` per control linked to
its slider or buttons with ``js_link``: no JavaScript written by hand. The
chapters' explorers are built on it in :mod:`frcnn_lite.book.explorers`.
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
