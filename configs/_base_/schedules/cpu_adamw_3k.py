# The CPU schedule of the ResNet-18 config: 3000 iterations of AdamW (batch 4,
# from the dataset base), linear warmup over 200 iterations, steps at 75 % and
# 90 %, with the iteration-based runtime (logs, atomic checkpoints, the
# distributed timeout). cpu_adamw_1300it.py is the demo's shorter run.
_base_ = 'mmdet::_base_/default_runtime.py'

max_iters = 3000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=1000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # atomic writes; --resume falls back to the newest complete checkpoint
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=1000,
                    max_keep_ckpts=2))
# a rank stuck in a collective (a peer died) fails after 10 min instead of
# mmengine's default 30; torchrun tears the group down as soon as a rank exits
env_cfg = dict(dist_cfg=dict(timeout=600))
log_processor = dict(by_epoch=False)
