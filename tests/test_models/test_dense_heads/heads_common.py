"""Shared constants and builders of the head tests: tiny heads on random
pyramids (mmdet style)."""
import copy
import math

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401  (registers the heads and the loss)

# init_weights() reports every parameter at INFO level
MMLogger.get_current_instance().setLevel('WARNING')

IN_CH = 16
EMBED_DIM = 4
NUM_CLASSES = 3
STRIDES = [8, 16, 32, 64, 128]
H, W = 128, 160  # padded input size of every test image

TEST_CFG = ConfigDict(
    nms_pre=1000, min_bbox_size=0, score_thr=0.0,
    nms=dict(type='nms', iou_threshold=0.6), max_per_img=20,
    score_type='cls_ctr', mask_thr=0.5, crop_to_box=False)


def make_test_cfg(**overrides):
    cfg = copy.deepcopy(TEST_CFG)
    cfg.update(overrides)
    return cfg


def bbox_head_cfg(**overrides):
    cfg = dict(
        type='EmbedMaskBboxHead', num_classes=NUM_CLASSES,
        in_channels=IN_CH, feat_channels=16, stacked_convs=1,
        strides=STRIDES,
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512),
                        (512, 1e8)),
        norm_on_bbox=True, centerness_on_reg=True, center_sampling=True,
        center_sample_radius=1.5, conv_bias=True,
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
        embed_dim=EMBED_DIM, prior_margin=2.0, proposal_head='conv1_conv3',
        proposal_channels=8, margin_type='per_dim', sample_in_mask=False,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True,
                             loss_weight=1.0),
        test_cfg=copy.deepcopy(TEST_CFG))
    cfg.update(overrides)
    return cfg


def mask_head_cfg(**overrides):
    cfg = dict(
        type='EmbedMaskMaskHead', num_classes=NUM_CLASSES, in_channels=IN_CH,
        embed_dim=EMBED_DIM,
        pixel_branch=dict(type='p3p5_fusion', feat_channels=8,
                          num_stacked_convs=1),
        with_coords=True, learnable_coord_scale=False, mask_out_stride=4,
        sampling='all_positives', max_masks_to_train=500, prob_eps=1e-6,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=1.0),
        loss_semantic=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                           alpha=0.25, loss_weight=1.0),
        semantic_channels=8, test_cfg=copy.deepcopy(TEST_CFG))
    cfg.update(overrides)
    return cfg


# the two published designs (plus ablation switches)
DESIGNS = {
    'default': ({}, {}),
    'v3': (dict(proposal_head='conv3', sample_in_mask=True),
           dict(pixel_branch=dict(type='p3_tower', feat_channels=8,
                                  num_stacked_convs=1,
                                  norm_cfg=dict(type='GN', num_groups=4)),
                learnable_coord_scale=True, sampling='best_iou_per_gt',
                loss_semantic=None, prob_eps=1e-9,
                loss_mask=dict(type='LovaszHingeLoss', loss_weight=0.5))),
    'scalar': (dict(margin_type='scalar'), {}),
    'fixed': (dict(margin_type='fixed'), {}),
}


def build_heads(design='default', bbox_overrides=None, mask_overrides=None):
    b, m = DESIGNS[design]
    bbox_head = MODELS.build(bbox_head_cfg(**{**b, **(bbox_overrides or {})}))
    mask_head = MODELS.build(mask_head_cfg(**{**m, **(mask_overrides or {})}))
    bbox_head.init_weights()
    mask_head.init_weights()
    return bbox_head, mask_head


def pyramid(batch=1, seed=0, h=H, w=W):
    """Random neck outputs P3-P7 for an h x w padded input (ResNet/FPN sizes:
    each level is ceil(previous / 2))."""
    g = torch.Generator().manual_seed(seed)
    sizes, fh, fw = [], math.ceil(h / 8), math.ceil(w / 8)
    for _ in STRIDES:
        sizes.append((fh, fw))
        fh, fw = math.ceil(fh / 2), math.ceil(fw / 2)
    return tuple(torch.rand(batch, IN_CH, a, b, generator=g) for a, b in sizes)


def rect_mask(box, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = [int(v) for v in box]
    m[y1:y2, x1:x2] = 1
    return m


def make_sample(boxes=(), masks=None, labels=None, img_shape=(H, W),
                ori_shape=None, scale_factor=(1., 1.), pad_shape=(H, W)):
    """DetDataSample with gt masks of the padded size."""
    ph, pw = pad_shape
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    if masks is None:
        masks = [rect_mask(b, ph, pw) for b in boxes.tolist()]
    masks = np.stack(masks) if n else np.zeros((0, ph, pw), np.uint8)
    labels = torch.arange(n) % NUM_CLASSES if labels is None \
        else torch.tensor(labels)
    sample = DetDataSample(metainfo=dict(
        img_shape=img_shape, pad_shape=pad_shape, batch_input_shape=pad_shape,
        ori_shape=ori_shape or img_shape, scale_factor=scale_factor))
    sample.gt_instances = InstanceData(bboxes=boxes, labels=labels.long(),
                                       masks=BitmapMasks(masks, ph, pw))
    return sample


ONE_GT = [[40., 30., 100., 90.]]
THREE_GTS = [[40., 30., 100., 90.], [8., 60., 56., 120.], [96., 8., 152., 56.]]


def run_losses(bbox_head, mask_head, x, samples):
    """The detector's training data flow between the two heads."""
    losses = dict(bbox_head.loss(x, samples))
    positive_infos = bbox_head.get_positive_infos()
    losses.update(mask_head.loss(x, samples, positive_infos=positive_infos))
    return losses, positive_infos


class MaskCounter:
    """Wraps a head's loss_mask and records how many masks it sees."""

    def __init__(self, mask_head):
        self.counts = []
        inner = mask_head.loss_mask.forward

        def forward(pred, target, *args, **kwargs):
            self.counts.append(pred.shape[0])
            return inner(pred, target, *args, **kwargs)

        mask_head.loss_mask.forward = forward


EMBEDMASK_PREFIXES = ('embedding_head.', 'margin_scales.', 'pixel_branch.',
                      'semantic_convs.', 'semantic_logits.', 'coord_scale')


def zero_embedding_convs(bbox_head, mask_head):
    with torch.no_grad():
        for conv in (bbox_head.embedding_head.embed_conv,
                     mask_head.pixel_branch.conv_pred):
            conv.weight.zero_()
            conv.bias.zero_()


def predict(bbox_head, mask_head, x, samples, rescale=True, cfg=None):
    """The detector's test data flow: boxes at the input scale, then masks
    (and boxes) at ori_shape."""
    bbox_head.eval()
    mask_head.eval()
    if cfg is not None:
        bbox_head.test_cfg = cfg
        mask_head.test_cfg = cfg
    with torch.no_grad():
        boxes = bbox_head.predict(x, samples, rescale=False)
        before = [r.clone() for r in boxes]
        results = mask_head.predict(x, samples, rescale=rescale,
                                    results_list=boxes)
    return before, results
