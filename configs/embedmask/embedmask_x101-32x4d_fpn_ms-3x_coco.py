# EmbedMask ResNeXt-101 32x4d FPN, MS 3x (the unofficial port's MS_X_101_3x):
# open-mmlab ResNeXt weights as in mmdet's x101 configs, 270k iters, steps
# 210k/250k; everything else as the MS 1x recipe.
# No EmbedMask X-101 result has been published: nothing to reproduce.
_base_ = './embedmask_r50_fpn_ms-1x_coco.py'

reference_results = dict(
    source=None, bbox_mAP=None, segm_mAP=None,
    note='no published EmbedMask X-101 number; for context only: paper '
    '(arXiv 1912.01954), COCO test-dev, R-101-FPN mask AP 37.7')

model = dict(
    backbone=dict(
        type='ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained',
                      checkpoint='open-mmlab://resnext101_32x4d')))

max_iter = 270000
train_cfg = dict(max_iters=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[210000, 250000], gamma=0.1)
]
