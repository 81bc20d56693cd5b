# EmbedMask R-101-FPN, MS 3x (MS_R_101_3x): torchvision ResNet-101, 270k
# iters, steps 210k/250k; everything else as the MS 1x recipe.
# Should reproduce: AdelaiDet README, COCO val2017, box AP 44.2 / mask AP 39.5.
_base_ = './embedmask_r50_fpn_ms-1x_coco.py'

reference_results = dict(
    source='AdelaiDet README (EmbedMask MS R101 3x), COCO val2017',
    bbox_mAP=44.2, segm_mAP=39.5)

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))

max_iter = 270000
train_cfg = dict(max_iters=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[210000, 250000], gamma=0.1)
]
