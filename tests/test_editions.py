"""Student and instructor editions (``python tools/book.py edition student|instructor``).

Both must build with warnings as errors; every solution (plain ``{solution}``
blocks and gated ``{solution-start}`` ... ``{solution-end}`` ones holding code
cells) must be absent from the student HTML and present in the instructor HTML.
A small fixture book (one Markdown page, one notebook) plants each kind of
solution; the real book's student edition is built too.
"""

import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402  (tools/book.py)

SECRETS = ("PLAIN_SOLUTION_TEXT", "GATED_SOLUTION_TEXT", "GATED_SOLUTION_CODE",
           "NB_PLAIN_SOLUTION", "NB_GATED_TEXT", "NB_GATED_CODE")
EXERCISES = ("EXERCISE_ONE", "EXERCISE_TWO", "NB_EXERCISE_ONE", "NB_EXERCISE_TWO")

PAGE = """# Fixture page

```{exercise}
:label: fx-ex1
EXERCISE_ONE
```

```{solution} fx-ex1
:class: dropdown
PLAIN_SOLUTION_TEXT
```

```{exercise}
:label: fx-ex2
EXERCISE_TWO
```

````{solution-start} fx-ex2
:class: dropdown
````

GATED_SOLUTION_TEXT

```python
print("GATED_SOLUTION_CODE")
```

````{solution-end}
````

After the exercises.
"""


def fixture_book(root: Path) -> Path:
    """A two-page book configured like ours (sphinx-exercise, MyST extensions)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.pop("bibtex_bibfiles", None)
    config["sphinx"]["config"].pop("bibtex_reference_style", None)
    config["exclude_patterns"] = ["_build", "_build/**"]
    # The book's own Sphinx extensions (tools/book_assets.py) stay where they are.
    extensions = config["sphinx"].get("local_extensions") or {}
    for name, where in extensions.items():
        extensions[name] = str(ROOT / where)
    (root / "_config.yml").write_text(yaml.safe_dump(config))
    (root / "_toc.yml").write_text("format: jb-book\nroot: page\nchapters:\n  - file: nb\n")
    (root / "page.md").write_text(PAGE)
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        md("# Fixture notebook"),
        md("```{exercise}\n:label: fx-nb-ex1\nNB_EXERCISE_ONE\n```\n\n"
           "```{solution} fx-nb-ex1\n:class: dropdown\nNB_PLAIN_SOLUTION\n```"),
        md("```{exercise}\n:label: fx-nb-ex2\nNB_EXERCISE_TWO\n```\n\n"
           "````{solution-start} fx-nb-ex2\n:class: dropdown\n````\n\nNB_GATED_TEXT"),
        code('print("NB_GATED_CODE")'),
        md("````{solution-end}\n````"),
        md("The end."),
    ])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nbformat.write(nb, root / "nb.ipynb")
    return root


def html_text(html_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(html_dir.rglob("*.html"))
                     if "_static" not in p.parts)


@pytest.fixture(scope="module")
def fixture_editions(tmp_path_factory):
    source = fixture_book(tmp_path_factory.mktemp("fixture"))
    out = tmp_path_factory.mktemp("fixture_out")
    return {e: html_text(book.build_edition(e, out / e, source=source)) for e in book.EDITIONS}


def test_fixture_student_edition_hides_every_solution(fixture_editions):
    student = fixture_editions["student"]
    assert [s for s in SECRETS if s in student] == []
    assert all(e in student for e in EXERCISES), "the exercises themselves must stay"
    assert "After the exercises." in student and "The end." in student


def test_fixture_instructor_edition_shows_every_solution(fixture_editions):
    instructor = fixture_editions["instructor"]
    assert [s for s in SECRETS if s not in instructor] == []
    assert all(e in instructor for e in EXERCISES)


def test_edition_config_leaves_config_alone(tmp_path):
    before = (ROOT / "_config.yml").read_text()
    student = yaml.safe_load(book.edition_config("student", tmp_path / "s.yml").read_text())
    instructor = yaml.safe_load(book.edition_config("instructor", tmp_path / "i.yml").read_text())
    assert student["sphinx"]["config"]["hide_solutions"] is True
    assert "hide_gated_solutions" in student["sphinx"]["local_extensions"]
    assert instructor["sphinx"]["config"]["hide_solutions"] is False
    assert (ROOT / "_config.yml").read_text() == before
    with pytest.raises(SystemExit, match="edition must be one of"):
        book.edition_config("teacher", tmp_path / "t.yml")


def count_solutions(html: str) -> int:
    return len(re.findall(r'<div class="solution[ "]', html))


def test_real_book_student_edition_builds_without_solutions(tmp_path):
    """The instructor edition of the real book is ``make book``'s build (tests/test_book.py)
    with one setting changed; the fixture above covers its command."""
    student = html_text(book.build_edition("student", tmp_path / "student"))
    assert count_solutions(student) == 0
    exercises = len(re.findall(r'<div class="exercise[ "]', student))
    toc = (ROOT / "_toc.yml").read_text()
    chapters = [p for p in (ROOT / "book").glob("*.ipynb") if p.stem in toc]
    if any("{exercise}" in p.read_text() for p in chapters):
        assert exercises > 0, "the student edition must keep the exercises"
