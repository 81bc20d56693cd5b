# Ablation: fixed margin - what does the learned proposal margin buy?
_base_ = '../embedmask/embedmask_r50_fpn_ms-1x_coco.py'

model = dict(bbox_head=dict(margin_type='fixed'))
