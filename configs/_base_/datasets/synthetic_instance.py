# Built-in synthetic shapes dataset (tools/make_synthetic_coco.py writes it);
# laid out like mmdet's coco_instance.py so children override the same keys.
# RobustCocoDataset / RobustLoadImageFromFile (embedmask_mmdet.datasets) skip
# bad annotations, missing and corrupt training images with logged counts;
# docs/robustness.md ("Bad input and faults") lists the cases and the
# switches.
dataset_type = 'RobustCocoDataset'
data_root = 'data/synthetic/'
metainfo = dict(
    classes=('circle', 'rectangle', 'triangle', 'ellipse', 'ring', 'star'),
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25),
             (145, 30, 180), (245, 130, 48)])
img_scale = (320, 320)
backend_args = None

train_pipeline = [
    # on_corrupt='error' to stop at the first unreadable image instead
    dict(type='RobustLoadImageFromFile', on_corrupt='skip',
         backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    # mmcv's loader on purpose: DetInferencer looks for this exact type, and it
    # already raises naming the file when an image cannot be read or decoded
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    # If you don't have a gt annotation, delete the pipeline
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    # for iteration-based loops (the CPU schedules in ../schedules/): an
    # infinite sampler avoids mmengine's 2 s pause at every epoch end (which
    # dominates on tiny datasets); an epoch-based schedule needs
    # DefaultSampler back
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        bad_annotation='skip',  # or 'error'
        missing_image='skip',  # or 'error'
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        # a missing val image would count as missed objects in CocoMetric
        missing_image='error',
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

# test-time augmentation (tools/test.py --tta, ours or mmdet's; docs/tta.md):
# each of three scales, the test scale and two larger ones (the shapes are
# small), with and without a horizontal flip; boxes merged by NMS, masks by
# averaging each detection's matched p over the views (EmbedMaskTTAModel)
tta_model = dict(type='EmbedMaskTTAModel')
tta_scales = [(320, 320), (416, 416), (512, 512)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True) for s in tta_scales],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                         'scale_factor', 'flip', 'flip_direction'))]])
]
