# Ablation: one scalar margin per proposal, not per dim (arXiv v1 style).
_base_ = '../embedmask/embedmask_r50_fpn_ms-1x_coco.py'

model = dict(bbox_head=dict(margin_type='scalar'))
