"""The EmbedMask detector built from configs/_base_/models/embedmask_r50_fpn.py
(with a tiny ResNet-18), run through the real DetDataPreprocessor."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet.datasets.transforms import PackDetInputs, Resize
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401  (registers the model)

MMLogger.get_current_instance().setLevel('WARNING')
# the data preprocessor is built from MODELS of the 'mmdet' scope

CONFIG = osp.join(osp.dirname(__file__), '..', '..', '..', 'configs', '_base_', 'models',
                  'embedmask_r50_fpn.py')
NUM_CLASSES = 3


def tiny_model_cfg(**test_overrides):
    cfg = Config.fromfile(CONFIG)
    model = copy.deepcopy(cfg.model)
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.update(in_channels=[64, 128, 256, 512], out_channels=16)
    model.bbox_head.update(
        num_classes=NUM_CLASSES, in_channels=16, feat_channels=16,
        stacked_convs=1, embed_dim=6, proposal_channels=8,
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    model.mask_head.update(
        num_classes=NUM_CLASSES, in_channels=16, embed_dim=6,
        pixel_branch=dict(type='p3p5_fusion', feat_channels=8,
                          num_stacked_convs=1),
        semantic_channels=8)
    # a random model: keep every box so that there is something to compare
    model.test_cfg.update(score_thr=0., nms_pre=200, max_per_img=20)
    model.test_cfg.update(test_overrides)
    return model


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    detector = MODELS.build(tiny_model_cfg())
    detector.init_weights()
    return detector


def test_config_wires_the_embedmask_parts(model):
    cfg = Config.fromfile(CONFIG)
    assert cfg.custom_imports.imports == ['embedmask_mmdet']
    assert type(model).__name__ == 'EmbedMask'
    assert type(model.bbox_head).__name__ == 'EmbedMaskBboxHead'
    assert type(model.mask_head).__name__ == 'EmbedMaskMaskHead'
    assert type(model.mask_head.loss_mask).__name__ == 'LovaszHingeLoss'
    assert model.data_preprocessor.pad_mask
    # the test cfg reaches both heads
    assert model.mask_head.test_cfg.mask_thr == 0.5
    assert model.bbox_head.test_cfg.score_type == 'sqrt_cls_ctr'


def test_mismatched_embed_dims_are_rejected():
    cfg = tiny_model_cfg()
    cfg.mask_head.embed_dim = 5
    with pytest.raises(ValueError, match='embed_dim'):
        MODELS.build(cfg)


def test_invalid_mask_thr_in_model_test_cfg():
    with pytest.raises(ValueError, match='mask_thr'):
        MODELS.build(tiny_model_cfg(mask_thr=1.0))


def packed_sample(ori_hw=(60, 75), scale=(160, 128), seed=0):
    """A synthetic image with two rectangle-and-disk instances, through
    mmdet's Resize and PackDetInputs."""
    rng = np.random.RandomState(seed)
    h, w = ori_hw
    img = rng.randint(0, 255, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 10:40, 8:40] = 1
    yy, xx = np.mgrid[:h, :w]
    masks[1] = ((yy - 35)**2 + (xx - 55)**2) < 12**2
    boxes = np.array([[8, 10, 40, 40], [43, 23, 67, 47]], np.float32)
    results = dict(
        img=img, img_id=seed, img_path=None, img_shape=(h, w),
        ori_shape=(h, w), gt_bboxes=HorizontalBoxes(boxes),
        gt_bboxes_labels=np.array([0, 2]),
        gt_masks=BitmapMasks(masks, h, w),
        gt_ignore_flags=np.zeros(2, bool))
    results = Resize(scale=scale, keep_ratio=True)(results)
    return PackDetInputs()(results)


def packed_batch(training):
    a = packed_sample((60, 75), seed=0)     # resized to 128 x 160
    b = packed_sample((50, 70), seed=1)     # resized to 114 x 160
    return dict(inputs=[a['inputs'], b['inputs']],
                data_samples=[a['data_samples'], b['data_samples']])


def test_loss_mode(model):
    model.train()
    data = model.data_preprocessor(packed_batch(True), True)
    assert data['inputs'].shape[-2:] == (128, 160)
    assert data['data_samples'][1].gt_instances.masks.height == 128
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness',
                           'loss_mask', 'loss_semantic'}
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() > 0, name
    sum(losses.values()).backward()
    for name in ('bbox_head.embedding_head.embed_conv.weight',
                 'bbox_head.embedding_head.margin_conv.weight',
                 'mask_head.pixel_branch.conv_pred.weight',
                 'neck.fpn_convs.0.conv.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, name
    model.zero_grad()


def test_loss_mode_without_instances(model):
    model.train()
    data = packed_batch(True)
    for sample in data['data_samples']:
        sample.gt_instances = sample.gt_instances[:0]
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert losses['loss_mask'].item() == 0.


def test_predict_mode(model):
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed_batch(False), False)
        out = model(**data, mode='predict')
    assert len(out) == 2
    for sample, ori in zip(out, [(60, 75), (50, 70)]):
        assert isinstance(sample, DetDataSample)
        pred = sample.pred_instances
        n = len(pred)
        assert n == 20
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, )
        assert pred.labels.shape == (n, )
        assert pred.masks.dtype == torch.bool
        assert pred.masks.shape == (n, *ori)
        assert (pred.bboxes[:, 0::2] <= ori[1]).all()
        assert (pred.bboxes[:, 1::2] <= ori[0]).all()
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
        assert (pred.labels < NUM_CLASSES).all()


def test_tensor_mode(model):
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed_batch(False), False)
        outs = model(**data, mode='tensor')
    assert isinstance(outs, tuple) and len(outs) == 2
    cls_scores, bbox_preds, centernesses, param_preds = outs[0]
    assert len(cls_scores) == 5
    assert cls_scores[0].shape == (2, NUM_CLASSES, 16, 20)
    assert param_preds[0].shape == (2, 2 * 6, 16, 20)
    pixel_embed, _ = outs[1]
    assert pixel_embed.shape == (2, 6, 16, 20)


def hand_sample(img_shape, ori_shape, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 255, (3, *img_shape), generator=g,
                        dtype=torch.uint8)
    scale = (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0])
    sample = DetDataSample(metainfo=dict(
        img_id=seed, img_shape=img_shape, ori_shape=ori_shape,
        scale_factor=scale))
    sample.gt_instances = InstanceData(
        bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    return img, sample


def _predict(model, images_and_samples):
    data = dict(inputs=[i for i, _ in images_and_samples],
                data_samples=[copy.deepcopy(s) for _, s in images_and_samples])
    with torch.no_grad():
        data = model.data_preprocessor(data, False)
        return data, model(**data, mode='predict')


def mask_iou(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


def match_detections(a, b):
    """Index into ``b`` of the detection of ``a`` with the same label and
    the closest box (order can differ when scores nearly tie)."""
    dist = (a.bboxes[:, None] - b.bboxes[None]).abs().amax(-1)
    dist[a.labels[:, None] != b.labels[None]] = float('inf')
    return dist.argmin(1), dist.amin(1)


def test_batch_of_two_sizes_equals_each_alone():
    torch.manual_seed(1)
    cfg = tiny_model_cfg()
    cfg.bbox_head.prior_margin = 0.3  # p = 0.5 at 30 pixels: real shapes
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        # spread the random scores: fewer near-ties at the top-k cut
        g = torch.Generator().manual_seed(1)
        model.bbox_head.conv_cls.weight.normal_(0, 0.3, generator=g)
        model.bbox_head.conv_centerness.weight.normal_(0, 0.3, generator=g)
        # the pixel branch's kaiming-uniform convs spread the embeddings far
        # beyond the margin of random proposals: back to masks of some size
        model.mask_head.pixel_branch.conv_pred.weight.mul_(0.03)
    first = hand_sample((120, 150), (60, 75), seed=1)    # rescaled x2
    second = hand_sample((128, 160), (128, 160), seed=2)
    data, batch = _predict(model, [first, second])
    assert data['inputs'].shape[-2:] == (128, 160)
    assert [s.img_shape for s in data['data_samples']] == [(120, 150),
                                                            (128, 160)]
    for img, item in enumerate((first, second)):
        alone_data, alone = _predict(model, [item])
        assert alone_data['inputs'].shape[-2:] == (128, 160)
        a, b = alone[0].pred_instances, batch[img].pred_instances
        ori = item[1].metainfo['ori_shape']
        assert b.masks.shape == (len(b), *ori)
        assert len(a) == len(b) > 0
        idx, dist = match_detections(a, b)
        assert (dist < 1e-3).all()
        assert idx.unique().numel() == len(a)  # one-to-one
        torch.testing.assert_close(b.scores[idx], a.scores, atol=1e-5,
                                   rtol=1e-4)
        assert (mask_iou(a.masks, b.masks[idx]) > 0.99).all()
        area = a.masks.flatten(1).float().mean(1)
        assert ((area > 0.01) & (area < 0.9)).all()


def test_predict_without_detections(model):
    model.eval()
    model.bbox_head.test_cfg.score_thr = 2.  # no sigmoid score passes
    try:
        _, out = _predict(model, [hand_sample((120, 150), (60, 75), seed=3)])
    finally:
        model.bbox_head.test_cfg.score_thr = 0.
    pred = out[0].pred_instances
    assert len(pred) == 0
    assert pred.bboxes.shape == (0, 4)
    assert pred.masks.shape == (0, 60, 75) and pred.masks.dtype == torch.bool


def test_channels_last_same_losses_gradients_and_predictions():
    """channels_last only changes the memory layout: same losses, gradients
    and predictions as the default layout, from the same weights."""
    torch.manual_seed(2)
    ref = MODELS.build(tiny_model_cfg())
    ref.init_weights()
    cl = MODELS.build({**tiny_model_cfg(), 'channels_last': True})
    cl.load_state_dict(ref.state_dict())
    conv = cl.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    losses = []
    for m in (ref, cl):
        m.train()
        torch.manual_seed(3)  # max_masks_to_train's random choice
        data = m.data_preprocessor(packed_batch(True), True)
        out = m(**data, mode='loss')
        sum(out.values()).backward()
        losses.append(out)
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-4,
                                   atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), cl.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5,
                                       msg=name)
    preds = []
    for m in (ref, cl):
        m.eval()
        data = m.data_preprocessor(packed_batch(False), False)
        with torch.no_grad():
            preds.append(m(**data, mode='predict'))
    for a, b in zip(*preds):
        a, b = a.pred_instances, b.pred_instances
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.bboxes, a.bboxes, rtol=1e-4, atol=1e-3)
        assert (a.masks != b.masks).float().mean() < 1e-3


@pytest.mark.slow  # torch.compile, ~4 s
def test_compile_feat_keeps_outputs_keys_and_deepcopy():
    """compile_feat runs backbone + neck through torch.compile (the 'eager'
    backend here: the wiring, not inductor): the same features, the same
    state-dict keys, and the model still deep-copies (EMA)."""
    torch.manual_seed(4)
    ref = MODELS.build(tiny_model_cfg())
    ref.init_weights()
    comp = MODELS.build({**tiny_model_cfg(),
                         'compile_feat': dict(backend='eager')})
    comp.load_state_dict(ref.state_dict())
    assert list(comp.state_dict()) == list(ref.state_dict())
    ref.eval()
    comp.eval()
    data = ref.data_preprocessor(packed_batch(False), False)
    with torch.no_grad():
        want = ref.extract_feat(data['inputs'])
        got = comp.extract_feat(data['inputs'])
    from embedmask_mmdet.models.detectors.embedmask import _COMPILED
    assert comp in _COMPILED and ref not in _COMPILED
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a)
    copy.deepcopy(comp)
    with pytest.raises(ValueError, match='compile_feat'):
        MODELS.build({**tiny_model_cfg(), 'compile_feat': 'yes'})


def test_nonfinite_check_is_taken_by_every_rank(monkeypatch):
    """A NaN on another rank only: this rank raises too (instead of
    entering DDP's all-reduce alone), and says where the NaN was."""
    from embedmask_mmdet.models.detectors import embedmask as mod
    calls = []

    def fake_all_reduce(flag, op):
        calls.append(op)
        flag.zero_()  # another rank's loss was not finite

    monkeypatch.setattr(mod, 'get_world_size', lambda: 2)
    monkeypatch.setattr(mod, 'get_rank', lambda: 1)
    monkeypatch.setattr(mod, 'all_reduce', fake_all_reduce)
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg())
    model.init_weights()
    model.train()
    data = model.data_preprocessor(packed_batch(True), True)
    with pytest.raises(FloatingPointError, match='on another rank'):
        model(**data, mode='loss')
    assert calls == ['min']
    monkeypatch.setattr(mod, 'all_reduce', lambda flag, op: None)
    losses = model(**data, mode='loss')  # every rank finite: goes on
    assert all(torch.isfinite(v) for v in losses.values())
