"""The compared models: mmdet's packaged configs on one shared backbone + neck.

Every model gets the *same* data preprocessor, backbone and FPN (P3-P7), taken
from our EmbedMask config of the chosen ``arch``:

* ``r50``: ResNet-50 + FPN-256 of ``configs/_base_/models/embedmask_r50_fpn.py``
  with each method's COCO head widths and 80 classes (the speed rows);
* ``lite0``: EfficientNet-Lite0 + FPN-96 of
  ``configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py`` with every head
  narrowed the way that config narrows EmbedMask's (tower width = FPN width,
  its number of stacked convs, its mask-feature width) and object-size
  hyper-parameters scaled like its FCOS size ranges (the accuracy rows).

When that EmbedMask config's FPN also outputs P2 (its box head reading from
``start_level=1``), EmbedMask keeps it and the other models get the P3-P7
pyramid of the same backbone. Mask R-CNN and SOLOv2 were designed on P2-P6; on the shared P3-P7 their
stride-specific settings are adapted (see ``_mask_rcnn`` / ``_solov2``).
``init_cfg`` is None everywhere (nothing is downloaded) except the packaged
Lite0 ImageNet weights when ``pretrained=True``.
"""
import copy
import os.path as osp

import mmdet
from mmengine.config import Config, ConfigDict

from .machine import ROOT

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
EMBEDMASK_CONFIGS = {
    'r50': osp.join(ROOT, 'configs/_base_/models/embedmask_r50_fpn.py'),
    'lite0': osp.join(ROOT,
                      'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py'),
}
LITE0_CONFIG = EMBEDMASK_CONFIGS['lite0']
PACKAGED = {
    'fcos': 'fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-'
            'giou_1x_coco.py',
    'condinst': 'condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
    'mask_rcnn': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'solov2': 'solov2/solov2_r50_fpn_1x_coco.py',
    'yolact': 'yolact/yolact_r50_1xb8-55e_coco.py',
    'rtmdet_ins': 'rtmdet/rtmdet-ins_l_8xb32-300e_coco.py',
}
MODELS_ALL = ('embedmask', 'fcos', 'condinst', 'mask_rcnn', 'solov2', 'yolact',
              'rtmdet_ins')
LABELS = {'embedmask': 'EmbedMask', 'fcos': 'FCOS (box only)',
          'condinst': 'CondInst', 'mask_rcnn': 'Mask R-CNN',
          'solov2': 'SOLOv2', 'yolact': 'YOLACT', 'rtmdet_ins': 'RTMDet-Ins',
          'embedmask_semantic': 'EmbedMask + semantic loss (AdelaiDet)',
          'embedmask_boxonly': 'EmbedMask, box losses only (diagnostic)'}
BOX_ONLY = ('fcos', )
NO_BOXES = ('solov2', )  # SOLOv2 predicts masks only (its bboxes are zeros)
ARCHS = tuple(EMBEDMASK_CONFIGS)
# SOLOv2's candidates entering mask decoding at test (its packaged nms_pre)
SOLOV2_CANDIDATES = 500


def packaged_config_path(name: str) -> str:
    return osp.join(MMDET_CONFIGS, PACKAGED[name])


def _embedmask_model(arch: str) -> ConfigDict:
    if arch not in EMBEDMASK_CONFIGS:
        raise ValueError(f'unknown arch {arch!r}; use one of {ARCHS}')
    return copy.deepcopy(Config.fromfile(EMBEDMASK_CONFIGS[arch]).model)


def shared_parts(arch: str, pretrained: bool = False) -> dict:
    """Preprocessor, backbone, neck and the head sizes every model uses."""
    from embedmask_mmdet.models.dense_heads.pixel_branch import \
        PIXEL_BRANCHES
    em = _embedmask_model(arch)
    backbone = copy.deepcopy(em.backbone)
    if not (pretrained and arch == 'lite0'):
        backbone.init_cfg = None
    neck = copy.deepcopy(em.neck)
    own_backbone, own_neck = copy.deepcopy(backbone), copy.deepcopy(neck)
    skip = em.bbox_head.get('start_level', 0)
    if skip:
        # EmbedMask's neck also makes P2 for its pixel branch ('p2p5_fusion');
        # the other models get the P3-P7 pyramid its box head reads
        backbone.out_indices = tuple(backbone.out_indices)[skip:]
        neck.in_channels = list(neck.in_channels)[skip:]
        neck.num_outs = neck.num_outs - skip
    pixel = dict(PIXEL_BRANCHES[em.mask_head.pixel_branch.get(
        'type', 'p3p5_fusion')])
    pixel.update({k: v for k, v in em.mask_head.pixel_branch.items()
                  if k != 'type'})
    box = em.bbox_head
    return dict(
        data_preprocessor=copy.deepcopy(em.data_preprocessor),
        backbone=backbone,
        neck=neck,
        embedmask_backbone=own_backbone,
        embedmask_neck=own_neck,
        width=em.neck.out_channels,
        stacked_convs=box.stacked_convs,
        strides=list(box.strides),
        regress_ranges=[tuple(r) for r in box.regress_ranges],
        mask_feat_channels=pixel['feat_channels'],
        mask_feat_convs=pixel['num_stacked_convs'],
        # object-size hyper-parameters relative to COCO's (FCOS: 64 px on P3)
        size_scale=box.regress_ranges[0][1] / 64.)


def _fcos_like(head: ConfigDict, p: dict, num_classes: int) -> None:
    head.update(num_classes=num_classes, in_channels=p['width'],
                feat_channels=p['width'], stacked_convs=p['stacked_convs'],
                strides=p['strides'], regress_ranges=p['regress_ranges'])


def _mask_rcnn(model: ConfigDict, p: dict, num_classes: int) -> None:
    """P3-P7 instead of P2-P6: RPN anchors at strides 8-128 with scale 4
    (COCO's anchor sizes 32-512, times size_scale), RoIAlign on P3-P6."""
    w = p['width']
    rpn = model.rpn_head
    rpn.update(in_channels=w, feat_channels=w)
    rpn.anchor_generator.update(strides=p['strides'],
                                scales=[4 * p['size_scale']])
    roi = model.roi_head
    for ext in (roi.bbox_roi_extractor, roi.mask_roi_extractor):
        ext.update(out_channels=w, featmap_strides=p['strides'][:4])
    roi.bbox_head.update(in_channels=w, fc_out_channels=4 * w,
                         num_classes=num_classes)
    roi.mask_head.update(in_channels=w, conv_out_channels=w,
                         num_convs=p['mask_feat_convs'],
                         num_classes=num_classes)


def _solov2(model: ConfigDict, p: dict, num_classes: int) -> None:
    """Mask features from P3-P5 at stride 8 (not P2-P5 at stride 4: P6 of an
    800-px input, 13 cells, does not upsample back to P3's 100); the
    ``strides`` SOLOv2 only uses to drop masks of area <= stride cells are
    scaled by (4/8)^2 so the same image area is dropped."""
    w = p['width']
    head = model.mask_head
    head.update(num_classes=num_classes, in_channels=w, feat_channels=2 * w,
                stacked_convs=p['stacked_convs'],
                strides=[s // 4 for s in head.strides],
                scale_ranges=[(lo * p['size_scale'], hi * p['size_scale'])
                              for lo, hi in head.scale_ranges])
    head.mask_feature_head.update(in_channels=w, start_level=0, end_level=2,
                                  feat_channels=p['mask_feat_channels'],
                                  out_channels=w, mask_stride=p['strides'][0])


def _yolact(model: ConfigDict, p: dict, num_classes: int) -> None:
    """Anchors at the pyramid's strides (YOLACT's are for 550-px inputs)."""
    w = p['width']
    head = model.bbox_head
    head.update(num_classes=num_classes, in_channels=w, feat_channels=w)
    head.anchor_generator.update(
        strides=p['strides'], centers=None,
        octave_base_scale=head.anchor_generator.octave_base_scale *
        p['size_scale'])
    protos = model.mask_head.num_protos
    model.mask_head.update(in_channels=w, num_classes=num_classes,
                           proto_channels=(w, w, w, None, w, protos))


def _rtmdet_ins(model: ConfigDict, p: dict, num_classes: int) -> None:
    """RTMDet-Ins-l's head (separate BN per level, shared convs, dynamic
    kernels for its prototype masks) on the shared P3-P5: its own CSPNeXt
    backbone and PAFPN are replaced like every peer's, and its tower gets
    the shared width and depth like the FCOS-family heads' (4 convs at
    R-50, where RTMDet-Ins-l has 2); SyncBN becomes BN (one process on a
    CPU)."""
    head = model.bbox_head
    head.update(num_classes=num_classes, in_channels=p['width'],
                feat_channels=p['width'], stacked_convs=p['stacked_convs'],
                norm_cfg=dict(type='BN', requires_grad=True))
    head.anchor_generator.strides = p['strides'][:3]


def model_cfg(name: str, arch: str = 'r50', num_classes: int = None,
              pretrained: bool = False) -> ConfigDict:
    """Model config of ``name`` on the shared backbone/neck of ``arch``.

    ``num_classes`` defaults to 80 (r50) or the Lite config's (lite0).
    """
    if name not in MODELS_ALL:
        raise ValueError(f'unknown model {name!r}; use some of {MODELS_ALL}')
    p = shared_parts(arch, pretrained)
    em = _embedmask_model(arch)
    if num_classes is None:
        num_classes = em.bbox_head.num_classes
    if name == 'embedmask':
        model = em
        model.bbox_head.num_classes = num_classes
        model.mask_head.num_classes = num_classes
    else:
        model = copy.deepcopy(Config.fromfile(packaged_config_path(name)).model)
        if name in ('fcos', 'condinst'):
            _fcos_like(model.bbox_head, p, num_classes)
        if name == 'condinst':
            model.mask_head.mask_feature_head.update(
                in_channels=p['width'], feat_channels=p['mask_feat_channels'],
                num_stacked_convs=p['mask_feat_convs'])
        elif name == 'mask_rcnn':
            _mask_rcnn(model, p, num_classes)
        elif name == 'solov2':
            _solov2(model, p, num_classes)
        elif name == 'yolact':
            _yolact(model, p, num_classes)
        elif name == 'rtmdet_ins':
            _rtmdet_ins(model, p, num_classes)
    model.data_preprocessor = p['data_preprocessor']
    model.backbone = p['embedmask_backbone' if name == 'embedmask'
                       else 'backbone']
    model.neck = p['embedmask_neck' if name == 'embedmask' else 'neck']
    if name in BOX_ONLY:
        model.data_preprocessor.pad_mask = False
    return model


def with_mmdet_focal(model: ConfigDict) -> ConfigDict:
    """``model`` with mmdet's ``FocalLoss`` wherever it uses our
    ``FusedFocalLoss`` (same loss and gradient, more saved tensors)."""
    model = copy.deepcopy(model)
    for head in ('bbox_head', 'mask_head'):
        for key, loss in model.get(head, {}).items():
            if isinstance(loss, dict) and loss.get('type') == 'FusedFocalLoss':
                loss.type = 'FocalLoss'
    return model


def hold_detections(name: str, model: ConfigDict, num_dets: int = 100
                    ) -> ConfigDict:
    """Test settings that make every model output ``num_dets`` detections
    (random weights give any score): score thresholds 0, ``num_dets`` kept.

    SOLOv2 decodes a mask for every (grid cell, class) above its score
    threshold, so 0 is not runnable; its threshold is set per input by
    :func:`calibrate_solov2` so that exactly ``SOLOV2_CANDIDATES`` enter
    mask decoding (its packaged ``nms_pre``) and ``filter_thr`` is 0.
    """
    model = copy.deepcopy(model)
    t = model.test_cfg
    if name == 'mask_rcnn':
        t.rcnn.update(score_thr=0., max_per_img=num_dets)
    elif name == 'solov2':
        # score_thr stays the packaged one until calibrate_solov2 sets it
        t.update(filter_thr=0., max_per_img=num_dets,
                 nms_pre=SOLOV2_CANDIDATES)
    elif name == 'yolact':
        t.update(score_thr=0., max_per_img=num_dets,
                 top_k=max(t.get('top_k', 200), num_dets))
    else:  # FCOS family
        t.update(score_thr=0., max_per_img=num_dets)
    return model


def calibrate_solov2(model, batch_inputs) -> float:
    """Sets SOLOv2's test score_thr just below the ``nms_pre``-th best
    category score of ``batch_inputs`` (the scoring of its predict_by_feat)."""
    import torch
    import torch.nn.functional as F
    head = model.mask_head
    with torch.no_grad():
        _, cls_preds, _ = head(model.extract_feat(batch_inputs))
        scores = []
        for cls in cls_preds:
            cls = cls[:1].sigmoid()
            local_max = F.max_pool2d(cls, 2, stride=1, padding=1)
            scores.append((cls * (local_max[:, :, :-1, :-1] == cls)).flatten())
        scores = torch.cat(scores)
    k = min(head.test_cfg.nms_pre, scores.numel())
    top = scores.topk(min(k + 1, scores.numel())).values
    thr = float(top[-1]) if len(top) > k else 0.
    # strictly between the k-th and (k+1)-th score
    head.test_cfg.score_thr = (thr + float(top[k - 1])) / 2 \
        if len(top) > k else 0.
    return head.test_cfg.score_thr
