"""The book's own machinery, kept apart from the detector.

Nothing in the detector, training, evaluation or data modules of ``frcnn_lite``
imports from here; these modules serve the chapters:

- ``viz``          drawing boxes and images in the book's colours; ``show_source``
- ``widgets``      ipywidgets explorers (live in Jupyter and Colab)
- ``exercises``    checkers for the coding exercises and graders for chapter 11
- ``experiments``  cached ablation grids (chapter 11)
- ``ablations``    ablations on the demo model's frozen backbone (chapter 11)
- ``one_stage``    the one-stage baseline of Table 10 (chapter 11)
- ``speed``        careful timing, per-stage times (Table 5), a torchvision twin (chapter 13)

The old flat names (``frcnn_lite.viz``, ``frcnn_lite.exercises``, ...) still
import: ``frcnn_lite._moved`` maps them here.
"""
