# Ablation: test mask threshold 0.5 -> 0.53 (the FCOS-repo value).
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(test_cfg=dict(mask_thr=0.53))
