# EmbedMask R-50-FPN, the reference-exact MS_R_50_1x model and recipe for
# 180k iters, steps 120k/160k. No EmbedMask result of this code at 2x has
# been published (the 34.1 of the unofficial detectron2 port gakkiri/EmbedMask
# is a different algorithm).
_base_ = './embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'
max_iter = 180000
train_cfg = dict(max_iters=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[120000, 160000], gamma=0.1)
]
