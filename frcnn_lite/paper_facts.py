"""The registry's data: every fact the book attributes to the papers or an implementation.

:mod:`frcnn_lite.paper` reads it (lookup, phrases, citations, checks); this module only
holds the entries, so that adding a fact is one edit in one place. Locations use the arXiv
v3 numbering (arabic table numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Fact:
    """One fact: ``text`` is the phrase a chapter quotes, with ``{value}`` in it.

    ``where``: for the papers, a location (``§3.1.3``, ``Eq. 1``, ``Table 2``,
    ``Fig. 3``, ``Abstract``); for an implementation, a file and the name in it.
    """

    key: str
    value: object
    text: str
    where: str
    source: str = "paper"
    verified: str = ""  # what it was checked against; "" = not verified
    note: str = ""


_PFR = "py-faster-rcnn"
_TV = "torchvision"
_READ = "read in the code"

FACTS: Tuple[Fact, ...] = (
    # -- anchors (§3.1.1, §3.3) --
    Fact("anchors_per_position", 9, "k = {value} anchors per position (3 scales x 3 ratios)",
         "§3.1.1"),
    Fact("anchor_scales", (128, 256, 512), "anchor sides of {value} pixels", "§3.3",
         verified=f"{_PFR} lib/rpn/generate_anchors.py (scales 8, 16, 32 x base 16)"),
    Fact("anchor_ratios", (0.5, 1, 2), "aspect ratios {value}", "§3.3",
         verified=f"{_PFR} lib/rpn/generate_anchors.py (ratios 0.5, 1, 2)"),
    Fact("stride", 16, "a total stride of {value} pixels on the last conv layer", "§3.3"),
    Fact("anchor_count", 20000, "roughly {value} anchors for a 1000 x 600 image, "
         "about 60 x 40 x 9", "§3.3",
         note="Our floor-stride VGG-16 map of a 1000 x 600 image is 62 x 37 -> 20,646 anchors; "
              "the authors' Caffe pooling rounds up to 63 x 38 -> 21,546. 20,646 is ours, "
              "not the paper's."),
    Fact("anchors_inside", 6000, "about {value} anchors per image left for training once "
         "cross-boundary anchors are ignored", "§3.3"),
    Fact("cross_boundary", "ignored in training, clipped at test",
         "cross-boundary anchors {value}", "§3.3",
         verified=f"{_PFR} lib/rpn/anchor_target_layer.py (inds_inside, allowed_border=0)"),
    Fact("output_params", "2.8 x 10^4", "{value} parameters in the RPN's output layers "
         "(512 x (4 + 2) x 9 for VGG-16), two orders of magnitude fewer than MultiBox's "
         "6.1 x 10^6", "§3.1.1",
         note="With the 3 x 3 feature layer counted, the paper says one order of magnitude "
              "fewer (2.4 x 10^6 against 2.7 x 10^7), not two."),
    Fact("params_with_3x3", "2.4 x 10^6", "{value} parameters with the 3 x 3 layer, one order of "
         "magnitude fewer than MultiBox's 2.7 x 10^7", "§3.1.1"),
    # -- backbones and the shared feature map (§3.1) --
    Fact("zf_convs", 5, "{value} shareable conv layers in ZF", "§3.1"),
    Fact("vgg_convs", 13, "{value} shareable conv layers in VGG-16", "§3.1"),
    Fact("rpn_window", 3, "an n x n sliding window on the last shared conv layer, "
         "n = {value}", "§3.1"),
    Fact("zf_receptive_field", 171, "an effective receptive field of {value} pixels for the "
         "RPN's 3 x 3 window on ZF", "§3.1"),
    Fact("vgg_receptive_field", 228, "an effective receptive field of {value} pixels for the "
         "RPN's 3 x 3 window on VGG-16", "§3.1"),
    Fact("vgg_fixed_layers", "conv1_1 to conv2_2", "VGG-16's {value} kept fixed in training",
         "models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt (lr_mult: 0)",
         source=_PFR, verified=_READ),
    Fact("ss_proposals", 2000, "{value} Selective Search proposals per image for the Fast "
         "R-CNN baseline", "Table 2"),
    # -- labels, loss (§3.1.2) --
    Fact("rpn_fg_iou", 0.7, "IoU above {value} with a ground-truth box: positive", "§3.1.2",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.RPN_POSITIVE_OVERLAP = 0.7)"),
    Fact("rpn_bg_iou", 0.3, "IoU below {value} with every ground-truth box: negative",
         "§3.1.2",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.RPN_NEGATIVE_OVERLAP = 0.3)"),
    Fact("rpn_best_anchor", "positive", "the highest-IoU anchor of each ground-truth box is "
         "{value} even below 0.7", "§3.1.2"),
    Fact("positive_clobber", "positive labels overwrite negative ones",
         "{value} (RPN_CLOBBER_POSITIVES = False: a best anchor under 0.3 stays positive)",
         "lib/rpn/anchor_target_layer.py, lib/fast_rcnn/config.py", source=_PFR,
         verified=_READ),
    Fact("rpn_best_anchor_rare", "some rare cases", "the highest-IoU rule is kept for "
         "{value} in which no anchor is above 0.7", "§3.1.2", verified="the arXiv v3 text"),
    Fact("rpn_negative_non_positive", "non-positive", "a negative label only for a {value} "
         "anchor whose IoU is below 0.3 for every ground-truth box", "§3.1.2",
         verified="the arXiv v3 text"),
    Fact("rpn_fg_iou_inclusive", ">=", "positive at IoU {value} 0.7 (the paper writes "
         "\"higher than\")", "lib/rpn/anchor_target_layer.py (max_overlaps >= "
         "RPN_POSITIVE_OVERLAP)", source=_PFR, verified=_READ),
    Fact("lambda_reg", 10, "lambda = {value}", "Eq. 1",
         note="The paper sets lambda in §3.1.2, beside Eq. 1."),
    Fact("n_cls", 256, "N_cls = {value} (the mini-batch size)", "Eq. 1"),
    Fact("n_reg", 2400, "N_reg ~ {value} (the number of anchor locations)", "Eq. 1"),
    Fact("box_parameterisation", "t_x = (x - x_a)/w_a, t_w = log(w/w_a)",
         "the box parameterisation {value}", "Eq. 2"),
    Fact("exp_clamp", "log(1000/16)", "dw and dh clamped at {value} before exp",
         "torchvision/models/detection/_utils.py (BoxCoder, bbox_xform_clip)", source=_TV,
         verified=_READ + "; py-faster-rcnn's bbox_transform_inv does not clamp"),
    # -- RPN training (§3.1.3) --
    Fact("rpn_batch", 256, "{value} anchors per image", "§3.1.3",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.RPN_BATCHSIZE = 256)"),
    Fact("rpn_positive_ratio", "1:1", "positives and negatives up to {value} (at most 128 "
         "positives)", "§3.1.3",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.RPN_FG_FRACTION = 0.5)"),
    Fact("rpn_pad_negatives", 128, "fewer than {value} positives: the mini-batch is padded "
         "with negatives", "§3.1.3", verified="the arXiv v3 text"),
    Fact("rpn_images_per_batch", 1, "{value} image per RPN mini-batch (image-centric "
         "sampling)", "§3.1.3", verified="the arXiv v3 text"),
    Fact("rpn_init_std", 0.01, "new layers drawn from a zero-mean Gaussian with standard "
         "deviation {value}", "§3.1.3"),
    Fact("voc_schedule", "0.001 for 60k mini-batches, 0.0001 for the next 20k",
         "a learning rate of {value} on PASCAL VOC", "§3.1.3",
         verified=f"{_PFR} models/pascal_voc/VGG16/faster_rcnn_alt_opt/"
                  "stage1_rpn_solver60k80k.pt (base_lr 0.001, stepsize 60000, 80k iterations)"),
    Fact("voc_iterations", 80000, "{value} mini-batches in all on PASCAL VOC (60k + 20k)",
         "§3.1.3", verified=f"{_PFR} models/pascal_voc/VGG16/faster_rcnn_alt_opt/"
                            "stage1_rpn_solver60k80k.pt (max_iter 80000)"),
    Fact("momentum", 0.9, "momentum {value}", "§3.1.3", verified=f"{_PFR} solver files"),
    Fact("weight_decay", 0.0005, "weight decay {value}", "§3.1.3",
         verified=f"{_PFR} solver files"),
    # -- sharing features, training schemes (§3.2) --
    Fact("four_step", 4, "{value}-step alternating training", "§3.2",
         verified=f"{_PFR} tools/train_faster_rcnn_alt_opt.py (four stages)"),
    Fact("alt_opt_iters", (80000, 40000, 80000, 40000), "{value} iterations for the four "
         "steps on PASCAL VOC", "tools/train_faster_rcnn_alt_opt.py (max_iters)", source=_PFR,
         verified=_READ),
    Fact("end2end_iters", 70000, "{value} iterations of approximate joint training on "
         "PASCAL VOC", "experiments/scripts/faster_rcnn_end2end.sh (ITERS)", source=_PFR,
         verified=_READ),
    Fact("joint_speedup", "25-50%", "approximate joint training cuts training time by about "
         "{value} against alternating training, with close results", "§3.2"),
    # -- implementation details (§3.3) --
    Fact("shorter_side", 600, "images rescaled to a shorter side of {value} pixels", "§3.3",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.SCALES = (600,))"),
    Fact("max_size", 1000, "a longer side of at most {value} pixels",
         "lib/fast_rcnn/config.py (TRAIN.MAX_SIZE)", source=_PFR, verified=_READ),
    Fact("proposal_nms", 0.7, "NMS on the proposals at IoU {value}", "§3.3",
         verified=f"{_PFR} lib/fast_rcnn/config.py (RPN_NMS_THRESH = 0.7)"),
    Fact("train_proposals", 2000, "{value} proposals per image to train the detector", "§3.3",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.RPN_POST_NMS_TOP_N = 2000)"),
    Fact("test_proposals", 300, "{value} proposals per image at test time", "Abstract",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TEST.RPN_POST_NMS_TOP_N = 300)"),
    Fact("pre_nms_train", 12000, "the top {value} boxes before NMS in training",
         "lib/fast_rcnn/config.py (TRAIN.RPN_PRE_NMS_TOP_N)", source=_PFR, verified=_READ),
    Fact("pre_nms_test", 6000, "the top {value} boxes before NMS at test",
         "lib/fast_rcnn/config.py (TEST.RPN_PRE_NMS_TOP_N)", source=_PFR, verified=_READ),
    Fact("proposal_min_size", 16, "proposals under {value} pixels (at the original scale) "
         "dropped", "lib/fast_rcnn/config.py (RPN_MIN_SIZE)", source=_PFR, verified=_READ),
    # -- the Fast R-CNN detector (Fast R-CNN paper, and py-faster-rcnn) --
    Fact("roi_pool_size", 7, "RoI pooling to {value} x {value} for VGG-16", "§2.1",
         source="fast_rcnn"),
    Fact("roi_pool_spp", "one pyramid level", "RoI pooling is SPPnet's spatial pyramid "
         "pooling with {value}", "§2.1", source="fast_rcnn"),
    Fact("roi_pool_backward", "argmax", "the RoI pooling backward pass: each output's "
         "gradient goes to its {value} cell, summed over outputs", "§2.3 and Eq. 4",
         source="fast_rcnn"),
    Fact("fast_rcnn_batch", "R = 128 RoIs from N = 2 images", "mini-batches of {value} "
         "(64 RoIs per image)", "§2.3", source="fast_rcnn",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.BATCH_SIZE = 128, "
                  "TRAIN.IMS_PER_BATCH = 2 for Fast R-CNN)"),
    Fact("roi_batch", 128, "{value} RoIs per image",
         "lib/rpn/proposal_target_layer.py (rois_per_image = TRAIN.BATCH_SIZE / 1)",
         source=_PFR, verified=_READ,
         note="Faster R-CNN in py-faster-rcnn takes one image per mini-batch, so 128 RoIs "
              "per image; Fast R-CNN's paper takes 64 from each of two images. torchvision "
              "uses 512 per image."),
    Fact("flip_augmentation", "horizontally flipped", "training images {value} with "
         "probability 0.5, the only data augmentation", "§2.3", source="fast_rcnn",
         note="py-faster-rcnn (TRAIN.USE_FLIPPED, imdb.append_flipped_images) instead adds "
              "the mirror of every training image, doubling the set."),
    Fact("roi_fg_fraction", 0.25, "at most {value:.0%} foreground RoIs", "§2.3",
         source="fast_rcnn",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.FG_FRACTION = 0.25)"),
    Fact("roi_fg_iou", 0.5, "foreground: IoU at least {value} with a ground-truth box",
         "§2.3", source="fast_rcnn",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.FG_THRESH = 0.5)"),
    Fact("roi_bg_iou", (0.1, 0.5), "background: IoU in [{value}) ", "§2.3",
         source="fast_rcnn",
         verified=f"{_PFR} lib/fast_rcnn/config.py (TRAIN.BG_THRESH_LO/HI = 0.1/0.5)"),
    Fact("roi_bg_lo_faster", 0.0, "a background floor of {value}",
         "experiments/cfgs/faster_rcnn_end2end.yml, faster_rcnn_alt_opt.yml (BG_THRESH_LO)",
         source=_PFR, verified=_READ,
         note="py-faster-rcnn's Faster R-CNN configurations lower Fast R-CNN's 0.1 floor to 0."),
    Fact("box_target_stds", (0.1, 0.1, 0.2, 0.2), "box targets divided by the standard "
         "deviations ({value})", "lib/fast_rcnn/config.py (TRAIN.BBOX_NORMALIZE_STDS)",
         source=_PFR, verified=_READ,
         note="Fast R-CNN (§2.3) normalises targets to zero mean and unit variance; the "
              "fixed stds are py-faster-rcnn's."),
    Fact("fast_rcnn_lambda", 1, "lambda = {value} in the detector's loss", "Eq. 1",
         source="fast_rcnn"),
    Fact("smooth_l1", "0.5 x^2 if |x| < 1, else |x| - 0.5", "smooth L1: {value}", "Eq. 3",
         source="fast_rcnn"),
    Fact("score_thresh", 0.05, "detections with a score of at most {value} dropped",
         "lib/fast_rcnn/test.py (test_net thresh=0.05)", source=_PFR, verified=_READ),
    Fact("test_nms", 0.3, "per-class NMS at IoU {value}",
         "lib/fast_rcnn/config.py (TEST.NMS = 0.3)", source=_PFR, verified=_READ,
         note="torchvision's default is 0.5."),
    Fact("detections_per_img", 100, "at most {value} detections per image",
         "lib/fast_rcnn/test.py (test_net max_per_image=100)", source=_PFR, verified=_READ),
    Fact("torchvision_nms", 0.5, "per-class NMS at IoU {value}",
         "torchvision/models/detection/faster_rcnn.py (box_nms_thresh)", source=_TV,
         verified=_READ),
    Fact("torchvision_roi_batch", 512, "{value} RoIs per image",
         "torchvision/models/detection/faster_rcnn.py (box_batch_size_per_image)",
         source=_TV, verified=_READ),
    # -- results --
    Fact("table2_proposals", (100, 300, 1000), "ZF with {value} test proposals", "Table 2"),
    Fact("voc07_vgg", (69.9, 73.2), "VGG-16 mAP {value} on VOC 2007 test (trained on 07 / "
         "07+12)", "Table 3"),
    Fact("voc07_map_07", 69.9, "{value}% mAP on VOC 2007 test for RPN + Fast R-CNN with "
         "shared VGG-16 features, 300 proposals, trained on VOC 2007 trainval", "Table 3"),
    Fact("voc07_map_0712", 73.2, "{value}% mAP on VOC 2007 test with VOC 2007 + 2012 "
         "trainval for training (otherwise as voc07_map_07)", "Table 3"),
    Fact("vgg_ms_per_image", 198, "{value} ms per image for VGG-16 on a K40 GPU "
         "(5 fps)", "Table 5"),
    Fact("vgg_region_ms", 47, "{value} ms for the region-wise part (RoI pooling, fc layers, "
         "NMS) with VGG-16", "Table 5"),
    Fact("vgg_conv_ms", 141, "{value} ms for VGG-16's conv layers", "Table 5"),
    Fact("vgg_proposal_ms", 10, "{value} ms for the proposals with VGG-16", "Table 5"),
    Fact("zf_fps", 17, "{value} fps with ZF", "Table 5"),
    Fact("zf_ms_per_image", 59, "{value} ms per image for ZF on a K40 GPU", "Table 5"),
    Fact("zf_region_ms", 25, "{value} ms for the region-wise part with ZF", "Table 5"),
    Fact("ss_proposal_ms", 1510, "{value} ms per image for Selective Search's proposals "
         "(on a CPU; the VGG-16 SS + Fast R-CNN row)", "Table 5"),
    Fact("table8_3x3", 69.9, "mAP {value} with 3 scales x 3 ratios (VGG-16)", "Table 8"),
    Fact("table8_3x1", 69.8, "mAP {value} with 3 scales x 1 ratio", "Table 8"),
    Fact("table9_lambda", (0.1, 1, 10, 100), "lambda in {value}", "Table 9"),
    Fact("table10_one_stage", "one-stage vs two-stage", "a {value} comparison on ZF", "Table 10"),
    Fact("table2_map", (55.1, 56.8, 56.3), "mAP {value} with 100, 300 and 1000 RPN proposals at "
         "test (ZF, Fast R-CNN trained on Selective Search)", "Table 2"),
    Fact("table8_1x1", (65.8, 66.7), "mAP {value} with one anchor (128² or 256², ratio 1:1)",
         "Table 8"),
    Fact("table8_1x3", (68.8, 67.9), "mAP {value} with one scale (128² or 256²) and 3 ratios",
         "Table 8"),
    Fact("table9_map", (67.2, 68.9, 69.9, 69.1), "mAP {value} for lambda = 0.1, 1, 10, 100",
         "Table 9"),
    Fact("table10_one_stage_map", 53.9, "mAP {value} for the one-stage (dense, OverFeat-like) "
         "system with ZF", "Table 10"),
    Fact("table10_two_stage_map", 58.7, "mAP {value} for the two-stage system with ZF "
         "(300 RPN proposals)", "Table 10"),
    # -- COCO (§4.2) --
    Fact("coco_vgg_ap50", 42.1, "{value}% mAP@0.5 on COCO test-dev (VGG-16, trained on COCO "
         "train, 300 proposals)", "Table 11",
         note="Trained on COCO trainval the same row reads 42.7 / 21.9."),
    Fact("coco_vgg_ap", 21.5, "{value}% mAP@[.5, .95] on COCO test-dev (VGG-16, trained on "
         "COCO train)", "Table 11"),
    Fact("coco_gpus", 8, "an {value}-GPU implementation (one image per GPU for the RPN, "
         "two for Fast R-CNN)", "§4.2", note="On COCO (§4.2)."),
    Fact("coco_small_anchor", 64, "a fourth anchor scale, {value}², for COCO's small objects",
         "§4.2"),
    # -- the benchmarks' definitions: PASCAL VOC's and COCO's, not the paper's --
    Fact("voc_iou", 0.5, "a detection is correct at IoU at least {value} with a ground-truth "
         "box of its class not claimed by a higher-scoring detection",
         "VOCcode/VOCevaldet.m (VOCopts.minoverlap)", source="pascal_voc",
         verified=f"{_PFR} lib/datasets/voc_eval.py (ovthresh=0.5)"),
    Fact("voc07_points", 11, "AP as the mean of the precision envelope at the {value} recalls "
         "0, 0.1, ..., 1 (the VOC 2007 rule)", "VOCdevkit 2007, VOCcode/VOCevaldet.m",
         source="pascal_voc",
         verified=f"{_PFR} lib/datasets/voc_eval.py (voc_ap, use_07_metric) and "
                  "lib/datasets/pascal_voc.py (the 2007 rule for years before 2010)"),
    Fact("voc_area_since", "2010", "AP as the area under the precision envelope (the rule from "
         "VOC {value} on)", "VOCdevkit 2010+, VOCcode/VOCap.m", source="pascal_voc",
         verified=f"{_PFR} lib/datasets/pascal_voc.py (\"The PASCAL VOC metric changed in "
                  "2010\")"),
    Fact("coco_ious", "0.50:0.05:0.95", "AP averaged over the IoU thresholds {value}",
         "PythonAPI/pycocotools/cocoeval.py (Params.iouThrs)", source="coco",
         verified="pycocotools cocoeval.py (np.linspace(.5, 0.95, 10))"),
    Fact("coco_recall_points", 101, "the precision envelope sampled at {value} recalls "
         "0, 0.01, ..., 1", "PythonAPI/pycocotools/cocoeval.py (Params.recThrs)",
         source="coco", verified="pycocotools cocoeval.py (np.linspace(0, 1, 101))"),
    Fact("coco_max_dets", (1, 10, 100), "at most {value} detections per image",
         "PythonAPI/pycocotools/cocoeval.py (Params.maxDets)", source="coco",
         verified="pycocotools cocoeval.py (maxDets = [1, 10, 100])"),
    Fact("coco_area_edges", (32, 96), "small, medium and large objects split at areas of "
         "{value} pixels squared", "PythonAPI/pycocotools/cocoeval.py (Params.areaRng)",
         source="coco", verified="pycocotools cocoeval.py (areaRng 32 ** 2, 96 ** 2)"),
)
