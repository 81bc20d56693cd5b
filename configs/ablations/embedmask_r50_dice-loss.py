# Ablation: Dice mask loss, not Lovasz hinge (head gives logits: activate).
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(
    mask_head=dict(
        loss_mask=dict(
            _delete_=True,
            type='DiceLoss',
            use_sigmoid=True,
            activate=True,
            eps=5e-6,
            loss_weight=1.0)))
