"""Drawing: images, boxes with labels and scores, and the book's colours.

One colour per role, used by every chapter so a reader learns them once:
ground truth, positive / negative / ignored anchors, proposals, detections.
This is the only module (with ``widgets``) that imports matplotlib.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from frcnn_lite.checks import check_boxes, check_image

# The book's colours (matplotlib colour strings), one per role.
COLORS = {
    "gt": "#00d000",          # ground truth: green
    "positive": "#ff2d2d",    # positive anchors: red
    "negative": "#3d7bff",    # negative anchors: blue
    "ignored": "#a0a0a0",     # ignored anchors: grey
    "proposal": "#ffb000",    # RPN proposals: amber
    "detection": "#ff00ff",   # final detections: magenta
    "anchor": "#00e5ff",      # anchors in general: cyan
}

# Per-class colours (tab10), for detections drawn by class.
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def image_to_numpy(image: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` float image in [0, 1] as an ``(H, W, 3)`` array for ``imshow``."""
    check_image(image)
    return image.detach().permute(1, 2, 0).cpu().numpy()


def show_image(image: torch.Tensor, ax=None, title: Optional[str] = None):
    """Show a ``(3, H, W)`` image on ``ax`` (a new figure when None); returns ``ax``."""
    import matplotlib.pyplot as plt

    array = image_to_numpy(image)  # checks the image before a figure is made
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(array)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(ax, boxes: torch.Tensor, labels: Optional[torch.Tensor] = None,
               scores: Optional[torch.Tensor] = None, class_names: Optional[Sequence[str]] = None,
               color: Optional[str] = None, linewidth: float = 2.0, linestyle: str = "-",
               alpha: float = 1.0, fontsize: float = 8.0):
    """Draw boxes ``(N, 4)`` on ``ax``, with optional labels ``(N,)`` and scores ``(N,)``.

    ``color`` may be a role from :data:`COLORS` ("gt", "proposal", ...), any
    matplotlib colour, or None to colour by class. Text shows the class name
    (from ``class_names``, index ``label - 1``) and the score. Returns ``ax``.
    """
    from matplotlib.patches import Rectangle

    check_boxes(boxes, "boxes", allow_degenerate=True)
    boxes = boxes.detach().cpu()
    n = boxes.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.shape != (n,):
            raise ValueError(f"labels must be (N,) = ({n},) to match boxes, got {tuple(labels.shape)}.")
        if class_names is not None and n and (int(labels.min()) < 1 or int(labels.max()) > len(class_names)):
            raise ValueError(f"labels must lie in 1..{len(class_names)} to index class_names "
                             f"(0 is background), got values in [{int(labels.min())}, {int(labels.max())}].")
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu()
        if scores.shape != (n,):
            raise ValueError(f"scores must be (N,) = ({n},) to match boxes, got {tuple(scores.shape)}.")
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if color is None:
            c = CLASS_COLORS[(int(labels[i]) - 1) % len(CLASS_COLORS)] if labels is not None else COLORS["detection"]
        else:
            c = COLORS.get(color, color)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle, alpha=alpha))
        text = []
        if labels is not None:
            text.append(class_names[int(labels[i]) - 1] if class_names is not None else str(int(labels[i])))
        if scores is not None:
            text.append(f"{float(scores[i]):.2f}")
        if text:
            ax.text(x1, y1, " ".join(text), fontsize=fontsize, color="white", va="bottom",
                    bbox=dict(facecolor=c, alpha=0.8, pad=1, edgecolor="none"))
    return ax


def show_detections(image: torch.Tensor, target: Optional[dict] = None, prediction: Optional[dict] = None,
                    class_names: Optional[Sequence[str]] = None, ax=None, score_threshold: float = 0.5,
                    title: Optional[str] = None):
    """Draw an image with its ground truth (green, dashed) and predictions (by class).

    ``target`` and ``prediction`` are torchvision-format dicts; predictions under
    ``score_threshold`` are not drawn. Returns ``ax``.
    """
    ax = show_image(image, ax=ax, title=title)
    if target is not None:
        draw_boxes(ax, target["boxes"], color="gt", linestyle="--", linewidth=1.5)
    if prediction is not None:
        keep = prediction["scores"] >= score_threshold
        draw_boxes(ax, prediction["boxes"][keep], labels=prediction["labels"][keep],
                   scores=prediction["scores"][keep], class_names=class_names)
    return ax


def rendered_source(obj) -> str:
    """The text :func:`show_source` displays for ``obj``: its source, dedented.

    tests/test_shown_code.py holds every object a chapter shows to a length and
    width limit by calling this.
    """
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(obj))


def show_source(obj) -> "object":
    """Display the library source of a function or class as a highlighted code block.

    Chapters call this instead of copying code, so the book can never drift
    from the library (in a notebook it renders; elsewhere it returns the text).
    """
    source = rendered_source(obj)
    try:
        from IPython.display import Markdown
    except ImportError:  # outside Jupyter: plain text
        return source
    return Markdown(f"```python\n{source}```")


def plot_losses(history, ax=None, keys: Optional[Sequence[str]] = None, smooth: int = 20,
                x: str = "iteration", title: Optional[str] = None, label_prefix: str = ""):
    """Plot a training loss log (``Trainer.fit``'s list of dicts) on ``ax``; returns ``ax``.

    Draws each loss component (``keys``: default every ``loss_*`` entry) as a
    moving average over ``smooth`` iterations, against ``x`` ("iteration" or
    "seconds"), on a log y axis.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if not history:
        raise ValueError("the loss log is empty: train for at least one iteration first.")
    keys = list(keys) if keys is not None else [k for k in history[0] if k.startswith("loss_")]
    xs = np.array([row[x] for row in history], dtype=float)
    for key in keys:
        values = np.array([row.get(key, np.nan) for row in history], dtype=float)
        width = max(1, min(smooth, len(values)))
        kernel = np.ones(width) / width
        smoothed = np.convolve(values, kernel, mode="valid")  # (n - width + 1,)
        ax.plot(xs[width - 1:], smoothed, label=f"{label_prefix}{key}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration" if x == "iteration" else "seconds of training")
    ax.set_ylabel(f"loss (moving average of {smooth})")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
