"""EmbedMaskSlicedInferencer (embedmask_mmdet/apis/sliced.py).

- One tile (the tile covers the padded input) is plain ``model.predict``
  bit for bit: boxes, scores, labels, masks (narrow random-weight models of
  the CPU configs, several mask placements, both pipelines' resize modes).
- An object straddling the tiles' borders comes out as one detection with
  one mask covering every side. The model there is a real EmbedMask whose
  forward is replaced by local rules we control (``oracle``): the box head
  reads the object's box and centre from the input's channels, the pixel
  branch outputs zeros, and both write garbage within 16 px of their
  input's border, as zero padding corrupts a CNN's border. Sliced over 2 x 2
  tiles it equals the whole image in one piece (whose garbage lies on the
  image border only); with no overlap the tile borders' garbage leaks (the
  control that shows the overlap rule is what keeps it out).
- Stitched embeddings where tiles see the same context: with the oracle
  (context = one pixel, plus the border) the stitched map equals the
  whole-image map at every cell, overlaps included. A real CNN's receptive
  field (ResNet-18: hundreds of pixels) is wider than any overlap, so two
  tiles never see the same context there; for real models the test is that
  every stitched cell is its owning tile's conv output plus the cell's
  image coordinates, computed independently (the tile run with the
  coordinate scale at 0, coordinates in float64).
"""
import math
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from embedmask_mmdet.apis import EmbedMaskSlicedInferencer, tile_grid

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = {
    'r18': 'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py',
    'lite': 'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py',
}
NARROW = dict(
    neck=dict(out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=1,
                   proposal_channels=16),
    mask_head=dict(in_channels=64, semantic_channels=16,
                   pixel_branch=dict(feat_channels=16, num_stacked_convs=1)),
    test_cfg=dict(score_thr=0., nms_pre=200, max_per_img=30))
# (config, model overrides): the mask placements of the predict path
DESIGNS = {
    'embedding': ('r18', {}),
    'prob-stride4': ('lite', dict(backbone=dict(init_cfg=None))),
    'adelaidet': ('r18', dict(mask_head=dict(alignment='adelaidet'),
                              test_cfg=dict(mask_resample='prob'))),
    'v3': ('r18', dict(test_cfg=dict(
        candidate_rule='fcos_repo', thresh_with_ctr=False,
        mask_resample='log_prob', mask_thr=0.53, score_type='cls_ctr'))),
}


def build_model(design='embedding', extra=None):
    config, overrides = DESIGNS[design]
    cfg = Config.fromfile(osp.join(ROOT, CONFIGS[config]))
    for patch in (NARROW, overrides, extra or {}):
        cfg.merge_from_dict(dict(model=patch))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # margins giving masks of ~1-5 % of the image
        model.bbox_head.embedding_head.margin_conv.bias.fill_(3.)
    model.cfg = cfg
    return model.eval()


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Shapes images: one resized by the pipeline, one at its scale."""
    from embedmask_mmdet.datasets import generate_synthetic_coco
    base = tmp_path_factory.mktemp('sliced')
    paths = []
    for size in ((260, 200), (320, 320)):
        root = str(base / f'{size[0]}x{size[1]}') + '/'
        generate_synthetic_coco(root, num_train=1, num_val=1, seed=7,
                                size=size)
        val = osp.join(root, 'val')
        paths += [osp.join(val, f) for f in sorted(os.listdir(val))]
    return paths


def assert_same(ref: DetDataSample, got: DetDataSample, min_dets=5):
    ref, got = ref.pred_instances, got.pred_instances
    assert len(ref) >= min_dets
    for key in ('labels', 'scores', 'bboxes', 'masks'):
        assert torch.equal(ref[key], got[key]), key


# ------------------------------------------------------------------ tiles


@pytest.mark.parametrize('size,tile,overlap', [
    ((384, 384), (256, 256), 0.5), ((2048, 1344), (320, 320), 0.25),
    ((256, 640), (256, 192), 0.), ((96, 96), (320, 320), 0.25)])
def test_tile_grid_partitions_with_half_overlap_margins(size, tile, overlap):
    tiles = tile_grid(size, tile, overlap)
    th, tw = min(tile[0], size[0]), min(tile[1], size[1])
    owner = np.zeros(size, np.int64)
    for t in tiles:
        assert t.y0 % 32 == 0 and t.x0 % 32 == 0 and (t.h, t.w) == (th, tw)
        assert t.y0 + t.h <= size[0] and t.x0 + t.w <= size[1]
        y_lo, y_hi = max(t.y_lo, 0), min(t.y_hi, size[0])
        x_lo, x_hi = max(t.x_lo, 0), min(t.x_hi, size[1])
        owner[int(y_lo):int(y_hi), int(x_lo):int(x_hi)] += 1
        # owned pixels are >= overlap / 2 from the tile's border, except
        # on the image's border (where the whole image is padded too)
        margin = overlap * min(th, tw) / 2 - 1e-6
        for lo, hi, start, length, full in (
                (t.y_lo, t.y_hi, t.y0, t.h, size[0]),
                (t.x_lo, t.x_hi, t.x0, t.w, size[1])):
            assert lo == -math.inf or lo - start >= margin
            assert hi == math.inf or start + length - hi >= margin
            assert (lo == -math.inf) == (start == 0)
            assert (hi == math.inf) == (start + length == full)
    assert (owner == 1).all()  # every pixel owned by exactly one tile


def test_errors_name_the_setting():
    model = build_model()
    with pytest.raises(ValueError, match='overlap'):
        EmbedMaskSlicedInferencer(model, overlap=1.)
    with pytest.raises(ValueError, match='slice_size'):
        EmbedMaskSlicedInferencer(model, slice_size=(0, 64))
    mmdet_rule = build_model(extra=dict(test_cfg=dict(
        thresh_with_ctr=False, score_type='cls_ctr')))
    with pytest.raises(ValueError, match="candidate_rule='adelaidet'"):
        EmbedMaskSlicedInferencer(mmdet_rule)


# -------------------------------------------------------- one tile: exact


# the default CPU design in the fast tier, the other placements in the slow
# one (make test runs both)
@pytest.mark.parametrize('design', [
    d if d == 'embedding' else pytest.param(d, marks=pytest.mark.slow)
    for d in DESIGNS])
def test_one_tile_is_plain_predict_bit_for_bit(images, design):
    model = build_model(design)
    sliced = EmbedMaskSlicedInferencer(model, slice_size=(4096, 4096),
                                       scale='config')
    counts = []
    tiles = sliced.tiles
    sliced.tiles = lambda *a: counts.append(len(tiles(*a))) or tiles(*a)
    for path in images:
        ref = inference_detector(model, path)
        assert_same(ref, sliced(path))
        # an array input (LoadImageFromNDArray) as well
        assert_same(ref, sliced(cv2.imread(path)))
    assert counts == [1] * 2 * len(images)


def test_one_tile_at_the_tile_scale_is_plain_predict(images):
    # scale='tile' at the config's own scale: the 320 x 320 image is one
    # 320-px slice, seen at the scale the config gives it
    model = build_model()
    sliced = EmbedMaskSlicedInferencer(model, slice_size=(320, 320))
    assert sliced.tile_scale == (1., 1.)
    path = [p for p in images if cv2.imread(p).shape[:2] == (320, 320)][0]
    assert_same(inference_detector(model, path), sliced(path))


# ---------------------------------------- an object across tile borders

SIZE, CENTRE, RADIUS, BORDER = 256, 128, 24, 16


def oracle(model):
    """``model`` with its forward replaced by local rules (see the module
    docstring). Input channels: 0 the object's indicator, 1 and 2 the
    offset (x_c - x, y_c - y) of the object's centre from the pixel."""
    bbox_head, mask_head = model.bbox_head, model.mask_head
    scale = float(mask_head.coord_scale) / mask_head.coord_norm
    dim = bbox_head.embed_dim

    def near_border(size, stride):
        centres = (torch.arange(size) + 0.5) * stride
        return (centres < BORDER) | (centres > size * stride - BORDER)

    def box_forward(feats):
        inputs = feats[0]
        outs = ([], [], [], [])
        for level, stride in enumerate(bbox_head.strides):
            x = inputs[:, :, stride // 2::stride, stride // 2::stride]
            b, _, h, w = x.shape
            inside, dx, dy = x[:, 0:1], x[:, 1:2], x[:, 2:3]
            border = near_border(h, stride)[:, None] | \
                near_border(w, stride)[None, :]
            cls = x.new_full((b, bbox_head.num_classes, h, w), -20.)
            box = torch.cat([RADIUS - dx, RADIUS - dy, RADIUS + dx,
                             RADIUS + dy], dim=1)
            if level == 0:  # the object: class 0 at P3
                cls[:, 0:1] = torch.where(inside > 0, 5., -20.)
                # garbage near the input's border: class 1, 16-px boxes
                cls[:, 1] = torch.where(border, 3., -20.)
                box = torch.where(border, 8., box)
            embed = torch.zeros(b, dim, h, w)
            embed[:, :2] = torch.cat([dx, dy], dim=1) * scale
            margin = torch.ones(b, dim, h, w)
            margin[:, :2] = math.log(2.) / (RADIUS * scale)**2
            outs[0].append(cls)
            outs[1].append(box)
            outs[2].append(torch.zeros(b, 1, h, w))
            outs[3].append(torch.cat([embed, margin], dim=1))
        return outs

    def pixel_forward(feats):
        inputs, stride = feats[0], mask_head.prob_stride
        b, _, height, width = inputs.shape
        h, w = height // stride, width // stride
        border = near_border(h, stride)[:, None] | \
            near_border(w, stride)[None, :]
        # garbage: 150 px off in the spatial channels
        return torch.where(border, 3., 0.).expand(b, dim, h, w).clone()

    model.extract_feat = lambda inputs: (inputs, )
    bbox_head.forward = box_forward
    mask_head.pixel_branch.forward = pixel_forward
    # every garbage detection kept (their scores tie: a cap would keep an
    # arbitrary subset); the -20 logits are no candidates
    model.bbox_head.test_cfg = dict(model.bbox_head.test_cfg, nms_pre=-1,
                                    max_per_img=1000, score_thr=0.05)
    return model


def oracle_input():
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE),
                            indexing='ij')
    inside = ((xs + 0.5 - CENTRE)**2 + (ys + 0.5 - CENTRE)**2 <
              RADIUS**2).float()
    inputs = torch.stack([inside, CENTRE - xs.float(), CENTRE - ys.float()])
    sample = DetDataSample(metainfo=dict(
        img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), scale_factor=(1., 1.),
        pad_shape=(SIZE, SIZE), batch_input_shape=(SIZE, SIZE)))
    return inputs, sample, inside.bool()


def by_position(pred):
    """The detections sorted by label then box (ties in score make NMS's
    order arbitrary among the garbage)."""
    keys = pred.labels.double() * 1e8 + pred.bboxes[:, 0] * 1e4 + \
        pred.bboxes[:, 1]
    return pred[keys.argsort()]


def sliced_oracle(tile, overlap, with_plain=True):
    model = oracle(build_model())
    sliced = EmbedMaskSlicedInferencer(model, slice_size=(tile, tile),
                                       overlap=overlap, scale='config')
    inputs, sample, inside = oracle_input()
    plain = None
    if with_plain:
        with torch.no_grad():
            plain = model.predict(inputs[None], [sample.clone()])[0]
    got = sliced.predict(inputs[None], [sample.clone()])[0]
    outputs = sliced.tile_outputs(inputs, sample)
    whole = EmbedMaskSlicedInferencer(model, slice_size=(SIZE, SIZE),
                                      scale='config')
    return dict(plain=plain, got=got, inside=inside,
                stitched=outputs['pixel_embed'], tiles=outputs['tiles'],
                whole=whole.tile_outputs(inputs, sample)['pixel_embed'])


@pytest.fixture(scope='module')
def overlapped():
    return sliced_oracle(192, overlap=0.5)


def test_object_across_tile_borders_is_one_detection_one_mask(overlapped):
    run = overlapped
    tiles = run['tiles']
    # 2 x 2 tiles of 192 at 0 and 64; the object's centre is the corner
    # where the four tiles' owned regions meet
    assert [(t.y0, t.x0) for t in tiles] == [(0, 0), (0, 64), (64, 0),
                                            (64, 64)]
    assert {t.x_hi for t in tiles} == {CENTRE, math.inf}
    plain, got = by_position(run['plain'].pred_instances), \
        by_position(run['got'].pred_instances)
    objects = got[got.labels == 0]
    assert len(objects) == 1
    assert objects.bboxes.tolist() == [[CENTRE - RADIUS, CENTRE - RADIUS,
                                        CENTRE + RADIUS, CENTRE + RADIUS]]
    mask, inside = objects.masks[0], run['inside']
    for rows in (slice(0, CENTRE), slice(CENTRE, SIZE)):
        for cols in (slice(0, CENTRE), slice(CENTRE, SIZE)):
            # each quarter of the object comes from another tile
            assert mask[rows, cols].sum() > 0.9 * inside[rows, cols].sum()
    assert (mask & inside).sum() / (mask | inside).sum() > 0.97
    # the tiles' border garbage stays out: everything equals the whole
    # image in one piece, whose garbage lies along the image's border
    assert len(got) == len(plain) > 50
    for key in ('labels', 'scores', 'bboxes', 'masks'):
        assert torch.equal(plain[key], got[key]), key


def test_stitched_embeddings_equal_the_whole_image_where_context_matches(
        overlapped):
    stitched, whole = overlapped['stitched'], overlapped['whole']
    assert stitched.shape == whole.shape
    # offsets added in closed form: float rounding of (x + dx) * s only
    torch.testing.assert_close(stitched, whole, rtol=0, atol=1e-5)
    # the cells of the overlaps (both tiles see them), not just the rest
    stride = SIZE // stitched.size(-1)
    overlap = slice(64 // stride, 192 // stride)
    torch.testing.assert_close(stitched[:, overlap, overlap],
                               whole[:, overlap, overlap], rtol=0,
                               atol=1e-5)


def test_without_overlap_the_tile_borders_leak():
    # the control: cut at the tile edges, the border garbage is owned
    run = sliced_oracle(128, overlap=0., with_plain=False)
    assert [t.x0 for t in run['tiles']][:2] == [0, 128]
    assert {t.x_hi for t in run['tiles']} == {CENTRE, math.inf}
    got = run['got'].pred_instances
    garbage = got[got.labels == 1]
    centres = (garbage.bboxes[:, :2] + garbage.bboxes[:, 2:]) / 2
    interior = ((centres > BORDER) & (centres < SIZE - BORDER)).all(dim=1)
    assert interior.sum() > 0
    assert (run['stitched'] - run['whole']).abs().max() > 1.
    objects = got[got.labels == 0]
    assert len(objects) > 1  # the object split into several detections
    inside = run['inside']
    for mask in objects.masks:  # and a cut through each mask
        assert (mask & inside).sum() < 0.9 * inside.sum()


# ----------------------------- real models: tile conv + image coordinates


@pytest.mark.parametrize('design', [
    'embedding', pytest.param('prob-stride4', marks=pytest.mark.slow)])
def test_stitched_cells_are_the_owning_tiles_conv_plus_coordinates(
        images, design):
    model = build_model(design)
    mask_head = model.mask_head
    sliced = EmbedMaskSlicedInferencer(model, slice_size=(128, 128),
                                       overlap=0.25, batch_size=3,
                                       scale='config')
    data = sliced.pipeline(False)(dict(img_path=images[0], img_id=0))
    data = model.data_preprocessor(pseudo_collate([data]), False)
    inputs, sample = data['inputs'][0], data['data_samples'][0]
    outputs = sliced.tile_outputs(inputs, sample)
    stitched, tiles = outputs['pixel_embed'], outputs['tiles']
    assert len(tiles) > 2
    stride = mask_head.prob_stride
    scale = float(mask_head.coord_scale) / mask_head.coord_norm
    covered = torch.zeros(stitched.shape[-2:], dtype=torch.int64)
    for tile in tiles:
        crop = inputs[None, :, tile.y0:tile.y0 + tile.h,
                      tile.x0:tile.x0 + tile.w]
        saved = mask_head.coord_scale.clone()
        with torch.no_grad():
            mask_head.coord_scale.fill_(0.)  # the conv part alone
            conv = mask_head.pixel_embedding(model.extract_feat(crop))[0]
            mask_head.coord_scale.copy_(saved)
        rows = torch.arange(tile.y0 // stride, (tile.y0 + tile.h) // stride)
        cols = torch.arange(tile.x0 // stride, (tile.x0 + tile.w) // stride)
        ys, xs = (rows.double() + 0.5) * stride, (cols.double() + 0.5) * \
            stride
        own_r = (ys >= tile.y_lo) & (ys < tile.y_hi)
        own_c = (xs >= tile.x_lo) & (xs < tile.x_hi)
        ref = conv.double()
        ref[0] += xs[None, :] * scale
        ref[1] += ys[:, None] * scale
        got = stitched[:, rows[own_r]][:, :, cols[own_c]].double()
        torch.testing.assert_close(got, ref[:, own_r][:, :, own_c],
                                   rtol=0, atol=2e-5)
        covered[rows[own_r][:, None], cols[own_c][None, :]] += 1
    assert (covered == 1).all()


# ------------------------------------------------------ tools/demo.py --slice


@pytest.mark.slow  # the CLI end to end (two model loads, drawing)
def test_demo_slice_writes_the_sliced_detections(images, tmp_path, capsys):
    import json

    import demo  # tools/ is on sys.path (conftest.py)
    model = build_model()
    config, ckpt = str(tmp_path / 'narrow.py'), str(tmp_path / 'narrow.pth')
    model.cfg.dump(config)
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(
                        classes=model.cfg.metainfo['classes']))), ckpt)
    path, out = images[0], str(tmp_path / 'out')
    demo.main([path, config, ckpt, '--out-dir', out, '--device', 'cpu',
               '--json', 'rle', '--score-thr', '0', '--slice', '160', '160',
               '--overlap', '0.25'])
    stem = osp.splitext(osp.basename(path))[0]
    with open(osp.join(out, stem + '.json')) as f:
        written = json.load(f)['instances']
    sliced = EmbedMaskSlicedInferencer(config, ckpt, slice_size=(160, 160),
                                       overlap=0.25)
    assert sliced.tile_scale == (2., 2.)  # 160-px slices seen at 320 px
    pred = sliced(path).pred_instances
    pred = pred[pred.scores > 0]
    assert len(written) == len(pred) > 0
    assert sorted(round(d['score'], 4) for d in written) == \
        sorted(round(float(s), 4) for s in pred.scores)
    assert osp.isfile(osp.join(out, stem + '.png'))
