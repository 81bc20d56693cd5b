# EmbedMask for a CPU: the model the ResNet-18 and EfficientNet-Lite0 configs
# (configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py,
# embedmask-lite0_fpn_1xb4-1300it_synthetic.py) share. It has no backbone:
# a child adds one, with the neck's in_channels and the input normalisation
# its weights expect. Not a config on its own.
# The AdelaiDet design (embedmask_r50_fpn.py) scaled down for 320x320 images
# of the built-in synthetic shapes (tools/make_synthetic_coco.py): narrow
# heads, FCOS size ranges and coordinate scale halved, no auxiliary semantic
# loss, mmdet's init and box loss.
custom_imports = dict(imports=['embedmask_mmdet'], allow_failed_imports=False)

embed_dim = 16
num_classes = 6
channels = 96
model = dict(
    type='EmbedMask',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32),
    # this model's init and box loss are mmdet's, as measured in
    # docs/benchmarks.md and the demo: mmdet's FPN Xavier init, GIoU
    # without the authors' +1, the pixel branch at Normal(0.01) (what
    # MaskFeatModule's init gives); embedmask_r50_fpn.py has the authors'
    # rules
    neck=dict(
        type='FPN',
        out_channels=channels,
        start_level=0,
        add_extra_convs='on_output',
        num_outs=5,
        relu_before_extra_convs=True,
        init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')),
    bbox_head=dict(
        type='EmbedMaskBboxHead',
        num_classes=num_classes,
        in_channels=channels,
        stacked_convs=2,
        feat_channels=channels,
        strides=[8, 16, 32, 64, 128],
        # halved from the COCO recipes' ranges, for 320-px images
        regress_ranges=((-1, 32), (32, 64), (64, 128), (128, 256),
                        (256, 1e8)),
        norm_on_bbox=True,
        centerness_on_reg=True,
        center_sampling=True,
        center_sample_radius=1.5,
        conv_bias=True,
        embed_dim=embed_dim,
        prior_margin=2.0,
        margin_reduce_factor=32.,
        proposal_head='conv1_conv3',
        proposal_channels=64,
        margin_type='per_dim',
        sample_in_mask=False,
        loss_cls=dict(
            type='FusedFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    mask_head=dict(
        type='EmbedMaskMaskHead',
        num_classes=num_classes,
        in_channels=channels,
        embed_dim=embed_dim,
        # a lighter branch than the published one: no 3x3 conv to 128 and a
        # 1x1 prediction conv (mmdet's CondInst branch)
        pixel_branch=dict(type='p3p5_fusion', feat_channels=64,
                          num_stacked_convs=2, out_conv=False,
                          pred_kernel_size=1, conv_init='normal'),
        # p's cell k sits at (k + 0.5) x stride, in targets and at test
        alignment='centre',
        with_coords=True,
        learnable_coord_scale=False,
        mask_out_stride=4,
        sampling='all_positives',
        max_masks_to_train=200,
        prob_eps=1e-6,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=1.0),
        # no auxiliary semantic loss (the FCOS-repo design's choice; the COCO
        # recipes keep AdelaiDet's): at these short CPU budgets it does not
        # help and costs ~9 % per iteration. 600-iteration Lite0 runs: on the
        # *train* split segm AP 47.3 without it vs 41.4 with it (a 64-channel
        # branch; box AP 53.2 vs 45.7); on val in docs/benchmarks.md 44.8 vs
        # 44.6 (box AP 49.0 vs 47.0). mmdet's CondInst has none either.
        loss_semantic=None,
        # image coordinates / 50, not the COCO recipes' / 100: halved like
        # the FCOS ranges, so the prior mask (p = 0.5 at embedding distance
        # prior_margin) covers the same share of a 320-px image as of an
        # 800-px one (600-iteration Lite0 run: segm AP 39.6 vs 36.9 at / 100)
        coord_norm=50.),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=-1,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100,
        score_type='sqrt_cls_ctr',
        thresh_with_ctr=True,
        mask_thr=0.5,
        crop_to_box=False,
        # masks from embeddings resampled to each output pixel (sharper small
        # masks than resampling p; the COCO recipes keep the authors' 'prob')
        mask_resample='embedding'))
