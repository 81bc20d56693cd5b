# Ablation: embed_dim 16 -> 8 (both heads) - does a small D hurt separation?
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

embed_dim = 8
model = dict(
    bbox_head=dict(embed_dim=embed_dim), mask_head=dict(embed_dim=embed_dim))
