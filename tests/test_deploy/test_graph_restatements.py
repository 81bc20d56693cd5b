"""What deploy/graph.py restates, held to the model in the fast tier: the
graph run eagerly (no export) on one image gives predict's detections for
each candidate rule, and, with ``masks='dense'``, p > mask_thr where
predict's masks are, for each placement the dense contract restates.
(tests/test_deploy/test_onnx_parity.py holds the exported graphs, slow;
test_fcos_repo_inference.py holds the 'fcos_repo' rule.)"""
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config

from embedmask_mmdet.deploy.graph import EmbedMaskGraph

CPU_CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'embedmask' / \
    'embedmask_r18_fpn_1xb4-3k_synthetic.py'
# the graph's restatements: candidate rule x dense placement
CASES = {
    # the CPU configs: AdelaiDet selection, the 'embedding' resample
    'adelaidet-rule, embedding': dict(),
    # mmdet's selection (boxes clipped), p resampled
    'mmdet-rule, prob': dict(test_cfg=dict(
        candidate_rule='mmdet', thresh_with_ctr=False, score_type='cls_ctr',
        mask_resample='prob')),
    # the published model's placement (aligned_bilinear)
    'adelaidet-alignment': dict(mask_head=dict(alignment='adelaidet'),
                                test_cfg=dict(mask_resample='prob')),
}
SHAPE, IMG = (192, 256), (180, 240)


def tiny_model(overrides: dict):
    cfg = Config.fromfile(str(CPU_CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.merge_from_dict(dict(model=dict(
        neck=dict(out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1,
                       proposal_channels=16),
        mask_head=dict(in_channels=32),
        test_cfg=dict(score_thr=0.05, nms_pre=100, max_per_img=100))))
    cfg.merge_from_dict(dict(model=overrides))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # scores above score_thr, masks of a few %
        model.bbox_head.conv_cls.bias.fill_(-1.)
        model.bbox_head.embedding_head.margin_conv.bias.fill_(3.)
    return model.eval()


@pytest.mark.parametrize('case', list(CASES))
def test_eager_graph_is_predict(case):
    model = tiny_model(CASES[case])
    image = torch.randn(1, 3, *SHAPE)
    meta = dict(img_shape=IMG, ori_shape=IMG, pad_shape=SHAPE,
                batch_input_shape=SHAPE, scale_factor=(1., 1.))
    with torch.no_grad():
        (pred, ) = model.predict(image, [DetDataSample(metainfo=meta)],
                                 rescale=False)
        dets, labels, masks = EmbedMaskGraph(model, 100, masks='dense')(
            image, torch.tensor(IMG))
    inst = pred.pred_instances
    assert len(inst) == len(dets) > 0, case
    # the graph's boxes are the head's; the runtime clips them to the image
    # as the mask head's predict does
    boxes = dets[:, :4].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, IMG[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, IMG[0])
    # the same detections; order may differ only among equal scores
    used = set()
    order = []
    for i in range(len(inst)):
        j = next((j for j in range(len(dets)) if j not in used
                  and labels[j] == inst.labels[i]
                  and (boxes[j] - inst.bboxes[i]).abs().max() <= 1e-4
                  and (dets[j, 4] - inst.scores[i]).abs() <= 1e-5), None)
        assert j is not None, (case, i, inst.bboxes[i], inst.scores[i])
        used.add(j)
        order.append(j)
    thr = model.mask_head.settings.mask_thr
    got = masks[order, :IMG[0], :IMG[1]] > thr
    # predict thresholds the same p, computed in another order: only pixels
    # at the threshold may differ
    differ = got != inst.masks
    assert inst.masks.any(), case
    assert differ.float().mean() < 1e-4, (case, int(differ.sum()))
