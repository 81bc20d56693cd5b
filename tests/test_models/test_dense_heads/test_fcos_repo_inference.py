"""The FCOS-repo (v3) design's pixel tower and test time against float64
transcriptions of the authors' code (yinghdb/EmbedMask e9465cb):

- (d) embed_mask.py: the mask tower is 4 x [conv 3x3 with bias, GN, ReLU]
  on P3, the prediction conv, the stride-8 locations x position_scale / 100
  added to the 2 spatial channels, then a x2 bilinear upsample;
- (c) inference.py forward_for_single_feature_map: candidates σ(cls) > 0.05,
  the top PRE_NMS_TOP_N per level by σ(cls) σ(ctr), score σ(cls) σ(ctr),
  boxes clipped to [0, w - 1] x [0, h - 1];
- (b) inference.py compute_mask_prob + coco_eval: log p = -Σ s (e - q)^2
  inside [int(x1 / 4) - 2, int(x2 / 4) + 2) x [..] cells, -10 elsewhere,
  the padded map resized as log p to ceil(o_h 4 H0 / h_in) x .. with
  bilinear (align_corners=False), cropped to [:H0, :W0], > log 0.53.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.structures import InstanceData

from heads_common import (EMBED_DIM, IN_CH, NUM_CLASSES, STRIDES, build_heads,
                          make_test_cfg, pyramid)

CPU_CONFIG = Path(__file__).resolve().parents[3] / 'configs' / 'embedmask' / \
    'embedmask_r18_fpn_1xb4-3k_synthetic.py'
V3_TOWER = dict(type='p3_tower', feat_channels=8, num_stacked_convs=3,
                norm_cfg=dict(type='GN', num_groups=4))


def v3_mask_head(**test_cfg):
    _, mask_head = build_heads('v3', mask_overrides=dict(
        pixel_branch=V3_TOWER, alignment='fcos_repo',
        test_cfg=make_test_cfg(**test_cfg)))
    return mask_head


# ------------------------------------------------------------------ (d) tower
def authors_pixel_embedding(head, p3):
    """embed_mask.py forward: mask_tower, pixel embed convs, locations added
    at stride 8, then the x2 bilinear upsample (float64)."""
    x = p3.double()
    branch = head.pixel_branch.double()
    tower = [branch.convs_all_levels[0][0], *branch.conv_branch]
    for module in tower:
        conv, gn = module.conv, module.norm
        x = F.relu(F.group_norm(
            F.conv2d(x, conv.weight, conv.bias, padding=1),
            gn.num_groups, gn.weight, gn.bias, gn.eps))
    pred = branch.conv_pred
    embed = F.conv2d(x, pred.weight, pred.bias, padding=1)
    h, w = embed.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) * 8 + 4,
                            torch.arange(w, dtype=torch.float64) * 8 + 4,
                            indexing='ij')
    scale = head.coord_scale.double() / 100.
    embed = torch.cat([embed[:, :1] + xs * scale, embed[:, 1:2] + ys * scale,
                       embed[:, 2:]], dim=1)
    branch.float()
    return F.interpolate(embed, scale_factor=2, mode='bilinear',
                         align_corners=False)


def test_v3_tower_is_four_biased_gn_convs():
    head = v3_mask_head()
    convs = [m for m in head.pixel_branch.modules()
             if isinstance(m, ConvModule)]
    assert len(convs) == 4
    for module in convs:
        assert module.conv.bias is not None and module.conv.bias.requires_grad
        assert isinstance(module.norm, torch.nn.GroupNorm)
        # the FCOS repo's init: Normal(0.01), bias 0
        assert torch.all(module.conv.bias == 0)
        assert module.conv.weight.std() < 0.02
    keys = head.state_dict().keys()
    assert 'pixel_branch.conv_branch.0.conv.bias' in keys
    # the other designs keep mmdet's bias-free normed convs
    _, default = build_heads('default')
    assert all(m.conv.bias is None for m in default.pixel_branch.modules()
               if isinstance(m, ConvModule))


def test_v3_pixel_embedding_equals_authors():
    torch.manual_seed(0)
    head = v3_mask_head()
    with torch.no_grad():  # biases, GN affine and the scale all matter
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    p3 = pyramid(batch=2, seed=1)
    ours = head.pixel_embedding(p3)
    ref = authors_pixel_embedding(head, p3[0])
    assert ours.shape == ref.shape == (2, EMBED_DIM, 32, 40)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=2e-5)
    # the coordinates added after the upsample differ on the border only
    head.coords_before_upsample = False
    after = head.pixel_embedding(p3).double()
    diff = (after - ref).abs().amax(dim=(0, 1))
    assert diff[1:-1, 1:-1].max() < 2e-5
    assert diff[0].min() > 1e-3 and diff[:, -1].min() > 1e-3


def test_v3_biases_are_trained():
    head = v3_mask_head()
    head.train()
    embed = head.pixel_embedding(pyramid(seed=2))
    embed.square().sum().backward()
    grads = [m.conv.bias.grad for m in head.pixel_branch.modules()
             if isinstance(m, ConvModule)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------- (c) selection
def fcos_repo_candidates(cls_scores, bbox_preds, ctrs, points, img_shape,
                         thr, pre_nms_top_n):
    """inference.py forward_for_single_feature_map for one image, all levels:
    (boxes, scores, labels) in float64, before NMS."""
    boxes, scores, labels = [], [], []
    for cls, reg, ctr, pts in zip(cls_scores, bbox_preds, ctrs, points):
        cls = cls[0].double().permute(1, 2, 0).reshape(-1, NUM_CLASSES)
        cls = cls.sigmoid()
        reg = reg[0].double().permute(1, 2, 0).reshape(-1, 4)
        ctr = ctr[0].double().permute(1, 2, 0).reshape(-1).sigmoid()
        candidate = cls > thr
        top_n = min(int(candidate.sum()), pre_nms_top_n)
        cls = cls * ctr[:, None]
        loc, label = candidate.nonzero(as_tuple=True)
        score = cls[loc, label]
        if len(score) > top_n:
            score, keep = score.topk(top_n, sorted=False)
            loc, label = loc[keep], label[keep]
        p = pts[loc].double()
        det = torch.stack([p[:, 0] - reg[loc, 0], p[:, 1] - reg[loc, 1],
                           p[:, 0] + reg[loc, 2], p[:, 1] + reg[loc, 3]], 1)
        h, w = img_shape
        det[:, 0::2] = det[:, 0::2].clamp(0, w - 1)
        det[:, 1::2] = det[:, 1::2].clamp(0, h - 1)
        boxes.append(det)
        scores.append(score)
        labels.append(label)
    return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


def sort_rows(boxes, scores, labels):
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return boxes[order].double(), scores[order].double(), labels[order]


@pytest.mark.parametrize('nms_pre', [1000, 7])
def test_v3_candidates_equal_authors(nms_pre):
    thr = 0.3
    # no suppression (IoU > 1 never holds), so every candidate reaches the
    # output: the comparison is of the selection itself
    cfg = make_test_cfg(candidate_rule='fcos_repo', score_thr=thr,
                        nms_pre=nms_pre, nms=dict(type='nms',
                                                  iou_threshold=1.0),
                        max_per_img=1000, min_bbox_size=-1)
    bbox_head, _ = build_heads('v3', bbox_overrides=dict(test_cfg=cfg))
    bbox_head.eval()
    g = torch.Generator().manual_seed(3)
    feats = pyramid(seed=4)
    with torch.no_grad():
        cls_scores, bbox_preds, ctrs, params = bbox_head(feats)
    # logits spread so that cls > thr and cls x ctr > thr select differently,
    # distances that cross the image border
    cls_scores = [torch.randn(c.shape, generator=g) * 2 - 1
                  for c in cls_scores]
    ctrs = [torch.randn(c.shape, generator=g) * 2 for c in ctrs]
    bbox_preds = [torch.rand(b.shape, generator=g) * 60 for b in bbox_preds]
    img_shape = (100, 150)
    meta = dict(img_shape=img_shape, ori_shape=img_shape,
                scale_factor=(1., 1.), pad_shape=(128, 160))
    (ours, ) = bbox_head.predict_by_feat(
        cls_scores, bbox_preds, ctrs, params, batch_img_metas=[meta])
    points = bbox_head.prior_generator.grid_priors(
        [c.shape[-2:] for c in cls_scores], device='cpu')
    ref = fcos_repo_candidates(cls_scores, bbox_preds, ctrs, points,
                               img_shape, thr, nms_pre)
    ours_sorted = sort_rows(ours.bboxes, ours.scores, ours.labels)
    ref_sorted = sort_rows(*ref)
    assert len(ref_sorted[1]) == len(ours_sorted[1]) > 0
    torch.testing.assert_close(ours_sorted[1], ref_sorted[1], rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(ours_sorted[0], ref_sorted[0], rtol=0,
                               atol=1e-4)
    assert torch.equal(ours_sorted[2], ref_sorted[2])
    assert ours.bboxes[:, 2].max() <= img_shape[1] - 1
    # AdelaiDet's rule (cls x ctr > thr) keeps fewer candidates here
    cfg.candidate_rule = 'adelaidet'
    (adelaidet, ) = bbox_head.predict_by_feat(
        cls_scores, bbox_preds, ctrs, params, batch_img_metas=[meta])
    assert len(adelaidet) < len(ours)


def test_candidate_rule_from_thresh_with_ctr_and_conflicts():
    from embedmask_mmdet.models.dense_heads.embedmask_bbox_predict import \
        candidate_rule
    assert candidate_rule(dict(thresh_with_ctr=True)) == 'adelaidet'
    assert candidate_rule(dict(thresh_with_ctr=False)) == 'mmdet'
    assert candidate_rule({}) == 'mmdet'
    assert candidate_rule(dict(candidate_rule='fcos_repo',
                               thresh_with_ctr=False)) == 'fcos_repo'
    with pytest.raises(ValueError, match='contradicts'):
        candidate_rule(dict(candidate_rule='fcos_repo', thresh_with_ctr=True))
    with pytest.raises(ValueError, match="candidate_rule must be one of"):
        build_heads(bbox_overrides=dict(
            test_cfg=make_test_cfg(candidate_rule='fcos')))


# --------------------------------------------------------------- (b) masks
def authors_masks(pixel_embed, q, s, boxes, img_shape, ori_shape, thr):
    """compute_mask_prob (log p in the +-2-cell window, -10 elsewhere), then
    coco_eval's resize of the padded map and threshold (float64)."""
    d, o_h, o_w = pixel_embed.shape
    e = pixel_embed.double()
    log_p = torch.full((len(q), o_h, o_w), -10., dtype=torch.float64)
    for k, box in enumerate(boxes.tolist()):
        x1 = max(int(box[0] / 4) - 2, 0)
        y1 = max(int(box[1] / 4) - 2, 0)
        x2 = min(int(box[2] / 4) + 2, o_w)
        y2 = min(int(box[3] / 4) + 2, o_h)
        diff = e[:, y1:y2, x1:x2] - q[k].double()[:, None, None]
        log_p[k, y1:y2, x1:x2] = -(s[k].double()[:, None, None] *
                                   diff.square()).sum(0)
    h_in, w_in = img_shape
    H0, W0 = ori_shape
    size = (math.ceil(o_h * 4 * H0 / h_in), math.ceil(o_w * 4 * W0 / w_in))
    up = F.interpolate(log_p[None], size=size, mode='bilinear',
                       align_corners=False)[0, :, :H0, :W0]
    return up, up > math.log(thr)


def v3_detections(head, n=6, seed=0, img_shape=(120, 150)):
    g = torch.Generator().manual_seed(seed)
    h, w = img_shape
    x1 = torch.rand(n, generator=g) * (w - 40)
    y1 = torch.rand(n, generator=g) * (h - 40)
    bw = 8 + torch.rand(n, generator=g) * 50
    bh = 8 + torch.rand(n, generator=g) * 50
    boxes = torch.stack([x1, y1, (x1 + bw).clamp(max=w - 1),
                         (y1 + bh).clamp(max=h - 1)], 1)
    points = (boxes[:, :2] + boxes[:, 2:]) / 2
    return InstanceData(
        bboxes=boxes, points=points, scores=torch.rand(n, generator=g),
        labels=torch.zeros(n, dtype=torch.long),
        embeddings=torch.randn(n, EMBED_DIM, generator=g) * 0.1,
        # large enough margins that masks reach the window's edge
        margins=torch.rand(n, EMBED_DIM, generator=g) * 4 + 1.)


@pytest.mark.parametrize('ori_shape', [(120, 150), (240, 300)])
def test_v3_test_masks_equal_authors(ori_shape):
    head = v3_mask_head(mask_resample='log_prob', mask_thr=0.53,
                        crop_to_box=False, window_padding=2)
    head.eval()
    img_shape, pad = (120, 150), (128, 160)
    pixel_embed = head.pixel_embedding(pyramid(seed=5))[0].detach()
    # spread the spatial channels like coordinates (p falls off in space)
    results = v3_detections(head)
    q = head.proposal_embedding(results)
    meta = dict(img_shape=img_shape, ori_shape=ori_shape, pad_shape=pad,
                scale_factor=(ori_shape[1] / 150, ori_shape[0] / 120))
    (ours, ) = head.predict_by_feat(pixel_embed[None], None, [results],
                                    [meta], rescale=True)
    ref_log, ref = authors_masks(pixel_embed, q, results.margins,
                                 results.bboxes, img_shape, ori_shape, 0.53)
    assert ours.masks.shape == ref.shape
    assert ref.sum() > 100 and (~ref).sum() > 100
    wrong = ours.masks != ref
    # a float32 vs float64 difference can only flip pixels at the threshold
    near = (ref_log - math.log(0.53)).abs() < 1e-4
    assert not (wrong & ~near).any(), int((wrong & ~near).sum())
    # the TTA/export view of the same values
    probs = head.mask_probs_at_output(pixel_embed, results, meta)
    assert not ((probs > 0.53) != ref)[~near].any()
    # the test can fail: resampling p instead of log p, or no window,
    # gives other masks on this case
    head.test_cfg.mask_resample = 'prob'
    (as_prob, ) = head.predict_by_feat(pixel_embed[None], None, [results],
                                       [meta], rescale=True)
    assert ((as_prob.masks != ref) & ~near).any()


def test_window_log_prob_cells():
    from embedmask_mmdet.models.utils.mask_paste import window_log_prob
    log_p = torch.zeros(2, 10, 12)
    boxes = torch.tensor([[9., 5., 21., 13.], [0., 30., 47.9, 39.]])
    out = window_log_prob(log_p, boxes, 4, padding=2)
    # box 0: x cells [int(9/4) - 2, int(21/4) + 2) = [0, 7), y [0, 5)
    assert torch.equal((out[0] == 0).nonzero()[:, 0].unique(),
                       torch.arange(0, 5))
    assert torch.equal((out[0] == 0).nonzero()[:, 1].unique(),
                       torch.arange(0, 7))
    # box 1: x [0, min(11 + 2, 12)) = all 12, y [5, 10) (clamped)
    assert (out[1, 5:] == 0).all() and (out[1, :5] == -10).all()


def test_v3_candidates_and_masks_in_export_graph():
    """The export graph's candidate rule and log-p masks are the model's:
    on one image its detections and p > thr equal predict's."""
    pytest.importorskip('torch.export')
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from embedmask_mmdet.deploy.graph import EmbedMaskGraph
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(CPU_CONFIG))
    cfg.merge_from_dict(dict(model=dict(
        neck=dict(out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1,
                       proposal_channels=16),
        mask_head=dict(in_channels=32, alignment='fcos_repo',
                       pixel_branch=dict(type='p3_tower', feat_channels=32,
                                         num_stacked_convs=1,
                                         norm_cfg=dict(type='GN',
                                                       num_groups=8))),
        test_cfg=dict(candidate_rule='fcos_repo', thresh_with_ctr=False,
                      mask_resample='log_prob', mask_thr=0.53,
                      crop_to_box=False, score_thr=0.05, nms_pre=100,
                      max_per_img=20))))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # scores above score_thr, masks of a few %
        model.bbox_head.conv_cls.bias.fill_(-1.)
        model.bbox_head.embedding_head.margin_conv.bias.fill_(3.)
    model.eval()
    image = torch.randn(1, 3, 192, 256)
    meta = dict(img_shape=(180, 240), ori_shape=(180, 240),
                pad_shape=(192, 256),
                batch_input_shape=(192, 256), scale_factor=(1., 1.))
    with torch.no_grad():
        (pred, ) = model.predict(image, [DetDataSample(metainfo=meta)],
                                 rescale=False)
        dets, labels, masks = EmbedMaskGraph(model, 20, masks='dense')(
            image, torch.tensor([180, 240]))
    inst = pred.pred_instances
    assert len(inst) == len(dets) > 0
    torch.testing.assert_close(dets[:, :4], inst.bboxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(dets[:, 4], inst.scores, rtol=0, atol=1e-6)
    # the graph's p is the head's own resampled windowed log p, exp'd
    with torch.no_grad():
        pixel_embed = model.mask_head(model.extract_feat(image))[0][0]
        probs = model.mask_head.mask_probs_at_output(pixel_embed, inst, meta,
                                                     rescale=False)
    torch.testing.assert_close(masks[:, :180, :240], probs, rtol=0,
                               atol=1e-5)
    near = ((probs - 0.53).abs() < 1e-5)
    assert not ((masks[:, :180, :240] > 0.53) != inst.masks)[~near].any()
