"""frcnn_lite: a small, readable Faster R-CNN (Ren et al., 2015), built by the book.

One module per concept of the paper (see the book's preface for the map):

- ``boxes``       box conventions, IoU, clipping, Eq. 2 encode/decode (ch. 1, 4)
- ``datasets``    the synthetic shapes dataset and its VOC/COCO exports (ch. 1)
- ``backbones``   tiny, ZF-like, VGG-16, ResNet C4: the shared feature map (ch. 2)
- ``config``      named presets: the paper's settings and the shapes settings (ch. 3)
- ``anchors``     base/grid anchors, anchor labelling and sampling (ch. 3, 5)
- ``rpn``         RPN head, Eq. 1 loss, proposal layer (ch. 5, 6)
- ``roi_pool``    RoI max pooling from scratch (ch. 7)
- ``fast_rcnn``   RoI sampling, the detection head, loss, post-processing (ch. 8)
- ``transform``   resize, normalise and batch images; map boxes back (ch. 9)
- ``model``       FasterRCNN: backbone + RPN + RoI head; the demo model (ch. 9)
- ``stages``      which parameters each training stage trains (ch. 9)
- ``train``       approximate joint and four-step alternating training (ch. 9)
- ``checkpoint``  safe, resumable checkpoints that carry their configuration (ch. 9)
- ``recipes``     named training recipes, prediction and evaluation helpers (ch. 9)
- ``evaluate``    VOC AP, COCO AP via pycocotools, proposal recall, errors (ch. 10)
- ``exercises``   checkers for the exercises; ``experiments``, ``ablations``, ``one_stage`` (ch. 11)
- ``real_data``   VOC, COCO and Penn-Fudan loaders; ``downloads`` (ch. 12)
- ``distributed`` DistributedDataParallel training under torchrun (ch. 12)
- ``speed``       careful timing, per-stage times (Table V), a torchvision twin (ch. 13)
- ``viz``, ``widgets``  drawing in the book's colours; ipywidgets explorers

Nothing here imports matplotlib at import time; ``viz`` does when it is used.
"""

from frcnn_lite import _moved
from frcnn_lite.utils import pick_device, seed_everything

_moved.install()  # frcnn_lite.viz, frcnn_lite.exercises, ... -> frcnn_lite.book.*

__version__ = "0.1.0"

__all__ = ["__version__", "pick_device", "seed_everything"]
