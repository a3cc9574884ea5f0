"""frcnn_lite: a small, readable Faster R-CNN (Ren et al., 2015), built by the book.

One module per concept of the paper (see the book's preface for the map):

- ``boxes``      box conventions, IoU, clipping, Eq. 2 encode/decode (ch. 1, 4)
- ``anchors``    base/grid anchors, anchor labelling and sampling (ch. 3, 5)
- ``datasets``   the synthetic shapes dataset and its VOC/COCO exports (ch. 1)
- ``viz``        drawing boxes, the book's colours (every chapter)

Nothing here imports matplotlib at import time; ``viz`` does when it is used.
"""

from frcnn_lite.utils import pick_device, seed_everything

__version__ = "0.1.0"

__all__ = ["__version__", "pick_device", "seed_everything"]
