# Ablation: no image coords in the embeddings - value of the spatial prior.
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(mask_head=dict(with_coords=False))
