"""The code a reader opens is short enough to read and fits the page.

Every object a chapter displays with ``show_source`` is found by reading the
notebooks (the names come from the chapter's own ``from frcnn_lite... import``
lines), and its rendered source (``viz.rendered_source``) must be at most
``MAX_LINES`` lines, docstring included, and at most ``MAX_WIDTH`` characters
wide: the rendered book's column shows about 80 characters at a 1280-px window
without scrolling. Code cells of the notebooks are held to the same width.
A longer object needs an entry in ``LONGER`` with the reason, and the chapter
says why it is longer.
"""

import ast
import importlib
import json
from pathlib import Path

import pytest

from frcnn_lite.book.viz import rendered_source

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 40
MAX_WIDTH = 80

# Shown objects allowed to be longer than MAX_LINES, each with the reason the chapter gives.
LONGER = {
}


def code_cells(path: Path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            yield "".join(cell["source"])


def parse(source: str):
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def shown_objects():
    """``[(chapter, expression, object)]`` for every ``show_source(expression)`` call."""
    found = []
    for path in CHAPTERS:
        names, calls = {}, []
        for tree in filter(None, map(parse, code_cells(path))):
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("frcnn_lite"):
                    names.update({a.asname or a.name: (node.module, a.name) for a in node.names})
                elif isinstance(node, ast.Import):
                    names.update({a.asname or a.name: (a.name, None) for a in node.names
                                  if a.name.startswith("frcnn_lite") and a.asname})
                elif (isinstance(node, ast.Call) and node.args
                      and getattr(node.func, "attr", getattr(node.func, "id", "")) == "show_source"):
                    calls.append(ast.unparse(node.args[0]))
        for expression in calls:
            try:
                obj = resolve(expression, names)
            except (KeyError, AttributeError, ImportError) as error:
                obj = error  # reported by the test of this object, not at collection
            found.append((path.stem[:2], expression, obj))
    return found


def resolve(expression: str, names: dict):
    head, *rest = expression.split(".")
    module, attribute = names[head]
    obj = importlib.import_module(module)
    if attribute:
        obj = (getattr(obj, attribute) if hasattr(obj, attribute)
               else importlib.import_module(f"{module}.{attribute}"))
    for part in rest:
        obj = getattr(obj, part)
    return obj


SHOWN = shown_objects()


def qualified(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def test_chapters_show_library_code():
    assert len(SHOWN) >= 40  # 44 objects across the chapters when this test was written
    assert {chapter for chapter, _, _ in SHOWN} >= {"01", "03", "05", "07", "08", "10"}


@pytest.mark.parametrize("chapter, expression, obj", SHOWN,
                         ids=[f"{c}-{e}" for c, e, _ in SHOWN])
def test_shown_code_is_short_and_fits_the_column(chapter, expression, obj):
    assert not isinstance(obj, Exception), (
        f"chapter {chapter} shows {expression}, which its imports do not name: {obj!r}")
    lines = rendered_source(obj).splitlines()
    limit = MAX_LINES if qualified(obj) not in LONGER else LONGER[qualified(obj)][0]
    assert len(lines) <= limit, (
        f"chapter {chapter} shows {expression}: {len(lines)} lines (limit {limit}); move input "
        f"checks into one call to a named check, or add it to LONGER with the reason")
    wide = [(i + 1, len(line)) for i, line in enumerate(lines) if len(line) > MAX_WIDTH]
    assert not wide, f"chapter {chapter} shows {expression}: lines wider than {MAX_WIDTH}: {wide}"


def test_exceptions_are_still_needed():
    shown = {qualified(obj): len(rendered_source(obj).splitlines()) for _, _, obj in SHOWN
             if not isinstance(obj, Exception)}
    for name, (limit, reason) in LONGER.items():
        assert name in shown, f"{name} is no longer shown: remove it from LONGER"
        assert shown[name] > MAX_LINES, f"{name} now fits {MAX_LINES} lines: remove it from LONGER"
        assert reason


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_code_fits_the_column(path):
    wide = [(n, line) for n, source in enumerate(code_cells(path))
            for line in source.splitlines() if len(line) > MAX_WIDTH]
    assert not wide, f"{path.name}: code lines wider than {MAX_WIDTH}: {wide[:5]}"
