"""EmbedMaskTTAModel: one identity view is plain predict exactly; a mirror-
symmetric image under flip TTA gives mirror-symmetric results; batches of
images are merged per image; the mmdet data pipeline (TestTimeAug) feeds it.

The models are the CPU config narrowed, with random weights and score
threshold 0 (every design branch of the mask placement), so that each image
has its full set of detections with non-trivial masks.
"""
import copy
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate

import embedmask_mmdet  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))
CPU_CONFIG = osp.join(ROOT,
                      'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')
SIZE = 96
TINY = dict(
    neck=dict(out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=1,
                   proposal_channels=16),
    mask_head=dict(in_channels=64, semantic_channels=16,
                   pixel_branch=dict(feat_channels=16, num_stacked_convs=1)),
    test_cfg=dict(score_thr=0., nms_pre=100, max_per_img=25))
DESIGNS = {
    'embedding': {},
    'centre-prob': dict(test_cfg=dict(mask_resample='prob', mask_thr=0.4)),
    'adelaidet': dict(mask_head=dict(alignment='adelaidet'),
                      test_cfg=dict(mask_resample='prob')),
    'mmdet-crop': dict(test_cfg=dict(
        mask_resample='prob', thresh_with_ctr=False, score_type='cls_ctr',
        crop_to_box=True, min_bbox_size=0)),
    'v3': dict(test_cfg=dict(
        candidate_rule='fcos_repo', thresh_with_ctr=False,
        mask_resample='log_prob', mask_thr=0.53, crop_to_box=False,
        score_type='cls_ctr', min_bbox_size=0)),
}
META = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
        'flip', 'flip_direction')


def build_model(design):
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(CPU_CONFIG)
    cfg.merge_from_dict(dict(model=TINY))
    cfg.merge_from_dict(dict(model=DESIGNS[design]))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # margins giving masks of ~1-5 % of the image
        model.bbox_head.embedding_head.margin_conv.bias.fill_(3.)
    return model.eval()


def plain_pipeline(scale):
    return Compose([
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='PackDetInputs', meta_keys=META[:5])])


def tta_pipeline(scales, flips):
    return Compose([
        dict(type='LoadImageFromFile'),
        dict(type='TestTimeAug', transforms=[
            [dict(type='Resize', scale=s, keep_ratio=True) for s in scales],
            [dict(type='RandomFlip', prob=float(f)) for f in flips],
            [dict(type='PackDetInputs', meta_keys=META)]])])


def batch_of(pipeline, paths):
    return pseudo_collate([pipeline(dict(img_path=p, img_id=i))
                           for i, p in enumerate(paths)])


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Shapes images at the test size and at 1.25x (resized by the
    pipeline), and a mirror-symmetric one."""
    from embedmask_mmdet.datasets import generate_synthetic_coco
    base = tmp_path_factory.mktemp('tta')
    paths = {}
    for name, size in (('same', (SIZE, SIZE)), ('resized', (120, 150))):
        root = str(base / name) + '/'
        generate_synthetic_coco(root, num_train=1, num_val=2, seed=5,
                                size=size)
        paths[name] = sorted(
            osp.join(root, 'val', f) for f in __import__('os').listdir(
                osp.join(root, 'val')))
    img = cv2.imread(paths['same'][0])
    img[:, SIZE // 2:] = img[:, :SIZE // 2][:, ::-1]
    paths['symmetric'] = str(base / 'symmetric.png')
    cv2.imwrite(paths['symmetric'], img)
    return paths


def tta_model(model, **tta_cfg):
    return MODELS.build(dict(type='EmbedMaskTTAModel', module=model,
                             tta_cfg=tta_cfg or None)).eval()


@pytest.mark.parametrize('design', list(DESIGNS))
def test_identity_view_equals_predict(images, design):
    model = build_model(design)
    tta = tta_model(model)
    paths = images['same'] + images['resized']
    with torch.no_grad():
        plain = model.test_step(batch_of(plain_pipeline((SIZE, SIZE)), paths))
        merged = tta.test_step(batch_of(tta_pipeline([(SIZE, SIZE)], [0]),
                                        paths))
    assert len(plain) == len(merged) == len(paths)
    nontrivial = 0
    for ref, got in zip(plain, merged):
        ref, got = ref.pred_instances, got.pred_instances
        assert len(ref) > 5
        assert torch.equal(ref.labels, got.labels)
        assert torch.equal(ref.scores, got.scores)
        assert torch.equal(ref.bboxes, got.bboxes)
        assert ref.masks.shape == got.masks.shape
        assert torch.equal(ref.masks, got.masks)
        area = ref.masks.flatten(1).float().mean(1)
        nontrivial += int(((area > 0) & (area < 0.5)).sum())
    assert nontrivial >= 10  # the masks compared are not all empty / full


@pytest.mark.parametrize('design', ['centre-prob', 'adelaidet'])
def test_symmetric_image_gives_symmetric_results(images, design):
    model = build_model(design)
    # room for all 2 x 25 detections: a cut at max_per_img could fall
    # between two twins of equal score
    tta = tta_model(model, max_per_img=50)
    with torch.no_grad():
        (res, ) = tta.test_step(batch_of(
            tta_pipeline([(SIZE, SIZE)], [0, 1]), [images['symmetric']]))
    res = res.pred_instances
    assert len(res) > 5
    width = res.masks.shape[-1]
    mirrored = res.bboxes[:, [2, 1, 0, 3]] * res.bboxes.new_tensor(
        [-1, 1, -1, 1]) + res.bboxes.new_tensor([width, 0, width, 0])
    unmatched = []
    for i in range(len(res)):
        twins = [j for j in range(len(res))
                 if res.labels[j] == res.labels[i]
                 and abs(float(res.scores[j] - res.scores[i])) < 1e-6
                 and torch.allclose(res.bboxes[j], mirrored[i], atol=1e-3)
                 and torch.equal(res.masks[j], res.masks[i].flip(-1))]
        if not twins:
            unmatched.append(i)
    assert not unmatched, f'no mirror twin for detections {unmatched}'


def test_flip_view_changes_the_merged_masks(images):
    """A second view changes the masks: they are merged, not taken from the
    view that won the NMS."""
    model = build_model('centre-prob')
    tta = tta_model(model)
    paths = images['same'][:1]
    with torch.no_grad():
        (one, ) = tta.test_step(batch_of(tta_pipeline([(SIZE, SIZE)], [0]),
                                         paths))
        (two, ) = tta.test_step(batch_of(
            tta_pipeline([(SIZE, SIZE)], [0, 1]), paths))
    one, two = one.pred_instances, two.pred_instances
    assert len(two) >= len(one) > 0
    assert not torch.equal(one.masks[:len(two)], two.masks[:len(one)])


@pytest.mark.slow  # ~3 s: every view of a batch and of each image
def test_batch_of_images_equals_one_by_one(images):
    model = build_model('embedding')
    tta = tta_model(model)
    pipeline = tta_pipeline([(SIZE, SIZE), (128, 128)], [0, 1])
    paths = images['same'] + images['resized'][:1]
    with torch.no_grad():
        batched = tta.test_step(batch_of(pipeline, paths))
        alone = [tta.test_step(batch_of(pipeline, [p]))[0] for p in paths]
    assert len(batched) == 3
    for b, a in zip(batched, alone):
        assert b.ori_shape == a.ori_shape
        b, a = b.pred_instances, a.pred_instances
        assert len(b) == len(a) > 5
        torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.bboxes, a.bboxes, atol=1e-2, rtol=0)
        assert b.masks.shape == a.masks.shape
        assert (b.masks != a.masks).float().mean() < 1e-3


def test_refuses_models_without_embedmask_heads():
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(osp.join(
        osp.dirname(__import__('mmdet').__file__), '.mim', 'configs',
        'fcos', 'fcos_r50-caffe_fpn_gn-head_1x_coco.py'))
    cfg.model.backbone.init_cfg = None
    with pytest.raises(TypeError, match='wraps an EmbedMask model'):
        MODELS.build(dict(type='EmbedMaskTTAModel', module=cfg.model))
    with pytest.raises(ValueError, match='match_iou'):
        tta_model(build_model('embedding'), match_iou=0.)
