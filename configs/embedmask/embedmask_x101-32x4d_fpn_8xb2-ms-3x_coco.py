# EmbedMask ResNeXt-101 32x4d FPN, MS 3x: the R-101 3x recipe with
# open-mmlab's (PyTorch-style, RGB) ResNeXt weights as in mmdet's x101
# configs. No EmbedMask X-101 result has been published: nothing to reproduce.
_base_ = './embedmask_r101-caffe_fpn_8xb2-ms-3x_coco.py'
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        type='ResNeXt',
        groups=32,
        base_width=4,
        style='pytorch',
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained',
                      checkpoint='open-mmlab://resnext101_32x4d')))
