# Template: EmbedMask-Lite on your own COCO-format instance dataset.
# Copy this file, then set the four marked values. docs/custom_dataset.md
# walks through it; tests/test_configs/test_custom_dataset.py trains it for a few
# iterations on a generated 3-class set.
_base_ = './embedmask-lite0_fpn_1xb4-1300it_synthetic.py'

# (1) your classes, in the order of the annotation file's category ids
classes = ('cat', 'dog', 'bird')
metainfo = dict(classes=classes)
num_classes = len(classes)
# (2) where the data is: images under <data_root><img folder>, COCO json
data_root = 'data/my_dataset/'
train_ann = 'annotations/instances_train.json'
val_ann = 'annotations/instances_val.json'
train_img = 'train/'
val_img = 'val/'

# (3) both heads predict num_classes (the box head's classifier and the
# mask head's semantic branch)
model = dict(
    bbox_head=dict(num_classes=num_classes),
    mask_head=dict(num_classes=num_classes))

train_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file=train_ann,
    data_prefix=dict(img=train_img)))
val_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file=val_ann,
    data_prefix=dict(img=val_img)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann)
test_evaluator = val_evaluator

# (4) the schedule (the demo's, configs/_base_/schedules/cpu_adamw_1300it.py):
# 1300 iterations of batch 4 suit a few hundred images; scale max_iters and
# the milestones (75 % and 93 % of the run) with your dataset
max_iters = 1300
train_cfg = dict(max_iters=max_iters, val_interval=650)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[975, 1210], gamma=0.1)
]
