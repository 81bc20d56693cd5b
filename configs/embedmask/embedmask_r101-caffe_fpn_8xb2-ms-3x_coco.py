# EmbedMask R-101-FPN, AdelaiDet MS_R_101_3x, reference-exact: detectron2's
# MSRA ResNet-101, 270k iters, steps 210k/250k; everything else as MS_R_50_1x.
# The authors' checkpoint EmbedMask_R_101_3x.pth converts onto this config.
# Should reproduce: AdelaiDet README (yinghdb/AdelaiDet), COCO val2017,
# box AP 44.2 / mask AP 39.5 (test-dev 44.6 / 40.0).
_base_ = './embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='open-mmlab://detectron2/resnet101_caffe')))

max_iter = 270000
train_cfg = dict(max_iters=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[210000, 250000], gamma=0.1)
]
