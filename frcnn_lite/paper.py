"""What the book attributes to the paper, in one checked place.

Every number, setting and claim that a chapter attributes to Faster R-CNN
(Ren, He, Girshick, Sun, arXiv:1506.01497), to Fast R-CNN (Girshick, ICCV
2015), or to an implementation (py-faster-rcnn, torchvision, detectron2) is a
:class:`Fact` (the entries live in :mod:`frcnn_lite.paper_facts`): its value,
where it is (section, table, equation, figure, or a file of the
implementation), and whose it is. Chapters quote facts
through the slots of :mod:`frcnn_lite.book.bind` (``{{paper.rpn_batch}}``)
or :func:`cite`, so a citation is written once and checked once
(``tests/test_paper.py``); ``tools/book.py tables`` lists them all in the
appendix page ``book/appendix_paper_facts.md``.

Table numbers follow ONE convention, the arXiv v3 arabic numbering: Table 2 is
the proposal-count ablation (ZF: 100 / 300 / 1000 proposals at test), Table 3
VGG-16 on VOC 2007, Table 5 the timing, Tables 8, 9 and 10 the anchor, lambda
and one-stage ablations. (The TPAMI version numbers the same tables in roman
numerals; we never use those.)

``verified`` says what a fact was checked against. Implementation facts were
read in the implementations' code. The paper's own text is not available
offline where this registry was written: paper facts carry the location the
book has always used (design.md) and are marked ``verified=""`` (unverified)
unless an implementation confirms the value; a reader with the paper at hand
is invited to check them, and the appendix page says which ones are open.
"""

from __future__ import annotations

import math
import re
from typing import Dict

from frcnn_lite.paper_facts import FACTS, Fact  # noqa: F401  (the registry's data)

SOURCES = {
    "paper": "Faster R-CNN, Ren et al. 2015 (arXiv:1506.01497 v3)",
    "fast_rcnn": "Fast R-CNN, Girshick 2015 (arXiv:1504.08083)",
    "py-faster-rcnn": "py-faster-rcnn, the authors' Python/Caffe code (github.com/rbgirshick/py-faster-rcnn)",
    "torchvision": "torchvision.models.detection (github.com/pytorch/vision)",
    "detectron2": "detectron2 (github.com/facebookresearch/detectron2)",
    "pascal_voc": "PASCAL VOC, Everingham et al. 2010 (IJCV), and its development kit",
    "coco": "Microsoft COCO, Lin et al. 2014, and its evaluation code (pycocotools, "
            "github.com/cocodataset/cocoapi)",
}
# How prose names the benchmarks' definitions (the other sources are named by their key).
_CITED_AS = {"pascal_voc": "PASCAL VOC devkit", "coco": "COCO, pycocotools"}

# The parts of the two papers a location may name (arXiv numbering).
PAPER_SECTIONS = {"1", "2", "3", "3.1", "3.1.1", "3.1.2", "3.1.3", "3.2", "3.3", "4", "4.1",
                  "4.2", "4.3", "5"}
FAST_RCNN_SECTIONS = {"1", "2", "2.1", "2.2", "2.3", "2.4", "2.5", "3", "3.1", "3.2", "4",
                      "5", "5.1", "5.2", "5.3", "5.4", "5.5"}
_LOCATION = re.compile(r"^(?:Abstract|§(?P<sec>\d+(?:\.\d+)*)|Eq\. (?P<eq>\d+)"
                       r"|Table (?P<table>\d+)|Fig\. (?P<fig>\d+))"
                       r"(?: and (?:§\d+(?:\.\d+)*|Eq\. \d+|Table \d+|Fig\. \d+))?$")
PAPER_LIMITS = {"eq": 2, "table": 14, "fig": 5}
FAST_RCNN_LIMITS = {"eq": 4, "table": 11, "fig": 5}


def format_value(value) -> str:
    """The value as prose writes it: 20,000; 0.001; 128, 256, 512."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (tuple, list)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


_BY_KEY: Dict[str, Fact] = {f.key: f for f in FACTS}


def fact(key: str) -> Fact:
    """The fact registered as ``key``; a KeyError listing close keys otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        close = [k for k in _BY_KEY if key.split("_")[0] in k]
        raise KeyError(f"no paper fact {key!r} in frcnn_lite.paper_facts.FACTS"
                       + (f"; did you mean one of {close}?" if close else "")) from None


def value(key: str):
    """The value of a fact (``paper.value("rpn_batch") == 256``)."""
    return fact(key).value


def where(key: str) -> str:
    """Where a fact is, as prose cites it: ``§3.1.3``, ``Fast R-CNN §2.3``, ``py-faster-rcnn``."""
    f = fact(key)
    if f.source == "paper":
        return f.where
    if f.source == "fast_rcnn":
        return f"Fast R-CNN {f.where}"
    return _CITED_AS.get(f.source, f.source)


def cite(key: str) -> str:
    """The fact as a phrase with its location: ``"256 anchors per image (§3.1.3)"``."""
    f = fact(key)
    return f"{phrase(key)} ({where(key)})"


def phrase(key: str) -> str:
    """The fact's phrase without its location."""
    f = fact(key)

    def fill(match: re.Match) -> str:
        spec = match.group(1)
        return format(f.value, spec) if spec else format_value(f.value)

    return re.sub(r"\{value(?::([^}]*))?\}", fill, f.text).strip()


def location_problems(f: Fact) -> list:
    """What is wrong with a fact's source or location (empty when it is valid)."""
    found = []
    if f.source not in SOURCES:
        found.append(f"{f.key}: unknown source {f.source!r} (one of {sorted(SOURCES)})")
    if "{value" not in f.text:
        found.append(f"{f.key}: text has no {{value}} slot")
    if f.source in ("paper", "fast_rcnn"):
        sections = PAPER_SECTIONS if f.source == "paper" else FAST_RCNN_SECTIONS
        limits = PAPER_LIMITS if f.source == "paper" else FAST_RCNN_LIMITS
        for part in f.where.split(" and "):
            m = _LOCATION.match(part)
            if not m:
                found.append(f"{f.key}: location {part!r} is not '§N.N', 'Eq. N', 'Table N', "
                             f"'Fig. N' or 'Abstract' (arabic numbers, arXiv v3)")
                continue
            if m["sec"] and m["sec"] not in sections:
                found.append(f"{f.key}: {f.source} has no section {m['sec']}")
            for kind in ("eq", "table", "fig"):
                if m[kind] and not 1 <= int(m[kind]) <= limits[kind]:
                    found.append(f"{f.key}: {f.source} has no {kind} {m[kind]}")
    elif not f.where or "/" not in f.where and "." not in f.where:
        found.append(f"{f.key}: an implementation fact needs the file it is in")
    if isinstance(f.value, float) and not math.isfinite(f.value):
        found.append(f"{f.key}: value is not finite")
    return found
