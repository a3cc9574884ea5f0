"""``python -m frcnn_lite train|evaluate|detect``: the command line lives in :mod:`frcnn_lite.cli`."""

import sys

from frcnn_lite.cli import build_parser, main  # noqa: F401  (build_parser: tests, docs)

if __name__ == "__main__":
    sys.exit(main())
