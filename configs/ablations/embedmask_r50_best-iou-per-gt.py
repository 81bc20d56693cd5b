# Ablation: train one mask per gt (best box IoU, FCOS repo), not all positives.
_base_ = '../embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

model = dict(mask_head=dict(sampling='best_iou_per_gt'))
