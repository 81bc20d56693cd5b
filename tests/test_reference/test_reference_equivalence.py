"""The reference-exact model against the authors' own code.

``../shared/reference/`` holds what AdelaiDet's EmbedMask (yinghdb/AdelaiDet
94a9b7c on detectron2, CPU) computed with seeded random weights on a real
photo. Its state dict is converted with our converter and loaded into the
reference-exact R-50 config; every map, the detections and (variant B) the
masks must match. A user's clone has no ../shared: the test skips there and
says why; under CI it must run.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT.parent / 'shared' / 'reference'
CONFIG = ROOT / 'configs/embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'
sys.path.insert(0, str(ROOT / 'tools' / 'model_converters'))
import adelaidet2mmdet as converter  # noqa: E402

if not REF.is_dir():
    if os.environ.get('CI'):
        raise RuntimeError(f'{REF} is missing under CI: the reference '
                           'equivalence test must run there')
    pytest.skip(f"{REF} (the authors' reference outputs) is not next to this "
                'clone; the equivalence test runs where it is (CI)',
                allow_module_level=True)

REL_TOL = 1e-3


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    ref = ref.float()
    return float((ours.float() - ref).abs().max() / ref.abs().max())


def load(name: str) -> dict:
    return torch.load(REF / name, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def ref_a():
    return load('adet_embedmask_r50_seed0_outputs.pt')


@pytest.fixture(scope='module')
def model():
    import embedmask_mmdet  # noqa: F401
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(str(CONFIG))
    model = MODELS.build(cfg.model)
    src = converter.load_adelaidet(str(REF / 'adet_embedmask_r50_seed0.pth'))
    state = converter.convert(src, model.state_dict(), log=lambda *_: None)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope='module')
def forward_a(model, ref_a):
    """Our maps and detections for variant A's input tensor."""
    x = ref_a['input_tensor']
    captured = {}
    hook = model.mask_head.pixel_branch.conv_branch.register_forward_hook(
        lambda m, i, o: captured.update(mask_feats=o))
    with torch.no_grad():
        feats = model.extract_feat(x)
        head_outs = model.bbox_head(feats)
        pixel_embed, _ = model.mask_head(feats)
        dets = model.predict(x, [data_sample(ref_a)], rescale=True)[0]
    hook.remove()
    return dict(feats=feats, head_outs=head_outs, pixel_embed=pixel_embed,
                mask_feats=captured['mask_feats'],
                dets=dets.pred_instances)


def data_sample(ref: dict) -> DetDataSample:
    sample = DetDataSample()
    (oh, ow), (h, w) = ref['original_size'], ref['resized_size']
    sample.set_metainfo(dict(
        img_shape=(h, w), ori_shape=(oh, ow), scale_factor=(w / ow, h / oh),
        batch_input_shape=tuple(ref['padded_size']),
        pad_shape=tuple(ref['padded_size'])))
    return sample


def test_converter_maps_every_key():
    """Zero unmapped, missing or mis-shaped keys; a foreign key is refused."""
    import embedmask_mmdet  # noqa: F401
    src = converter.load_adelaidet(str(REF / 'adet_embedmask_r50_seed0.pth'))
    assert converter.resnet_depth(src) == 50
    model_state = converter.build_model_state(str(CONFIG))
    dst, pairs, unmapped, ignored = converter.map_keys(src)
    assert unmapped == []
    assert sorted(ignored) == ['mask_pred._iter', 'mask_pred.sizes_of_interest']
    # every source tensor is used exactly once
    used = [k for sources, _ in pairs for k in sources]
    assert len(used) == len(set(used)) == len(src) - len(ignored)
    out = converter.convert(src, model_state, log=lambda *_: None)
    assert list(out) == list(model_state)
    bad = dict(src)
    bad['proposal_generator.fcos_head.extra.weight'] = torch.zeros(1)
    with pytest.raises(converter.ConversionError, match='extra.weight'):
        converter.convert(bad, model_state, log=lambda *_: None)
    bad = dict(src)
    bad['proposal_generator.fcos_head.cls_logits.weight'] = torch.zeros(
        81, 256, 3, 3)
    with pytest.raises(converter.ConversionError, match='shape mismatch'):
        converter.convert(bad, model_state, log=lambda *_: None)


def test_preprocessing_matches(model, ref_a, tmp_path):
    """The config's test pipeline and data preprocessor turn the photo into
    the reference's input tensor (BGR, PIL resize, mean, std 1, zero pad)."""
    import mmcv
    from mmcv.transforms import Compose
    cfg = Config.fromfile(str(CONFIG))
    path = str(tmp_path / 'coffee.png')
    mmcv.imwrite(ref_a['image_original_rgb'].numpy()[..., ::-1], path)
    pipeline = Compose([t for t in cfg.test_pipeline
                        if t['type'] != 'LoadAnnotations'])
    data = pipeline(dict(img_path=path, img_id=0))
    batch = model.data_preprocessor(
        dict(inputs=[data['inputs']], data_samples=[data['data_samples']]))
    assert tuple(batch['inputs'].shape) == (1, 3, 800, 1216)
    torch.testing.assert_close(batch['inputs'], ref_a['input_tensor'],
                               rtol=0, atol=1e-4)


@pytest.mark.slow  # the R-50 forward of the reference input, ~25 s
def test_feature_maps_match(forward_a, ref_a):
    """FPN, box-head, proposal embedding/margin, mask-branch and pixel
    embedding maps within 1e-3 relative of the reference."""
    from embedmask_mmdet.models.utils import location_map
    inter = load('adet_embedmask_r50_seed0_intermediates.pt')
    errors = {}
    for level, (ours, name) in enumerate(zip(forward_a['feats'],
                                             ('p3', 'p4', 'p5', 'p6', 'p7'))):
        errors[f'fpn.{name}'] = rel_err(ours, inter['fpn'][name])
    errors['mask_feats'] = rel_err(forward_a['mask_feats'], inter['mask_feats'])
    cls_scores, bbox_preds, ctrs, params = forward_a['head_outs']
    strides = (8, 16, 32, 64, 128)
    dim = 16
    for lvl, stride in enumerate(strides):
        errors[f'cls.{lvl}'] = rel_err(cls_scores[lvl], ref_a['cls_logits'][lvl])
        # test-mode regressions are in pixels, the reference's in strides
        errors[f'bbox.{lvl}'] = rel_err(bbox_preds[lvl] / stride,
                                        ref_a['bbox_reg'][lvl])
        errors[f'ctr.{lvl}'] = rel_err(ctrs[lvl], ref_a['centerness'][lvl])
        embed = params[lvl][:, :dim].clone()
        h, w = embed.shape[-2:]
        embed[:, :2] += location_map(h, w, stride)[None] / 100.
        errors[f'proposal_embed.{lvl}'] = rel_err(embed,
                                                  ref_a['proposal_embed'][lvl])
        errors[f'proposal_margin.{lvl}'] = rel_err(
            params[lvl][:, dim:], ref_a['proposal_margin'][lvl])
    errors['pixel_embed'] = rel_err(forward_a['pixel_embed'],
                                    ref_a['pixel_embed'])
    worst = max(errors, key=errors.get)
    fp32 = {k: v for k, v in errors.items()
            if not k.startswith(('fpn', 'mask_feats'))}
    print(f'fp16-stored maps (FPN, mask feats): max rel. error '
          f'{max(v for k, v in errors.items() if k not in fp32):.1e}; '
          'float32 maps: ' + ', '.join(
              f'{k} {v:.1e}' for k, v in sorted(fp32.items(),
                                                key=lambda kv: -kv[1])[:4]))
    assert errors[worst] < REL_TOL, f'{worst}: {errors[worst]:.2e}'


def match(dets, final) -> list:
    """Pairs (ours, reference) of detections matched by (level, location,
    class): scores nearly tie, so positions in the lists can swap."""
    levels = (torch.log2(dets.strides.float()) - 3).round().long()
    ours = {(int(l), int(x), int(y), int(c)): i for i, (l, (x, y), c) in
            enumerate(zip(levels, dets.points.long().tolist(), dets.labels))}
    ref = {(int(l), int(x), int(y), int(c)): i for i, (l, (x, y), c) in
           enumerate(zip(final['fpn_levels'],
                         final['locations_resized'].long().tolist(),
                         final['classes']))}
    assert set(ours) == set(ref), (
        f'{len(set(ours) - set(ref))} detections only ours, '
        f'{len(set(ref) - set(ours))} only the reference\'s')
    return [(ours[k], ref[k]) for k in sorted(ref)]


@pytest.mark.slow  # the R-50 forward of the reference input (forward_a), ~27 s
def test_detections_match(forward_a, ref_a):
    """The same 100 detections; boxes within 0.01 px, scores within 1e-4."""
    dets, final = forward_a['dets'], ref_a['final']
    assert len(dets) == final['num_detections'] == 100
    pairs = match(dets, final)
    ours, ref = map(list, zip(*pairs))
    box_err = (dets.bboxes[ours] - final['boxes'][ref]).abs().max()
    score_err = (dets.scores[ours] - final['scores'][ref]).abs().max()
    print(f'{len(pairs)} detections matched; box error {box_err:.2e} px, '
          f'score error {score_err:.2e}')
    assert box_err < 0.01, f'box error {box_err:.4f} px'
    assert score_err < 1e-4, f'score error {score_err:.2e}'
    # variant A: every probability underflows to 0, so no mask has a pixel
    assert not dets.masks.any()


@pytest.mark.slow  # ~23 s
def test_variant_b_masks_match(model, ref_a):
    """Variant B (pixel-embedding convs x 2^-10): non-empty masks; each
    mask IoU >= 0.99 and the stride-4 probabilities within 1e-3."""
    ref_b = load('adet_embedmask_r50_seed0_variantB_pixscale_outputs.pt')
    conv = model.mask_head.pixel_branch.conv_pred
    saved = conv.weight.detach().clone()
    try:
        with torch.no_grad():
            conv.weight.mul_(2.**-10)
            x = ref_a['input_tensor']
            dets = model.predict(x, [data_sample(ref_a)],
                                 rescale=True)[0].pred_instances
            pixel_embed, _ = model.mask_head(model.extract_feat(x))
            prob4 = model.mask_head.mask_prob_at_out_stride(pixel_embed[0],
                                                            dets)
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved)
    final = ref_b['final']
    pairs = match(dets, final)
    ours, ref = map(list, zip(*pairs))
    ref_masks = final['masks'][ref]
    our_masks = dets.masks[ours]
    inter = (ref_masks & our_masks).flatten(1).sum(1).float()
    union = (ref_masks | our_masks).flatten(1).sum(1).float()
    assert (union > 0).all()
    iou = inter / union
    print(f'{len(pairs)} masks matched; IoU min {iou.min():.5f}, mean '
          f'{iou.mean():.5f}; stride-4 p error '
          f'{rel_err(prob4[ours], final["mask_probs_stride4"][ref]):.1e}')
    assert iou.min() >= 0.99, f'worst mask IoU {iou.min():.4f}'
    # the reference's stride-4 map is float16 (1 ulp ~ 5e-4)
    assert rel_err(prob4[ours], final['mask_probs_stride4'][ref]) < REL_TOL
    np.testing.assert_array_equal(
        our_masks.flatten(1).sum(1).numpy() > 0, True)


@pytest.mark.slow  # the converter CLI end to end
def test_converter_cli_writes_a_loadable_checkpoint(model, tmp_path, capsys):
    """The command line writes a checkpoint mmengine loads strictly (as
    tools/test.py does); a checkpoint of another model is refused."""
    from mmengine.runner import load_checkpoint
    dst = str(tmp_path / 'converted.pth')
    assert converter.main([str(REF / 'adet_embedmask_r50_seed0.pth'), dst]) == 0
    out = capsys.readouterr().out
    assert 'mapped 397 model tensors from 403 checkpoint tensors' in out
    ckpt = load_checkpoint(model, dst, map_location='cpu', strict=True)
    assert set(ckpt['state_dict']) == set(model.state_dict())
    other = tmp_path / 'other.pth'
    torch.save({'model': {'roi_heads.box_predictor.cls_score.weight':
                          torch.zeros(81, 1024)}}, other)
    assert converter.main([str(other), str(tmp_path / 'x.pth'),
                           '--config', str(CONFIG)]) == 1
    err = capsys.readouterr().err
    assert 'no conversion rule' in err and 'roi_heads.box_predictor' in err


def test_converter_maps_an_r101_checkpoint():
    """EmbedMask_R_101_3x's layout (23 res4 blocks): the R-50 reference
    state dict with res4.6-22 added converts onto the R-101 config with
    nothing unmapped or missing, the config chosen by depth."""
    import embedmask_mmdet  # noqa: F401
    src = converter.load_adelaidet(str(REF / 'adet_embedmask_r50_seed0.pth'))
    prefix = 'backbone.bottom_up.res4.5.'
    for block in range(6, 23):
        for key in [k for k in src if k.startswith(prefix)]:
            src[key.replace('res4.5.', f'res4.{block}.')] = src[key].clone()
    assert converter.resnet_depth(src) == 101
    config = converter.CONFIGS[101]
    model_state = converter.build_model_state(config)
    out = converter.convert(src, model_state, log=lambda *_: None)
    assert list(out) == list(model_state)
    torch.testing.assert_close(out['backbone.layer3.22.conv2.weight'],
                               src['backbone.bottom_up.res4.22.conv2.weight'])
