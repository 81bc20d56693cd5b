# Ablation: binary cross-entropy mask loss (on logits), not Lovasz hinge.
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(
    mask_head=dict(
        loss_mask=dict(
            _delete_=True,
            type='CrossEntropyLoss',
            use_sigmoid=True,
            loss_weight=1.0)))
