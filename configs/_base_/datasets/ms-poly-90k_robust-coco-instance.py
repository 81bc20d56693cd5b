# mmdet's detectron2-style COCO instance recipe (multi-scale 640..800, 90k
# iterations, PIL decoding) with the package's fault handling:
_base_ = 'mmdet::common/ms-poly-90k_coco-instance.py'
# (docs/robustness.md)
# - bad annotations (degenerate polygons, boxes outside the image, unknown
#   categories) and missing training images are skipped, with counts in the
#   log (RobustCocoDataset);
# - a missing val/test image is an error, since CocoMetric would count its
#   objects as missed;
# - checkpoints and last_checkpoint are written atomically, and auto-resume
#   skips incomplete ones (AtomicCheckpointHook).
# Images are still decoded by mmdet's LoadImageFromFile with PIL, as in the
# authors' recipe. RobustLoadImageFromFile (which also skips corrupt files)
# decodes with OpenCV; swap it into train_pipeline to use it.
train_dataloader = dict(dataset=dict(
    type='RobustCocoDataset', bad_annotation='skip', missing_image='skip'))
val_dataloader = dict(dataset=dict(type='RobustCocoDataset',
                                   missing_image='error'))
test_dataloader = val_dataloader
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

# test-time augmentation (tools/test.py --tta, ours or mmdet's): the test
# scale and a larger one, each with and without a horizontal flip, merged by
# EmbedMaskTTAModel (masks included). Not measured on COCO here; the CPU
# configs' TTA is measured in docs/benchmarks.md.
tta_model = dict(type='EmbedMaskTTAModel')
tta_scales = [(1333, 800), (1333, 1000)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None,
         imdecode_backend='pillow'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True, backend='pillow')
         for s in tta_scales],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                         'scale_factor', 'flip', 'flip_direction'))]])
]
