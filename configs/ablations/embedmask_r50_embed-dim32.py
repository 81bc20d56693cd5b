# Ablation: embed_dim 16 -> 32 (both heads) - does a larger D help?
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

embed_dim = 32
model = dict(
    bbox_head=dict(embed_dim=embed_dim), mask_head=dict(embed_dim=embed_dim))
