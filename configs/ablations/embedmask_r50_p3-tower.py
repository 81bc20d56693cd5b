# Ablation: FCOS-repo pixel branch (GN P3 tower, x2 up), not P3-P5 fusion.
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(mask_head=dict(pixel_branch=dict(type='p3_tower')))
