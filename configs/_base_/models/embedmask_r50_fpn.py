# EmbedMask, AdelaiDet design (the published model, layer for layer: the
# authors' AdelaiDet checkpoints load onto it with
# tools/model_converters/adelaidet2mmdet.py): detectron2's MSRA ResNet-50
# (caffe style, stride in the 1x1 conv, frozen BN, BGR input, std 1), FPN
# P3-P7 (P6 from P5's output), FCOS "imprv" box head with a proposal
# embedding/margin head, P3-P5 fused pixel branch (4 BN convs, 3x3 conv to
# 128, 3x3 conv to D), all positives trained (capped at 500), Lovász hinge,
# semantic auxiliary loss, AdelaiDet's inference (cls x ctr candidates,
# aligned_bilinear mask placement).
# FusedFocalLoss is mmdet's sigmoid FocalLoss (same values and gradients) that
# keeps one tensor for the backward instead of several.
custom_imports = dict(imports=['embedmask_mmdet'], allow_failed_imports=False)

embed_dim = 16
model = dict(
    type='EmbedMask',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        # detectron2's MSRA weights take BGR 0-255 minus the mean, std 1
        mean=[103.53, 116.28, 123.675],
        std=[1.0, 1.0, 1.0],
        bgr_to_rgb=False,
        pad_mask=True,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        # detectron2 FREEZE_AT=2 and FrozenBN (eps 1e-5)
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='open-mmlab://detectron2/resnet50_caffe'),
        style='caffe'),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_output',
        num_outs=5,
        relu_before_extra_convs=True,
        # detectron2's c2_xavier_fill (kaiming_uniform_(a=1), bias 0) on the
        # lateral, output and P6/P7 convs; mmdet's FPN default is Xavier
        init_cfg=dict(type='Caffe2Xavier', layer='Conv2d')),
    bbox_head=dict(
        type='EmbedMaskBboxHead',
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        strides=[8, 16, 32, 64, 128],
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
        norm_on_bbox=True,
        centerness_on_reg=True,
        center_sampling=True,
        center_sample_radius=1.5,
        conv_bias=True,
        embed_dim=embed_dim,
        prior_margin=2.0,
        margin_reduce_factor=32.,
        proposal_head='conv1_conv3',
        margin_type='per_dim',
        sample_in_mask=False,
        loss_cls=dict(
            type='FusedFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
            loss_weight=1.0),
        # the authors' IOULoss: GIoU with (I + 1) / (U + 1) on
        # stride-normalised distances (mmdet's GIoULoss has no +1)
        loss_bbox=dict(type='FCOSIoULoss', loss_type='giou', loss_weight=1.0),
        loss_centerness=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    mask_head=dict(
        type='EmbedMaskMaskHead',
        num_classes=80,
        in_channels=256,
        embed_dim=embed_dim,
        pixel_branch=dict(type='p3p5_fusion'),
        # the authors' placement of p (aligned_bilinear), in training
        # targets and at test alike: their weights need it
        alignment='adelaidet',
        with_coords=True,
        learnable_coord_scale=False,
        mask_out_stride=4,
        sampling='all_positives',
        max_masks_to_train=500,
        prob_eps=1e-6,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=1.0),
        loss_semantic=dict(
            type='FusedFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
            loss_weight=1.0)),
    test_cfg=dict(
        nms_pre=1000,
        # AdelaiDet drops no box before NMS
        min_bbox_size=-1,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100,
        score_type='sqrt_cls_ctr',
        thresh_with_ctr=True,
        mask_thr=0.5,
        crop_to_box=False))
