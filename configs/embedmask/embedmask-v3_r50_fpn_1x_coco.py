# EmbedMask R-50-FPN, the authors' FCOS-repo design (v3, spec section 3 left
# column): 3x3 proposal convs, SAMPLE_IN_MASK, GN P3 tower with x2-upsampled
# embedding, one best-IoU positive per gt, Lovász hinge weight 0.5 (eps 1e-9),
# no semantic loss, score cls*ctr, mask thr 0.53, masks cropped to box + 2 px.
# 1x single-scale schedule (train 800/1333).
# Should reproduce: authors' FCOS-repo README, R50 1x, mask AP 34.7.
_base_ = './embedmask_r50_fpn_ms-1x_coco.py'

reference_results = dict(
    source="authors' FCOS-repo README (yinghdb/EmbedMask), R50 1x, COCO",
    bbox_mAP=None, segm_mAP=34.7)

model = dict(
    bbox_head=dict(proposal_head='conv3', sample_in_mask=True),
    mask_head=dict(
        pixel_branch=dict(type='p3_tower'),
        learnable_coord_scale=True,
        sampling='best_iou_per_gt',
        prob_eps=1e-9,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=0.5),
        loss_semantic=None),
    test_cfg=dict(
        score_type='cls_ctr',
        thresh_with_ctr=False,
        mask_thr=0.53,
        crop_to_box=True,
        crop_padding=2))

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
