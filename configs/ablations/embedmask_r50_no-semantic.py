# Ablation: no auxiliary semantic focal loss on P3 - what does it add?
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(mask_head=dict(loss_semantic=None))
