"""The README's book command builds a site with no broken internal links or images."""

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and ((tag == "a" and name == "href") or (tag in ("img", "script") and name == "src")
                          or (tag == "link" and name == "href")):
                self.refs.append((tag, value))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run([str(JUPYTER_BOOK), "build", str(ROOT), "--path-output", str(out), "-W", "-n",
                             "--keep-going"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


def test_every_toc_entry_is_rendered(site):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for c in toc["chapters"]]
    for name in files:
        assert (site / f"{name}.html").exists(), f"{name} was not rendered"
    assert (site / "index.html").exists()


def test_no_broken_internal_links_or_images(site):
    broken = []
    for page in site.rglob("*.html"):
        if "_static" in page.relative_to(site).parts:  # theme templates, not pages
            continue
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for tag, ref in parser.refs:
            url = urlparse(ref)
            if url.scheme or ref.startswith(("#", "mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if url.path and not target.exists():
                broken.append(f"{page.relative_to(site)}: <{tag}> {ref}")
    assert not broken, "\n".join(broken[:30])


def test_chapters_have_colab_button_and_figures(site):
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        html = (site / "book" / f"{nb.stem}.html").read_text()
        assert "colab.research.google.com/github/" in html, f"{nb.stem} has no Colab button"
        assert re.search(r"<img[^>]+src=\"[^\"]+\.png\"", html), f"{nb.stem} shows no figure"
