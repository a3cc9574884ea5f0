"""Sphinx extension: ship the scripts the rendered book needs, so it works offline.

Jupyter Book 1.x loads it from ``_config.yml`` (``sphinx.local_extensions``).
At every build it copies, from installed Python packages (nothing is fetched):

- MathJax 3 (the ``django-static-mathjax`` wheel, which carries MathJax's own
  ``es5`` build): ``tex-svg.js`` and the TeX extensions it may autoload, into
  ``_static/mathjax``. SVG output needs no web fonts, which browsers refuse to
  load from ``file://`` pages. ``_config.yml`` points ``mathjax_path`` at it.
- BokehJS (the ``bokeh`` package that made the explorers' figures) into
  ``_static/bokeh``, linked only from pages that hold an explorer
  (``frcnn_lite.book.explorers``), and a few lines of CSS that hide the
  explorers' still fallback once the live figure is there.
- Two fixes that keep every page free of console errors (see ``_page_scripts``).

Run as a script it prints what it would copy and the total size.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

EXPLORER_CLASS = "frcnn-explorer"  # frcnn_lite.book.explorers.CSS_CLASS (not imported: Sphinx
#                                    loads this file before the library is importable)
BOKEH_FILES = ("bokeh.min.js", "bokeh-widgets.min.js")
CSS = f""".{EXPLORER_CLASS}-fallback {{ display: none; }}
.{EXPLORER_CLASS} {{ margin: 0.5em 0 1em 0; }}
"""


def mathjax_dir() -> Path:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax``."""
    try:
        import mathjax
    except ImportError as error:
        raise RuntimeError("the book ships MathJax from the 'django-static-mathjax' package: "
                           "pip install -r requirements.txt") from error
    folder = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (folder / "tex-svg.js").is_file():
        raise RuntimeError(f"{folder} has no tex-svg.js: reinstall django-static-mathjax "
                           f"(pip install --force-reinstall django-static-mathjax).")
    return folder


def bokeh_dir() -> Path:
    import bokeh

    return Path(bokeh.__file__).parent / "server" / "static" / "js"


def assets() -> list[tuple[Path, str]]:
    """``(source file, path under _static)`` for every file the site needs."""
    mj = mathjax_dir()
    files = [(mj / "tex-svg.js", "mathjax/tex-svg.js")]
    files += [(f, f"mathjax/{f.relative_to(mj).as_posix()}")
              for f in sorted((mj / "input" / "tex" / "extensions").rglob("*.js"))]
    files += [(bokeh_dir() / name, f"bokeh/{name}") for name in BOKEH_FILES]
    return files


def _copy_assets(app) -> None:
    static = Path(app.outdir).parent / "book_assets"  # beside _build/html, never in the source
    static.mkdir(parents=True, exist_ok=True)
    for source, relative in assets():
        target = static / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime \
                or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    (static / "frcnn-explorers.css").write_text(CSS)
    app.config.html_static_path.append(str(static))


def _page_scripts(app, pagename, templatename, context, doctree) -> None:
    if EXPLORER_CLASS in context.get("body", ""):
        for name in BOKEH_FILES:
            app.add_js_file(f"bokeh/{name}")
    # Jupyter Book 1.x registers sphinx-thebe's and sphinx-togglebutton's inline
    # configuration twice; the second `const THEBE_JS_URL` is a SyntaxError on every
    # page. Keep the first copy of each script.
    seen, scripts = set(), []
    for script in context.get("script_files", []):
        key = (str(getattr(script, "filename", script) or ""),  # None and "" both mean inline
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts
    # pydata-sphinx-theme logs an error on a reader's first visit when no mode is
    # set, then falls back to "auto"; say "auto" up front.
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app):
    app.connect("builder-inited", _copy_assets)
    app.connect("html-page-context", _page_scripts, priority=900)  # after the others
    app.add_css_file("frcnn-explorers.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    total = 0
    for source, relative in assets():
        total += source.stat().st_size
        if "--list" in sys.argv:
            print(f"{source.stat().st_size:>9}  _static/{relative}")
    print(f"{len(assets())} files, {total / 1e6:.1f} MB")
