# EmbedMask (AdelaiDet design) scaled down for a CPU on the built-in synthetic
# shapes dataset (tools/make_synthetic_coco.py): ResNet-18 from scratch
# (init_cfg=None, nothing downloaded), 320x320 images, narrow heads, FCOS size
# ranges and coordinate scale halved to fit 320-px images, no auxiliary
# semantic loss. Used by the tests
# and the benchmarks; the demo uses the ImageNet-pretrained EfficientNet-Lite0
# child config.
_base_ = [
    '../_base_/models/embedmask_r50_fpn.py',
    '../_base_/datasets/synthetic_instance.py',
    'mmdet::_base_/default_runtime.py',
]
num_classes = 6
channels = 96
model = dict(
    # torchvision-style ImageNet normalisation (RGB), as mmdet's R-18 configs
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None,
                  style='pytorch', norm_cfg=dict(type='BN',
                                                 requires_grad=True)),
    # this config's init and box loss are mmdet's, as measured in
    # docs/benchmarks.md and the demo: mmdet's FPN Xavier init, GIoU
    # without the authors' +1, the pixel branch at Normal(0.01) (what
    # MaskFeatModule's init gives); the base has the authors' rules
    neck=dict(in_channels=[128, 256, 512], start_level=0,
              out_channels=channels,
              init_cfg=dict(type='Xavier', layer='Conv2d',
                            distribution='uniform')),
    bbox_head=dict(
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0),
        num_classes=num_classes,
        in_channels=channels,
        feat_channels=channels,
        stacked_convs=2,
        proposal_channels=64,
        regress_ranges=((-1, 32), (32, 64), (64, 128), (128, 256),
                        (256, 1e8))),
    mask_head=dict(
        num_classes=num_classes,
        in_channels=channels,
        # a lighter head than the published one: no 3x3 conv to 128 and a
        # 1x1 prediction conv (mmdet's CondInst branch)
        pixel_branch=dict(type='p3p5_fusion', feat_channels=64,
                          num_stacked_convs=2, out_conv=False,
                          pred_kernel_size=1, conv_init='normal'),
        # p's cell k sits at (k + 0.5) x stride, in targets and at test
        alignment='centre',
        max_masks_to_train=200,
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
    # masks from embeddings resampled to each output pixel (sharper small
    # masks than resampling p; the COCO recipes keep the authors' 'prob')
    test_cfg=dict(mask_resample='embedding'))
model['backbone']['out_indices'] = (1, 2, 3)

# iteration-based: an infinite sampler avoids mmengine's 2 s pause at every
# epoch end (which dominates on tiny datasets)
train_dataloader = dict(batch_size=4, num_workers=2,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(num_workers=1)
test_dataloader = val_dataloader

max_iters = 3000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=1000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # atomic writes; --resume falls back to the newest complete checkpoint
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=1000,
                    max_keep_ckpts=2))
# a rank stuck in a collective (a peer died) fails after 10 min instead of
# mmengine's default 30; torchrun tears the group down as soon as a rank exits
env_cfg = dict(dist_cfg=dict(timeout=600))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=4)

# test-time augmentation (tools/test.py --tta, ours or mmdet's): each of
# three scales, the test scale and two larger ones (the shapes are small),
# with and without a horizontal flip; boxes merged by NMS, masks by averaging
# each detection's matched p over the views (EmbedMaskTTAModel)
tta_model = dict(type='EmbedMaskTTAModel')
tta_scales = [(320, 320), (416, 416), (512, 512)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True) for s in tta_scales],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                         'scale_factor', 'flip', 'flip_direction'))]])
]
