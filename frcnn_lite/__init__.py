"""frcnn_lite: a small, readable Faster R-CNN (Ren et al., 2015), built by the book.

The detector, in the order of the paper's pipeline (Fig. 2):

- ``boxes``        box conventions, IoU, clipping, Eq. 2 encode/decode, NMS (ch. 1, 4)
- ``backbones``    tiny, ZF-like, VGG-16, ResNet C4: the shared feature map (ch. 2)
- ``anchors``      base/grid anchors, anchor labelling and sampling (ch. 3, 5)
- ``rpn``          RPN head, Eq. 1 loss, proposal layer (ch. 5, 6)
- ``roi_pool``     RoI max pooling: the rules and a plain reference version (ch. 7);
  ``roi_pool_fast`` the loop-free version the detector runs; ``roi_pool_triton`` an
  optional CUDA kernel
- ``fast_rcnn``    RoI sampling, the detection head, loss, post-processing (ch. 8)
- ``transform``    resize, normalise and batch images; map boxes back (ch. 9)
- ``model``        FasterRCNN: backbone + RPN + RoI head; load_model, the demo model (ch. 9)
- ``batched``      the training targets of a whole mini-batch at once (GPU-friendly)

Training, evaluation and data:

- ``config``       FasterRCNNConfig, TrainConfig and the named presets (ch. 3, 9)
- ``stages``, ``train``, ``checkpoint``, ``recipes``, ``distributed``  training (ch. 9)
- ``evaluate``, ``coco_eval``  VOC AP, COCO AP via pycocotools, recall, errors (ch. 10)
- ``datasets``     the synthetic shapes dataset and its VOC/COCO exports (ch. 1)
- ``real_data`` (``voc``, ``coco``, ``pennfudan``, ``annotations``), ``downloads`` (ch. 12)
- ``own_data``, ``cli``  your own COCO/VOC data; ``python -m frcnn_lite`` (ch. 14)
- ``checks``, ``layer_checks``, ``run_checks``  input checks: one call at each door
- ``paper``        every fact the book attributes to the paper, with where it is said

The book's own machinery lives apart, in :mod:`frcnn_lite.book` (viz, widgets,
explorers, exercises, experiments, ablations, one_stage, speed, bind); the old
paths such as ``frcnn_lite.viz`` still import. Nothing outside ``frcnn_lite.book``
imports matplotlib at import time.
"""

from frcnn_lite import _moved
from frcnn_lite.utils import pick_device, seed_everything

_moved.install()  # frcnn_lite.viz, frcnn_lite.exercises, ... -> frcnn_lite.book.*

__version__ = "0.1.0"

__all__ = ["__version__", "pick_device", "seed_everything"]
