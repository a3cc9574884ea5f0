"""Sphinx extension for the student edition: hide *gated* solutions too.

sphinx-exercise's ``hide_solutions = True`` drops ``{solution}`` blocks, but a
gated solution (``{solution-start}`` ... code cells ... ``{solution-end}``,
the form used when a solution contains executable code) breaks the build:
the start directive returns nothing, so the text and code cells in between
stay in the page and the orphaned ``solution_end_node`` has no HTML writer
("unknown node type: solution_end_node"). With this extension loaded and
``hide_solutions`` on, ``solution-start`` leaves a marker and a transform
removes everything from the marker through the matching ``solution-end``.
With ``hide_solutions`` off it does nothing.

``python tools/book.py edition student`` loads it (via ``local_extensions``
in the temporary configuration it writes); ``_config.yml`` need not name it.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.transforms import SphinxTransform
from sphinx_exercise.directive import SolutionStartDirective
from sphinx_exercise.nodes import solution_end_node


class hidden_solution_start(nodes.Element):
    """Marks where a hidden gated solution starts (never reaches a writer)."""


class HiddenSolutionStart(SolutionStartDirective):
    def run(self):
        produced = super().run()  # registers the gated pair, so structure checks still run
        if not self.env.app.config.hide_solutions:
            return produced
        return [hidden_solution_start()]


class RemoveHiddenSolutions(SphinxTransform):
    """Delete each hidden solution: the marker, its content, and its ``solution-end``."""

    default_priority = 5  # after the gated-structure check (1), before the merges (10)

    def apply(self, **kwargs):
        for marker in list(self.document.findall(hidden_solution_start)):
            parent = marker.parent
            start = parent.index(marker)
            end = next((i for i in range(start + 1, len(parent.children))
                        if isinstance(parent.children[i], solution_end_node)), None)
            if end is None:  # CheckGatedDirectives reports the unmatched start
                parent.remove(marker)
                continue
            for child in parent.children[start:end + 1]:
                parent.remove(child)


def setup(app):
    app.setup_extension("sphinx_exercise")
    app.add_node(hidden_solution_start)
    app.add_directive("solution-start", HiddenSolutionStart, override=True)
    app.add_transform(RemoveHiddenSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
