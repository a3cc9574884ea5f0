"""The package's architecture: no import cycles, the book's machinery in its own room.

The import graph is read from the source (every ``import`` and ``from ... import``
of a ``frcnn_lite`` module, at module level or inside a function: a lazy import
is still a dependency), so a cycle fails here even when it happens to import.
"""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "frcnn_lite"
MAX_LINES = 400  # "readable in one sitting"; see the README's layout section
PLOTTING = ("matplotlib", "ipywidgets", "plotly", "bokeh", "IPython")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path):
    """``[(imported module, line, at module level?)]`` for every import in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            found.append((base, node.lineno, id(node) in top_level))
            # "from frcnn_lite import boxes" imports the module frcnn_lite.boxes
            found += [(f"{base}.{a.name}", node.lineno, id(node) in top_level)
                      for a in node.names if f"{base}.{a.name}" in MODULES]
    return found


def graph():
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _, _ in imports_of(path):
            while target and target not in MODULES:  # frcnn_lite.boxes.box_iou -> module
                target = target.rpartition(".")[0]
            if target and target != name and target != "frcnn_lite":
                targets.add(target)
        edges[name] = targets
    return edges


def find_cycle(edges):
    """One import cycle as a list of module names, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_inside_frcnn_lite():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    edges = graph()
    edges["frcnn_lite.boxes"] = edges["frcnn_lite.boxes"] | {"frcnn_lite.model"}
    assert find_cycle(edges) is not None  # model imports boxes (through rpn, fast_rcnn)


# The command line draws its detections with the book's colours (``detect --out``): the one
# place outside the book that may use frcnn_lite.book.viz, and nothing else of the book.
MAY_DRAW = {"frcnn_lite.__main__", "frcnn_lite.cli", "frcnn_lite.cli_predict"}


def test_the_detector_never_imports_the_books_machinery():
    for name, targets in graph().items():
        if not name.startswith("frcnn_lite.book"):
            allowed = {"frcnn_lite.book", "frcnn_lite.book.viz"} if name in MAY_DRAW else set()
            book = sorted(t for t in targets if t.startswith("frcnn_lite.book") and t not in allowed)
            assert not book, f"{name} imports {book}: the detector must not depend on the book"


def test_book_machinery_lives_in_its_subpackage():
    top_level = {n for n in MODULES if n.count(".") == 1}
    for name in ("viz", "widgets", "exercises", "experiments", "ablations", "speed",
                 "one_stage"):
        assert f"frcnn_lite.{name}" not in top_level, f"{name}.py belongs in frcnn_lite/book/"
    assert any(n.startswith("frcnn_lite.book.") for n in MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_readable_in_one_sitting(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("frcnn_lite.book")))
def test_no_plotting_import_at_module_level_outside_the_book(name):
    for target, line, top in imports_of(MODULES[name]):
        assert not (top and target.split(".")[0] in PLOTTING), (
            f"{name}:{line} imports {target} at module level: only frcnn_lite.book draws")


@pytest.mark.parametrize("old, new", [("frcnn_lite.viz", "frcnn_lite.book.viz"),
                                      ("frcnn_lite.exercises", "frcnn_lite.book.exercises"),
                                      ("frcnn_lite.widgets", "frcnn_lite.book.widgets"),
                                      ("frcnn_lite.experiments", "frcnn_lite.book.experiments"),
                                      ("frcnn_lite.ablations", "frcnn_lite.book.ablations"),
                                      ("frcnn_lite.one_stage", "frcnn_lite.book.one_stage"),
                                      ("frcnn_lite.speed", "frcnn_lite.book.speed")])
def test_old_import_paths_still_work(old, new):
    moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)
    assert moved.__name__ == new and moved.__spec__.name == new


def test_old_from_imports_still_work():
    from frcnn_lite import viz  # noqa: F401  (instructors' code written before the move)
    from frcnn_lite.exercises import WrongAnswer
    from frcnn_lite.model import FasterRCNNConfig, load_model  # noqa: F401
    from frcnn_lite.book.exercises import WrongAnswer as moved

    assert WrongAnswer is moved
