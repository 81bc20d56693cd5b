# EmbedMask on a CPU, ResNet-18 from scratch (init_cfg=None, nothing
# downloaded), on the built-in synthetic shapes dataset
# (tools/make_synthetic_coco.py). Used by the tests and the benchmarks; the
# demo uses the ImageNet-pretrained EfficientNet-Lite0 config
# (embedmask-lite0_fpn_1xb4-1300it_synthetic.py), which shares the model base.
_base_ = [
    '../_base_/models/embedmask_cpu.py',
    '../_base_/datasets/synthetic_instance.py',
    '../_base_/schedules/cpu_adamw_3k.py',
]
model = dict(
    # torchvision-style ImageNet normalisation (RGB), as mmdet's R-18 configs
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375]),
    backbone=dict(
        type='ResNet',
        depth=18,
        num_stages=4,
        # C3-C5 feed the neck's P3-P5 (P6, P7 from P5's output)
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512]))
