"""Old import paths of modules that moved into :mod:`frcnn_lite.book`.

``import frcnn_lite.viz`` (and ``from frcnn_lite import viz``) still work, so
that instructors' code written before the move keeps running: a small import
hook hands out the module under its new name, the very same module object.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {f"frcnn_lite.{name}": f"frcnn_lite.book.{name}"
         for name in ("viz", "widgets", "exercises", "experiments", "ablations", "one_stage",
                      "speed")}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._own = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module):
        # The import system has just stamped the alias's spec on the module: give it back its
        # own, so that the module still knows its real name and file.
        module.__spec__, module.__loader__ = self._own


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds ``frcnn_lite.<old name>`` and returns the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
