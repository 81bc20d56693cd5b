# Ablation: test masks kept only inside the box + 2 px (FCOS repo), not whole.
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(test_cfg=dict(crop_to_box=True))
