"""Numbers bound to runs: a sentence that quotes a result takes it from the run.

A code cell *binds* the values that the prose around it quotes, and *claims*
the qualitative statements the prose makes about them::

    from frcnn_lite.book.bind import bind, claim
    bind(ms_per_image=ms, recall=recall[0])
    claim("the fully connected layers dominate the head's parameters", fc_share > 0.5,
          fc_share=fc_share)

A markdown cell quotes them through *slots*, ``{{name}}`` or ``{{name:spec}}``
with a Python format spec (``{{ms_per_image:.0f}}``, ``{{count:,}}``), and
cites the paper through the registry (:mod:`frcnn_lite.paper`):
``{{paper.rpn_batch}}`` is the fact with its location ("256 anchors per image
(§3.1.3)"), ``{{paper.rpn_batch.value}}`` the bare value, and
``{{paper.rpn_batch.where}}`` the bare location.

``tools/book.py execute`` turns this into plain text, so the committed
notebook reads the same on GitHub, on Colab and in the built site:

1. a markdown cell whose source holds slots keeps that source as its
   *template*, in ``cell.metadata["frcnn_lite"]["template"]``;
2. the chapter runs with ``FRCNN_LITE_BIND=1`` in the kernel's environment, so
   :func:`bind` emits its values as a ``display_data`` output of type
   :data:`MIME`; the tool moves them into the code cell's metadata
   (``cell.metadata["frcnn_lite"]["bound"]``) and drops the output;
3. every template is rendered with the chapter's bound values and written into
   the markdown source: the reader sees numbers, never slot syntax.

Outside the tool (a reader's Jupyter or Colab session, nbval in ``make
test``) :func:`bind` only checks its values and shows nothing; :func:`claim`
always runs. ``tests/test_prose_bindings.py`` re-renders every template from
the stored values (a sentence edited by hand, or a stale render, fails) and
fails on numbers in prose that are neither bound nor allowed (its docstring
gives the rule). To edit a bound cell: ``tools/book.py unrender NN`` puts the
templates back into the sources, edit them, ``tools/book.py render NN``
renders them again from the stored values (no re-execution needed).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

MIME = "application/vnd.frcnn-lite.bind+json"
ENV = "FRCNN_LITE_BIND"

# {{name}} or {{name:spec}}; names are identifiers, or paper.KEY[.value|.where].
SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*"
                  r"(?::([^{}]*))?\}\}")
SETTINGS_KEY = "settings"


def _plain(name: str, value):
    """A JSON-safe scalar, string, or list of them; a clear error otherwise."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str):
        value = value.item()  # a 0-d tensor or numpy scalar
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"bind({name}=...): the value is {value}; a sentence cannot quote a "
                             f"non-finite number. Check the computation that produced it.")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(f"{name}[{k!r}]", v) for k, v in value.items()}
    raise TypeError(f"bind({name}=...): got a {type(value).__name__}; bind a number, a string, "
                    f"or a list or dict of them (call .item() on a one-element tensor).")


def bind(**values) -> None:
    """Record values that this chapter's prose quotes (see the module docstring).

    Names are Python identifiers, unique within a chapter. Values: numbers
    (0-d tensors and numpy scalars are converted), strings, lists or dicts of
    them. Under ``tools/book.py execute`` they are stored with the notebook;
    elsewhere this only checks them and shows nothing.
    """
    if not values:
        raise TypeError("bind() needs at least one name=value.")
    plain = {}
    for name, value in values.items():
        if name.startswith("paper"):
            raise ValueError(f"bind({name}=...): names starting with 'paper' are reserved for the "
                             f"paper registry ({{{{paper.KEY}}}} slots); choose another name.")
        plain[name] = _plain(name, value)
    if os.environ.get(ENV):
        from IPython.display import display

        display({MIME: plain}, raw=True)


def claim(statement: str, condition, **evidence) -> None:
    """Assert a qualitative claim the prose makes about a result, with its evidence.

    ``claim("joint training is faster", joint_s < alternating_s, joint_s=joint_s, ...)``
    raises an AssertionError that quotes the claim and the numbers when the
    run no longer supports it, so the sentence cannot silently become false.
    """
    if not bool(condition):
        shown = ", ".join(f"{k}={v!r}" for k, v in evidence.items())
        raise AssertionError(f"the prose claims: {statement!r}, but this run does not support it"
                             + (f" ({shown})" if shown else "")
                             + ". Rewrite the sentence (and this claim), or fix the run.")


def settings_of(config, *, schedule: str, image_size: Optional[Tuple[int, int]] = None,
                **extra) -> Dict[str, object]:
    """The settings a chapter uses, as the settings appendix lists them.

    ``config`` is a :class:`frcnn_lite.config.FasterRCNNConfig` (the detector
    the chapter builds or trains); ``schedule`` says in words how it is
    trained ("300 mini-batches of 4 images, Adam, one-cycle 3e-3", or "not
    trained: the shipped demo model"); ``extra`` adds free-form rows.
    """
    c = config
    size = image_size or (c.min_size, c.max_size)
    row = {
        "input size": f"shorter side {c.min_size}, longer at most {c.max_size}"
        if c.min_size != c.max_size else f"{c.min_size} x {c.max_size}",
        "anchors": f"scales {', '.join(f'{s:g}' for s in c.scales)}; "
                   f"ratios {', '.join(f'{r:g}' for r in c.ratios)}",
        "RPN batch": f"{c.rpn_batch_size_per_image} anchors, "
                     f"{c.rpn_positive_fraction:.0%} positive at most",
        "proposals": f"train {c.pre_nms_top_n_train} / {c.post_nms_top_n_train}, "
                     f"test {c.pre_nms_top_n_test} / {c.post_nms_top_n_test} "
                     f"(before / after NMS {c.rpn_nms_thresh:g})",
        "RoI batch": f"{c.roi_batch_size_per_image} RoIs, "
                     f"{c.roi_positive_fraction:.0%} foreground at most, "
                     f"background IoU [{c.roi_bg_iou_lo:g}, {c.roi_bg_iou_hi:g})",
        "schedule": schedule,
    }
    if image_size is not None:
        row["input size"] = f"{size[0]} x {size[1]} images; " + row["input size"]
    row.update({k: str(v) for k, v in extra.items()})
    return row


def record_settings(config, *, schedule: str, **extra) -> Dict[str, object]:
    """Bind this chapter's settings (:func:`settings_of`) for the settings appendix."""
    row = settings_of(config, schedule=schedule, **extra)
    bind(**{SETTINGS_KEY: row})
    return row


# -- rendering (used by tools/book.py and the tests) --

def slots(template: str) -> Iterator[re.Match]:
    """The slots of a template, in order."""
    return SLOT.finditer(template)


def _paper_text(name: str, spec: str) -> str:
    from frcnn_lite import paper

    parts = name.split(".")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("value", "where")):
        raise KeyError(f"slot {{{{{name}}}}}: paper slots are paper.KEY, paper.KEY.value or "
                       f"paper.KEY.where")
    fact = paper.fact(parts[1])
    if len(parts) == 2:
        return paper.cite(parts[1])
    if parts[2] == "where":
        return paper.where(parts[1])
    return format(fact.value, spec) if spec else paper.format_value(fact.value)


def format_slot(name: str, spec: Optional[str], values: Mapping[str, object]) -> str:
    """The text one slot renders to; a KeyError naming the slot when it is unbound."""
    if name.startswith("paper."):
        return _paper_text(name, spec or "")
    head, *rest = name.split(".")
    if head not in values:
        raise KeyError(f"slot {{{{{name}}}}} is not bound: no code cell of this chapter calls "
                       f"bind({head}=...). Known names: {sorted(values)}")
    value = values[head]
    for key in rest:  # {{settings.anchors}}: a key of a bound dict
        value = value[key]
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def render(template: str, values: Mapping[str, object],
           replace: Optional[Callable[[str], str]] = None) -> str:
    """The template with every slot replaced by its text (``replace`` maps that text)."""
    def one(match: re.Match) -> str:
        text = format_slot(match.group(1), match.group(2), values)
        return replace(text) if replace else text

    return SLOT.sub(one, template)


def stored_values(nb) -> Dict[str, object]:
    """Every value the code cells of an executed notebook bound (names unique)."""
    values: Dict[str, object] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for name, value in cell.metadata.get("frcnn_lite", {}).get("bound", {}).items():
            if name in values and name != SETTINGS_KEY:
                raise ValueError(f"bind({name}=...) is called twice in this chapter (again in code "
                                 f"cell {index}); give each quoted value its own name.")
            values[name] = value
    return values


def collect_outputs(nb) -> Dict[str, object]:
    """Move :func:`bind`'s outputs into their cells' metadata; returns every value bound."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        bound: Dict[str, object] = {}
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {}) if out.get("output_type") == "display_data" else {}
            if MIME in data:
                payload = data[MIME]
                bound.update(json.loads(payload) if isinstance(payload, str) else payload)
            else:
                kept.append(out)
        cell.outputs = kept
        meta = cell.metadata.setdefault("frcnn_lite", {})
        if bound:
            meta["bound"] = bound
        else:
            meta.pop("bound", None)
        if not meta:
            del cell.metadata["frcnn_lite"]
    return stored_values(nb)


def adopt_templates(nb) -> int:
    """Markdown cells whose source holds slots take that source as their template."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown" and SLOT.search(cell.source):
            cell.metadata.setdefault("frcnn_lite", {})["template"] = cell.source
            count += 1
    return count


def render_notebook(nb) -> Dict[int, str]:
    """Render every template into its markdown source; ``{cell index: error}`` for failures."""
    values = stored_values(nb)
    errors = {}
    for index, cell in enumerate(nb.cells):
        template = cell.metadata.get("frcnn_lite", {}).get("template") \
            if cell.cell_type == "markdown" else None
        if template is None:
            continue
        try:
            cell.source = render(template, values)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            errors[index] = str(error)
    return errors


def unrender_notebook(nb) -> int:
    """Put every template back into its markdown source, for editing."""
    count = 0
    for cell in nb.cells:
        template = cell.metadata.get("frcnn_lite", {}).get("template")
        if cell.cell_type == "markdown" and template is not None:
            cell.source = template
            count += 1
    return count


# -- the unbound-number rule (tests/test_prose_bindings.py states it) --

ALLOWED_KEY = "prose_numbers_allowed"  # notebook metadata frcnn_lite.<this>: phrases

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.S | re.M)
_STRIP = [
    re.compile(r"<!--.*?-->", re.S),                                   # HTML comments
    re.compile(r"\$\$.*?\$\$", re.S),                                  # display math
    re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S),            # LaTeX environments
    re.compile(r"(?<![\\$])\$(?!\s)[^$]+?\$"),                          # inline math
    re.compile(r"``.+?``|`[^`\n]+`"),                                  # code spans, role targets
    re.compile(r"\{[a-z:]+\}"),                                        # role names: {cite}, {doc}
    re.compile(r"\]\([^)]*\)"),                                        # link targets
    re.compile(r"^:[a-z-]+:.*$", re.M),                                # directive options
    re.compile(r"^\s*(?:\d+\.|#+)\s", re.M),                           # list numbers, heading marks
]
# References to the book's or the paper's parts: chapter 6, §3.1.3, Eq. 2, Tables 8, 9 and 10.
_REFERENCE = re.compile(
    r"\b(?:chapters?|sections?|steps?|stages?|exercises?|eqs?\.|equations?|tables?|figs?\.|"
    r"figures?|algorithm|appendix)\s+\d+(?:\.\d+)*(?:\s*(?:,|and|or|to|-|–)\s*\d+(?:\.\d+)*)*"
    r"|§\s?\d+(?:\.\d+)*(?:\s*(?:,|and|or|-|–)\s*§?\d+(?:\.\d+)*)*", re.I)
# Names that contain numbers: VOC 2007, COCO 2014, Python 3.
_NAMES = re.compile(r"\b(?:VOC|COCO|ILSVRC|ImageNet|Python|NeurIPS|ICCV|CVPR|TPAMI)\s+\d+"
                    r"(?:\+\d+)*|\b(?:\d+\+)+\d+\b")
NUMBER = re.compile(r"(?<![\w.\-/])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?%)?(?![\w\-])")


def prose_text(source: str) -> str:
    """The prose of a markdown source: code, math, roles, links and references removed."""
    def fence(match: re.Match) -> str:  # directives keep their content, code fences go
        return match["body"] if match["info"].strip().startswith("{") else ""

    text = source
    for _ in range(3):  # directives nest
        text = _FENCE.sub(fence, text)
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    text = _REFERENCE.sub(" ", text)
    return _NAMES.sub(" ", text)


def unbound_numbers(nb) -> List[Tuple[int, str, str]]:
    """``(cell index, number, context)`` for each number in prose that no slot binds.

    The bound text of a templated cell is the template with its slots removed;
    phrases listed in the notebook's ``metadata.frcnn_lite.prose_numbers_allowed``
    (definitions, such as "3 scales x 3 ratios") are removed before scanning.
    """
    allowed = nb.metadata.get("frcnn_lite", {}).get(ALLOWED_KEY, [])
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        template = cell.metadata.get("frcnn_lite", {}).get("template")
        text = SLOT.sub(" ", template if template is not None else cell.source)
        for phrase in allowed:
            text = text.replace(phrase, " ")
        text = prose_text(text)
        for match in NUMBER.finditer(text):
            context = text[max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
            found.append((index, match.group(0), context.strip()))
    return found


def unused_allowances(nb) -> List[str]:
    """Allowed phrases that appear in no markdown cell (stale allow-list entries)."""
    allowed = nb.metadata.get("frcnn_lite", {}).get(ALLOWED_KEY, [])
    texts = [c.metadata.get("frcnn_lite", {}).get("template", c.source)
             for c in nb.cells if c.cell_type == "markdown"]
    return [p for p in allowed if not any(p in t for t in texts)]
