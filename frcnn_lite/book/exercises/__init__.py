"""Checkers for the book's coding exercises: run the student's answer, say what is wrong.

Every checker has the same shape::

    check_<thing>(answer, **settings) -> str

- ``answer`` is the student's *function* (the checker calls it on its own
  hand-made cases, chosen so that each typical mistake shows); the anchor
  checkers also accept the *tensor* the function returned for the default
  settings.
- On a right answer the checker prints a one-line verdict starting with
  ``"correct:"`` and returns it.
- On a wrong answer it raises :class:`WrongAnswer` (a subclass of
  ``AssertionError``, so a notebook cell, pytest and ``nbval`` all fail
  loudly) whose message names the mistake and how to fix it, e.g. "your
  anchors have the right areas but h and w are swapped". When the answer is
  wrong in no way the checker recognises, the message shows the first
  differing value, what was expected and the input that produced it.

The library itself is the oracle (``frcnn_lite.boxes``, ``anchors``, ``rpn``,
``evaluate``; ``torchvision.ops.roi_pool`` for RoI pooling). Each known
mistake is a small variant of the right computation (``_iou(...,
plus_one=True)``, ...); a checker compares the answer with every variant and
reports the one it matches. tests/test_exercises.py plants each mistake and
checks its diagnosis.

Graders for chapter 11's ablation assignments (:func:`grade_anchor_coverage`,
:func:`grade_anchor_scale_ablation`) follow the same convention; they grade
the student's *choices* (anchor scales) and *results tables* rather than a
function.

One module per library module that the exercises rebuild, so a checker sits
under the name of what it checks:

- ``boxes``      chapter 1 (IoU) and chapter 4 (Eq. 2 encode / decode)
- ``anchors``    chapter 3 (base anchors, grid anchors)
- ``rpn``        chapter 5 (anchor labels, Eq. 1)
- ``roi_pool``   chapter 7 (RoI max pooling)
- ``evaluate``   chapter 10 (VOC AP)
- ``ablations``  chapter 11 (graded assignments)
- ``_common``    what they share (:class:`WrongAnswer`, calling and comparing)

Every checker is importable from here: ``from frcnn_lite.book.exercises
import check_box_iou``.
"""

from frcnn_lite.book.exercises._common import WrongAnswer
from frcnn_lite.book.exercises.ablations import grade_anchor_coverage, \
    grade_anchor_scale_ablation
from frcnn_lite.book.exercises.anchors import check_base_anchors, check_grid_anchors
from frcnn_lite.book.exercises.boxes import check_box_iou, check_decode_boxes, \
    check_encode_boxes
from frcnn_lite.book.exercises.evaluate import check_voc_ap
from frcnn_lite.book.exercises.roi_pool import _roi_pool  # noqa: F401 (a reference loop)
from frcnn_lite.book.exercises.roi_pool import check_roi_pool
from frcnn_lite.book.exercises.rpn import check_label_anchors, check_rpn_loss

__all__ = ["WrongAnswer", "check_box_iou", "check_base_anchors", "check_grid_anchors",
           "check_encode_boxes", "check_decode_boxes", "check_label_anchors", "check_rpn_loss",
           "check_roi_pool", "check_voc_ap", "grade_anchor_coverage",
           "grade_anchor_scale_ablation"]
