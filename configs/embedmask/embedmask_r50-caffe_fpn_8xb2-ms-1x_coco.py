# EmbedMask R-50-FPN, AdelaiDet MS_R_50_1x, reference-exact: the published
# model (see the model base) with detectron2's recipe: SGD lr 0.01, momentum
# 0.9, wd 1e-4 and none on norm layers (WEIGHT_DECAY_NORM 0), batch 16
# (8 GPUs x 2), 90k iters, steps 60k/80k, linear warmup from 1/1000 over
# 1000 iters; train short side 640..800 (long 1333), test 800/1333, PIL
# resizing.
# The authors' checkpoint EmbedMask_R_50_1x.pth converts onto this config
# (tools/model_converters/adelaidet2mmdet.py).
# Should reproduce: AdelaiDet README (yinghdb/AdelaiDet), COCO val2017,
# box AP 39.9 / mask AP 36.2 (test-dev 40.1 / 36.3).
_base_ = [
    '../_base_/models/embedmask_r50_fpn.py',
    '../_base_/datasets/ms-poly-90k_robust-coco-instance.py'
]
# custom_imports comes from the model base; restated so it survives any
# reordering of _base_.
custom_imports = dict(imports=['embedmask_mmdet'], allow_failed_imports=False)
# the mmdet base already has detectron2's 90k schedule: MultiStepLR
# 60k/80k, LinearLR from 0.001 over 1000 iters, SGD momentum 0.9 wd 1e-4,
# batch 2/GPU, PIL multi-scale 640..800 train, 800/1333 test
optim_wrapper = dict(
    optimizer=dict(lr=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.))
auto_scale_lr = dict(enable=False, base_batch_size=16)
