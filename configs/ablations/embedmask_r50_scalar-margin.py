# Ablation: one scalar margin per proposal, not per dim (arXiv v1 style).
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(bbox_head=dict(margin_type='scalar'))
