# The demo's schedule (`make demo`): cpu_adamw_3k.py shortened to 1300
# iterations, about 15-16 minutes of training on 2 CPU cores (0.66-0.75 s per
# iteration on the machines measured), so that `make demo` stays under 20
# minutes with dataset generation and evaluation.
_base_ = './cpu_adamw_3k.py'

max_iters = 1300
train_cfg = dict(max_iters=max_iters, val_interval=650)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[975, 1210], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=650))
