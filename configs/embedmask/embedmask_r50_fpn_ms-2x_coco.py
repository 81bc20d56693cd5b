# EmbedMask R-50-FPN, 2x (the unofficial detectron2 port's MS_R_50_2x):
# 180k iters, steps 120k/160k; everything else as the MS 1x recipe.
# Should reproduce: unofficial detectron2 port (gakkiri/EmbedMask), COCO
# val2017, box AP 40.4 / mask AP 34.1.
_base_ = './embedmask_r50_fpn_ms-1x_coco.py'

reference_results = dict(
    source='unofficial detectron2 port (gakkiri/EmbedMask) MS_R_50_2x, '
    'COCO val2017',
    bbox_mAP=40.4, segm_mAP=34.1)

max_iter = 180000
train_cfg = dict(max_iters=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[120000, 160000], gamma=0.1)
]
