# Ablation: no auxiliary semantic focal loss on P3 - what does it add?
_base_ = '../embedmask/embedmask_r50_fpn_ms-1x_coco.py'

model = dict(mask_head=dict(loss_semantic=None))
