"""Developer tooling for the book's notebooks (not part of the library).

    python tools/book.py execute [NAME ...]   re-execute chapters in place (all by default)
    python tools/book.py check [NAME ...]     report unexecuted cells, stored errors, a stale setup cell
    python tools/book.py sync                 rewrite every chapter's setup cell from SETUP_CELL
    python tools/book.py new NAME "Title"     start a chapter from the template
    python tools/book.py edition student      the book with solutions hidden -> _build/student
    python tools/book.py edition instructor   the book with solutions shown  -> _build/instructor

NAME is a notebook's file name with or without ``.ipynb`` ("03_anchors"), or a
unique prefix ("03"). ``make notebooks`` and ``make notebook NB=03`` call this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SETUP_TAG = "hide-input"


def repository_url() -> str:
    """The repository URL, set once in ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def setup_cell_source() -> str:
    """The first code cell of every chapter (identical everywhere; a test checks)."""
    return f'''# Setup: on Colab, fetch and install frcnn_lite; locally and in CI this does nothing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("frcnn_lite") is None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", "{repository_url()}", "/content/frcnn-lite"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/frcnn-lite"], check=True)
    sys.path.insert(0, "/content/frcnn-lite")
import torch
import frcnn_lite

frcnn_lite.seed_everything(0)
device = frcnn_lite.pick_device()  # cuda on a Colab GPU runtime, else cpu
print(f"frcnn_lite {{frcnn_lite.__version__}}, torch {{torch.__version__}}, device: {{device}}")'''


def chapter_paths(names: List[str] | None = None) -> List[Path]:
    """The chapter notebooks in ``book/``, all or those named."""
    every = sorted(p for p in BOOK.glob("*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        hits = [p for p in every if p.stem == stem] or [p for p in every if p.stem.startswith(stem)]
        if len(hits) != 1:
            raise SystemExit(f"{name!r} matches {len(hits)} notebooks in book/: {[p.name for p in hits]}")
        chosen.append(hits[0])
    return chosen


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def sync_setup_cell(nb) -> bool:
    """Make the first code cell the canonical setup cell; True when it changed."""
    cell = first_code_cell(nb)
    source = setup_cell_source()
    if cell is None:
        nb.cells.insert(1 if nb.cells else 0, nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]}))
        return True
    changed = cell.source != source or SETUP_TAG not in cell.metadata.get("tags", [])
    cell.source = source
    tags = cell.metadata.setdefault("tags", [])
    if SETUP_TAG not in tags:
        tags.append(SETUP_TAG)
    return changed


def problems(path: Path) -> List[str]:
    """What is wrong with a committed chapter: never-executed cells, errors, stale setup."""
    nb = nbformat.read(path, as_version=4)
    found = []
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    if unexecuted:
        found.append(f"{path.name}: {len(unexecuted)} of {len(code)} code cells were never executed "
                     f"(run: make notebook NB={path.stem})")
    for i, cell in enumerate(code):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"{path.name}: code cell {i} stored an error: {out.get('ename')}: {out.get('evalue')}")
    cell = first_code_cell(nb)
    if cell is None or cell.source != setup_cell_source():
        found.append(f"{path.name}: the first code cell is not the standard setup cell (run: python tools/book.py sync)")
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.lstrip().startswith("# "):
        found.append(f"{path.name}: the first cell must be a markdown title '# ...'")
    return found


def execute(paths: List[Path], timeout: int = 900) -> None:
    """Re-execute notebooks in place (cwd = book/), printing each one's wall time."""
    from nbclient import NotebookClient

    os.environ.pop("MPLBACKEND", None)  # the kernel must use the inline backend, or figures vanish
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        sync_setup_cell(nb)
        start = time.perf_counter()
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(BOOK)}})
        client.execute()
        seconds = time.perf_counter() - start
        nb.metadata.setdefault("frcnn_lite", {})["execution_seconds"] = round(seconds, 1)
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {seconds:.1f} s", flush=True)


def new_chapter(name: str, title: str) -> Path:
    """Create ``book/NAME.ipynb`` following shared/chapter-template.md."""
    path = BOOK / f"{name.removesuffix('.ipynb')}.ipynb"
    if path.exists():
        raise SystemExit(f"{path} exists")
    md = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [
        md(f"# {title}\n\nWhat you will build, which part of the paper it covers, and the picture "
           f"you will end with.\n\nLibrary: `frcnn_lite.MODULE`"),
        nbformat.v4.new_code_cell(setup_cell_source(), metadata={"tags": [SETUP_TAG]}),
        md("## The idea"), md("## The equation"), md("## The code"), md("## The check"),
        md("## What it costs"), md("## Summary"), md("## Exercises"),
    ]
    nbformat.write(nb, path)
    return path


EDITIONS = ("student", "instructor")


def edition_config(edition: str, path: Path, source: Path = ROOT) -> Path:
    """Write ``source/_config.yml`` with solutions hidden (student) or shown (instructor).

    The student edition sets sphinx-exercise's ``hide_solutions`` and loads
    ``tools/hide_gated_solutions.py``, which also removes gated solutions
    (``solution-start`` ... ``solution-end``) that ``hide_solutions`` alone
    leaves in the page. ``_config.yml`` itself is never changed.
    """
    if edition not in EDITIONS:
        raise SystemExit(f"edition must be one of {EDITIONS}, got {edition!r}")
    config = yaml.safe_load((source / "_config.yml").read_text())
    sphinx = config.setdefault("sphinx", {}) or {}
    config["sphinx"] = sphinx
    sphinx.setdefault("config", {})["hide_solutions"] = edition == "student"
    if edition == "student":
        sphinx.setdefault("local_extensions", {})["hide_gated_solutions"] = str(ROOT / "tools")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Generated by tools/book.py edition {edition}; edit _config.yml instead.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def build_edition(edition: str, output: Path | None = None, source: Path = ROOT) -> Path:
    """Build one edition with warnings as errors; returns the folder holding index.html."""
    import subprocess

    output = Path(output) if output is not None else source / "_build" / edition
    config = edition_config(edition, output / f"_config.{edition}.yml", source)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(source), "--config", str(config),
               "--path-output", str(output), "-W", "-n", "--keep-going"]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(f"the {edition} edition failed to build (warnings are errors); see above")
    html = output / "_build" / "html"
    print(f"The {edition} edition is in {html / 'index.html'}")
    return html


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("execute", "check"):
        p = sub.add_parser(command)
        p.add_argument("names", nargs="*")
    sub.add_parser("sync")
    p = sub.add_parser("edition", help="build the student or instructor edition")
    p.add_argument("edition", choices=EDITIONS)
    p.add_argument("--output", type=Path, default=None,
                   help="output folder (default _build/<edition>); HTML lands in <output>/_build/html")
    p = sub.add_parser("new")
    p.add_argument("name")
    p.add_argument("title")
    args = parser.parse_args(argv)
    if args.command == "execute":
        execute(chapter_paths(args.names))
    elif args.command == "check":
        found = [msg for path in chapter_paths(args.names) for msg in problems(path)]
        print("\n".join(found) or "all chapters executed, without errors, with the standard setup cell")
        return 1 if found else 0
    elif args.command == "sync":
        for path in chapter_paths():
            nb = nbformat.read(path, as_version=4)
            if sync_setup_cell(nb):
                nbformat.write(nb, path)
                print(f"{path.name}: setup cell rewritten (re-execute it)")
    elif args.command == "edition":
        build_edition(args.edition, args.output)
    elif args.command == "new":
        print(new_chapter(args.name, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
