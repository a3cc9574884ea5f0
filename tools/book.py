"""Developer tooling for the book's notebooks (not part of the library).

    python tools/book.py execute [NAME ...]   re-execute chapters in place (all by default), bind
                                              their prose to the run, record their wall time
    python tools/book.py render [NAME ...]    re-render bound prose from the stored values (no run)
    python tools/book.py unrender NAME        put the templates back into the prose, for editing
    python tools/book.py tables               write the generated appendix pages (settings,
                                              timings, paper facts), the intro's timing line
                                              and book/instructor_guide.md (from chapter 11)
    python tools/book.py check [NAME ...]     report unexecuted cells, stored errors, a stale setup cell
    python tools/book.py sync                 rewrite every chapter's setup cell from SETUP_CELL
    python tools/book.py new NAME "Title"     start a chapter from the template
    python tools/book.py edition student      the book with solutions hidden -> _build/student
    python tools/book.py edition instructor   the book with solutions shown  -> _build/instructor

NAME is a notebook's file name with or without ``.ipynb`` ("03_anchors"), or a
unique prefix ("03"). ``make notebooks`` and ``make notebook NB=03`` call this.

Numbers bound to runs (issue 16). A code cell calls
``frcnn_lite.book.bind.bind(name=value)``; a markdown cell writes ``{{name:.0f}}``
(or ``{{paper.KEY}}`` for a fact of ``frcnn_lite.paper``). ``execute`` keeps such
a cell's source as its template (cell metadata ``frcnn_lite.template``), runs the
chapter with ``FRCNN_LITE_BIND=1`` so ``bind`` emits its values, moves them into
the code cell's metadata (``frcnn_lite.bound``) and writes the rendered text into
the markdown source: GitHub, Colab and the built site all show plain numbers.
``tests/test_prose_bindings.py`` fails when a rendered cell is stale or a number
in prose is not bound. See frcnn_lite/book/bind.py and /work/notes/binding-howto.md.

Timings: ``execute`` writes each chapter's wall time, device and machine into
``book/_timings.json`` (one entry per chapter and device kind); ``tables`` turns
it into ``book/appendix_timings.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Dict, List

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SETUP_TAG = "hide-input"
TIMINGS = BOOK / "_timings.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def repository_url() -> str:
    """The repository URL, set once in ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def setup_cell_source() -> str:
    """The first code cell of every chapter (identical everywhere; a test checks)."""
    return f'''# Setup: on Colab, fetch and install frcnn_lite; elsewhere this does nothing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("frcnn_lite") is None:
    url = "{repository_url()}"
    where = "/content/frcnn-lite"
    subprocess.run(["git", "clone", "-q", "--depth", "1", url, where],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", where],
                   check=True)
    sys.path.insert(0, where)
import torch
import frcnn_lite

frcnn_lite.seed_everything(0)
device = frcnn_lite.pick_device()  # cuda on a Colab GPU runtime, else cpu
print(f"frcnn_lite {{frcnn_lite.__version__}}, torch {{torch.__version__}}, "
      f"device: {{device}}")'''


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
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr" \
                    and "Warning" in out.get("text", ""):
                first_line = out["text"].strip().splitlines()[0][:120]
                found.append(f"{path.name}: code cell {i} stored a warning ({first_line}); fix "
                             f"its cause rather than showing it to readers")
    cell = first_code_cell(nb)
    if cell is None or cell.source != setup_cell_source():
        found.append(f"{path.name}: the first code cell is not the standard setup cell (run: python tools/book.py sync)")
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.lstrip().startswith("# "):
        found.append(f"{path.name}: the first cell must be a markdown title '# ...'")
    return found


def hand_edited_cells(nb) -> List[int]:
    """Markdown cells with a template whose source is not the template's rendering.

    Such a cell was edited by hand after rendering; rendering again would throw
    the edit away, so ``execute`` and ``render`` refuse (edit the template).
    """
    from frcnn_lite.book import bind

    try:
        values = bind.stored_values(nb)
    except ValueError:
        return []
    found = []
    for index, cell in enumerate(nb.cells):
        template = cell.metadata.get("frcnn_lite", {}).get("template") \
            if cell.cell_type == "markdown" else None
        if template is None or bind.SLOT.search(cell.source):
            continue  # no template, or a new template waiting to be adopted
        try:
            if bind.render(template, values) != cell.source:
                found.append(index)
        except (KeyError, ValueError, TypeError, IndexError):
            continue
    return found


def _refuse_hand_edits(path: Path, nb) -> None:
    edited = hand_edited_cells(nb)
    if edited:
        raise SystemExit(f"{path.name}: markdown cells {edited} differ from their templates' "
                         f"rendering: edited by hand after their numbers were bound (rendering "
                         f"would overwrite the edit), or a fact they quote from frcnn_lite/paper.py "
                         f"changed. Run `tools/book.py unrender {path.stem}`, edit the templates "
                         f"({{{{name}}}} slots visible) if needed, then render or execute again.")


def _render(path: Path, nb) -> List[str]:
    from frcnn_lite.book import bind

    errors = bind.render_notebook(nb)
    return [f"{path.name}: markdown cell {i}: {message}" for i, message in errors.items()]


def device_of(nb) -> str:
    """The device the setup cell printed ("cpu", "cuda", "mps")."""
    cell = first_code_cell(nb)
    text = "".join(out.get("text", "") for out in (cell.get("outputs", []) if cell else []))
    match = re.search(r"device: (\w+)", text)
    return match.group(1) if match else "unknown"


def machine_description(device: str) -> str:
    if device == "cuda":
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001  (a description only)
            return "GPU"
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_timing(path: Path, nb, seconds: float, load_before: float,
                  kernel_cpu_seconds: float | None = None) -> Dict[str, object]:
    """Store a chapter's wall time in ``book/_timings.json`` (one entry per device kind).

    ``kernel_cpu_seconds`` is the CPU time the kernel process used (user + system, all
    threads): unlike the wall time it hardly depends on what else the machine runs.
    """
    device = device_of(nb)
    entry = {"seconds": round(seconds, 1), "device": device,
             "kernel_cpu_seconds": round(kernel_cpu_seconds, 1)
             if kernel_cpu_seconds is not None else None,
             "machine": machine_description(device), "cpus": os.cpu_count(),
             "load_before": round(load_before, 2) if load_before == load_before else None,
             "date": datetime.date.today().isoformat()}
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    timings.setdefault(path.stem, {})["gpu" if device == "cuda" else "cpu"] = entry
    TIMINGS.write_text(json.dumps(dict(sorted(timings.items())), indent=1) + "\n")
    return entry


def execute(paths: List[Path], timeout: int = 900) -> int:
    """Re-execute notebooks in place (cwd = book/): bind their prose, record their wall time."""
    from nbclient import NotebookClient

    from frcnn_lite.book import bind

    os.environ.pop("MPLBACKEND", None)  # the kernel must use the inline backend, or figures vanish
    failures = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        _refuse_hand_edits(path, nb)
        sync_setup_cell(nb)
        bind.adopt_templates(nb)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        start, cpu_start = time.perf_counter(), _children_cpu_seconds()
        os.environ[bind.ENV] = "1"  # the kernel inherits it: bind() emits its values
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(BOOK)}})
            client.execute()
        finally:
            os.environ.pop(bind.ENV, None)
        seconds = time.perf_counter() - start
        kernel_cpu = _children_cpu_seconds() - cpu_start  # the kernel has exited and been reaped
        bind.collect_outputs(nb)
        errors = _render(path, nb)
        nb.metadata.setdefault("frcnn_lite", {})["execution_seconds"] = round(seconds, 1)
        nbformat.write(nb, path)
        entry = record_timing(path, nb, seconds, load_before, kernel_cpu)
        print(f"{path.name}: executed in {seconds:.1f} s on {entry['machine']} (kernel CPU "
              f"time {kernel_cpu:.0f} s; load average before: {entry['load_before']})", flush=True)
        for message in errors:
            print(message, file=sys.stderr)
        failures += errors
    return 1 if failures else 0


def render(paths: List[Path]) -> int:
    """Re-render every bound markdown cell from the values stored in the notebook."""
    from frcnn_lite.book import bind

    failures = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        _refuse_hand_edits(path, nb)
        bind.adopt_templates(nb)
        errors = _render(path, nb)
        nbformat.write(nb, path)
        failures += errors
        print(f"{path.name}: rendered" + (f" with {len(errors)} errors" if errors else ""))
    print("\n".join(failures), file=sys.stderr)
    return 1 if failures else 0


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
    # The edition's config file lives in the output folder: make the book's own extension
    # paths (relative to the source) absolute, or Sphinx looks for them beside that file.
    extensions = sphinx.get("local_extensions") or {}
    for name, where in extensions.items():
        extensions[name] = str((source / where).resolve())
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
    for command in ("execute", "check", "render"):
        p = sub.add_parser(command)
        p.add_argument("names", nargs="*")
    p = sub.add_parser("unrender")
    p.add_argument("names", nargs="+")
    sub.add_parser("sync")
    sub.add_parser("tables", help="write the generated pages (appendices, intro line, "
                                   "instructor guide)")
    p = sub.add_parser("edition", help="build the student or instructor edition")
    p.add_argument("edition", choices=EDITIONS)
    p.add_argument("--output", type=Path, default=None,
                   help="output folder (default _build/<edition>); HTML lands in <output>/_build/html")
    p = sub.add_parser("new")
    p.add_argument("name")
    p.add_argument("title")
    args = parser.parse_args(argv)
    if args.command == "execute":
        return execute(chapter_paths(args.names))
    elif args.command == "render":
        return render(chapter_paths(args.names))
    elif args.command == "unrender":
        from frcnn_lite.book import bind

        for path in chapter_paths(args.names):
            nb = nbformat.read(path, as_version=4)
            count = bind.unrender_notebook(nb)
            nbformat.write(nb, path)
            print(f"{path.name}: {count} templates put back into the prose; edit them, then "
                  f"`tools/book.py render {path.stem}`")
    elif args.command == "tables":
        import book_tables

        for written in book_tables.write_all():
            print(f"wrote {written.relative_to(ROOT)}")
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
