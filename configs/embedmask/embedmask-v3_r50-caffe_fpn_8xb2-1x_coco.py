# EmbedMask R-50-FPN, the authors' FCOS-repo design (the repo's v3 code,
# yinghdb/EmbedMask e9465cb; docs/design.md "The two published designs",
# right column): 3x3 proposal convs, SAMPLE_IN_MASK, GN P3 tower with
# x2-upsampled embedding, one best-IoU positive per gt, Lovász hinge weight
# 0.5 (eps 1e-9), no semantic loss; at test: candidates cls > 0.05, the top
# 1000 per level by cls*ctr, boxes clipped to the last pixel, score cls*ctr;
# masks as log p inside the box's cells +- 2 (-10 elsewhere), resampled as
# log p, thresholded at log 0.53, not cropped afterwards.
# Target rules of its loss.py: positives must lie in their gt's mask before
# the smallest gt is chosen, centre sampling around the box centre, mask loss
# averaged per image then over images. maskrcnn-benchmark recipe: MSRA R-50
# (caffe, FrozenBN, BGR, std 1), lr 0.01 batch 16, constant warmup 1/3 for
# 500 iters, bias lr x2 and no weight decay on biases, 1x single-scale
# (train 800/1333).
# No published number is for this code: the FCOS-repo README's R50 1x mask
# AP 34.7 (May 2020) was measured with its v2 code (D = 8).
_base_ = './embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'
model = dict(
    bbox_head=dict(proposal_head='conv3', sample_in_mask=True,
                   center_sample_on='box'),
    mask_head=dict(
        pixel_branch=dict(type='p3_tower'),
        # cells placed at (k + 0.5) x 4 in training and test; targets as the
        # FCOS repo's loss.py: the mask resized bilinearly to stride 4, > 0
        alignment='fcos_repo',
        loss_mask_norm='images',
        learnable_coord_scale=True,
        sampling='best_iou_per_gt',
        prob_eps=1e-9,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=0.5),
        loss_semantic=None),
    test_cfg=dict(
        score_type='cls_ctr',
        candidate_rule='fcos_repo',
        thresh_with_ctr=False,
        mask_resample='log_prob',
        window_padding=2,
        mask_thr=0.53,
        crop_to_box=False))

# single-scale training: the multi-scale RandomChoiceResize of the base
# becomes one Resize to 800/1333
backend = 'pillow'
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None,
         imdecode_backend=backend),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True,
         poly2mask=False),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True, backend=backend),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

param_scheduler = [
    dict(type='ConstantLR', factor=1. / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=90000, by_epoch=False,
         milestones=[60000, 80000], gamma=0.1)
]
optim_wrapper = dict(
    # maskrcnn-benchmark decays norm weights (None: the base's 0 undone)
    paramwise_cfg=dict(norm_decay_mult=None, bias_lr_mult=2.,
                       bias_decay_mult=0.,
                       # maskrcnn-benchmark's make_optimizer gives every
                       # parameter named 'bias' lr x2 and no decay, GroupNorm
                       # biases included; mmengine's bias_lr_mult skips norm
                       # layers, so they are named here (ConvModule's 'gn')
                       custom_keys={'.gn.bias': dict(lr_mult=2.,
                                                     decay_mult=0.)}))
