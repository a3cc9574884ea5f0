"""The committed chapters: executed, error-free, standard setup cell, listed in _toc.yml."""

import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import book  # noqa: E402  (tools/book.py)

CHAPTERS = book.chapter_paths()


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    stack = list(toc.get("chapters", [])) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])]
    while stack:
        entry = stack.pop(0)
        files.append(entry["file"])
        stack.extend(entry.get("sections", []))
    return files


def test_there_are_chapters():
    assert len(CHAPTERS) >= 1


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_committed_executed_without_errors(path):
    assert book.problems(path) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_is_in_toc_and_checks_something(path):
    assert f"book/{path.stem}" in toc_files(), f"{path.name} is missing from _toc.yml"
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in sources), "no deterministic output is checked"
    assert any("assert " in s for s in sources), "no cell asserts a result"


def test_problems_detects_unexecuted_and_errors(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T"),
                nbformat.v4.new_code_cell(book.setup_cell_source()),
                nbformat.v4.new_code_cell("1 + 1")]
    nb.cells[1].execution_count = 1
    nb.cells[2].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="x", traceback=[])]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    found = " ".join(book.problems(path))
    assert "never executed" in found and "stored an error" in found


def test_setup_cell_installs_only_when_missing():
    source = book.setup_cell_source()
    assert 'find_spec("frcnn_lite") is None' in source
    assert book.repository_url() in source
    assert "pick_device" in source and "seed_everything" in source


def test_problems_detects_a_stored_warning(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T"),
                nbformat.v4.new_code_cell(book.setup_cell_source()),
                nbformat.v4.new_code_cell("float(x)")]
    for i, cell in enumerate(nb.cells[1:]):
        cell.execution_count = i + 1
    nb.cells[2].outputs = [nbformat.v4.new_output(
        "stream", name="stderr", text="x.py:3: UserWarning: Converting a tensor ...\n")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert "stored a warning (x.py:3: UserWarning" in " ".join(book.problems(path))
