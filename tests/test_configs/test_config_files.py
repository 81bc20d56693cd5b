"""Every config under configs/ (except configs/_base_/**) loads and builds an
EmbedMask model; COCO recipes carry reference numbers and the right schedule;
each ablation changes exactly the keys it claims to change."""
import copy
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / 'configs'
MODEL_BASE = CONFIG_DIR / '_base_' / 'models' / 'embedmask_r50_fpn.py'
PARENT_1X = CONFIG_DIR / 'embedmask' / 'embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'

CONFIGS = sorted(
    p for p in CONFIG_DIR.rglob('*.py')
    if '_base_' not in p.relative_to(CONFIG_DIR).parts)
COCO_CONFIGS = [p for p in CONFIGS if p.name.endswith('_coco.py')]
ABLATIONS = [p for p in CONFIGS if p.parent.name == 'ablations']


def _rel(p: Path) -> str:
    return str(p.relative_to(CONFIG_DIR))


# ablation file -> {flattened key of the merged cfg: value in the child}.
# Exactly these keys may differ from the parent 1x config.
EXPECTED_ABLATION_DIFFS = {
    'embedmask_r50_embed-dim8.py': {
        'embed_dim': 8,
        'model.bbox_head.embed_dim': 8,
        'model.mask_head.embed_dim': 8},
    'embedmask_r50_embed-dim32.py': {
        'embed_dim': 32,
        'model.bbox_head.embed_dim': 32,
        'model.mask_head.embed_dim': 32},
    'embedmask_r50_scalar-margin.py': {
        'model.bbox_head.margin_type': 'scalar'},
    'embedmask_r50_fixed-margin.py': {
        'model.bbox_head.margin_type': 'fixed'},
    'embedmask_r50_no-coords.py': {
        'model.mask_head.with_coords': False},
    'embedmask_r50_dice-loss.py': {
        'model.mask_head.loss_mask.type': 'DiceLoss',
        'model.mask_head.loss_mask.use_sigmoid': True,
        'model.mask_head.loss_mask.activate': True,
        'model.mask_head.loss_mask.eps': 5e-6},
    'embedmask_r50_bce-loss.py': {
        'model.mask_head.loss_mask.type': 'CrossEntropyLoss',
        'model.mask_head.loss_mask.use_sigmoid': True},
    'embedmask_r50_best-iou-per-gt.py': {
        'model.mask_head.sampling': 'best_iou_per_gt'},
    'embedmask_r50_crop-test.py': {
        'model.test_cfg.crop_to_box': True},
    'embedmask_r50_mask-thr-0.53.py': {
        'model.test_cfg.mask_thr': 0.53},
    'embedmask_r50_p3-tower.py': {
        'model.mask_head.pixel_branch.type': 'p3_tower'},
    'embedmask_r50_no-semantic.py': {
        # the whole semantic loss dict is replaced by None
        'model.mask_head.loss_semantic': None},
}

# COCO recipe -> (max_iters, milestones); all share lr 0.01 (batch 16) and
# detectron2's warmup (linear from 1/1000 over 1000 iters), except v3's
# maskrcnn-benchmark warmup (constant 1/3 for 500 iters).
EXPECTED_SCHEDULES = {
    'embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py': (90000, [60000, 80000]),
    'embedmask_r50-caffe_fpn_8xb2-ms-2x_coco.py': (180000, [120000, 160000]),
    'embedmask_r101-caffe_fpn_8xb2-ms-3x_coco.py': (270000, [210000, 250000]),
    'embedmask_x101-32x4d_fpn_8xb2-ms-3x_coco.py': (270000, [210000, 250000]),
    'embedmask-v3_r50-caffe_fpn_8xb2-1x_coco.py': (90000, [60000, 80000]),
}

_MISSING = object()


def dict_diff(a, b, prefix=''):
    """{dotted key: (a_value, b_value)} where nested dicts a and b differ.

    Recurses while both sides are dicts; otherwise the whole value at that
    key is compared (so a dict replaced by None shows up as one key). A
    missing key reads as _MISSING."""
    out = {}
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
        key = f'{prefix}{k}'
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(dict_diff(va, vb, key + '.'))
        elif va != vb:
            out[key] = (va, vb)
    return out


def _drop_pretrained(cfg):
    """Set every Pretrained init_cfg in a (nested) model cfg to None."""
    if isinstance(cfg, dict):
        for k, v in list(cfg.items()):
            if k == 'init_cfg':
                items = v if isinstance(v, (list, tuple)) else [v]
                if any(isinstance(i, dict) and i.get('type') == 'Pretrained'
                       for i in items):
                    cfg[k] = None
            else:
                _drop_pretrained(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            _drop_pretrained(v)
    return cfg


@pytest.fixture(scope='module', autouse=True)
def _registry():
    from mmdet.utils import register_all_modules
    register_all_modules()
    import embedmask_mmdet  # noqa: F401


_cfg_cache = {}


def load(path: Path) -> Config:
    if path not in _cfg_cache:
        _cfg_cache[path] = Config.fromfile(str(path))
    return _cfg_cache[path]


def build_model(cfg: Config):
    from mmdet.registry import MODELS
    model_cfg = _drop_pretrained(copy.deepcopy(cfg.model))
    if 'backbone' in model_cfg:
        model_cfg['backbone']['init_cfg'] = None
    return MODELS.build(model_cfg)


def test_discovery():
    names = {_rel(p) for p in CONFIGS}
    assert 'embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py' in names
    assert {p.name for p in ABLATIONS} == set(EXPECTED_ABLATION_DIFFS), (
        'every ablation needs an EXPECTED_ABLATION_DIFFS entry (and vice '
        'versa)')


def _check_config_builds(path: Path):
    from embedmask_mmdet.models.detectors.embedmask import EmbedMask
    cfg = load(path)
    assert 'custom_imports' in cfg, f'{_rel(path)}: no custom_imports'
    assert 'embedmask_mmdet' in cfg.custom_imports.imports
    assert cfg.model.type == 'EmbedMask'
    model = build_model(cfg)
    assert type(model) is EmbedMask
    assert model.bbox_head.embed_dim == model.mask_head.embed_dim
    return cfg, model


def test_model_base_builds():
    cfg, _ = _check_config_builds(MODEL_BASE)
    assert cfg.custom_imports.imports == ['embedmask_mmdet']


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_config_builds(path):
    cfg, model = _check_config_builds(path)
    # --tta (ours and mmdet's tools/test.py) finds the mask-merging TTA
    from mmcv.transforms import Compose
    from mmdet.registry import MODELS
    assert cfg.tta_model.type == 'EmbedMaskTTAModel', _rel(path)
    tta = MODELS.build(dict(**cfg.tta_model, module=model))
    assert tta.module is model
    pipeline = Compose(cfg.tta_pipeline)
    (tta_step, ) = [t for t in pipeline.transforms
                    if type(t).__name__ == 'TestTimeAug']
    assert len(tta_step.subroutines) >= 2  # more than one view


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=_rel)
def test_coco_config_metadata(path):
    cfg = load(path)
    assert cfg.custom_imports.imports == ['embedmask_mmdet']
    entry = METAFILE[path.stem]
    assert entry['Metadata']['Iterations'] == cfg.train_cfg.max_iters
    if path.name in EXPECTED_SCHEDULES:
        max_iters, milestones = EXPECTED_SCHEDULES[path.name]
        assert cfg.train_cfg.max_iters == max_iters
        warmup, steps = cfg.param_scheduler
        if path.name.startswith('embedmask-v3'):
            assert (warmup.type, warmup.factor, warmup.end) == (
                'ConstantLR', 1. / 3, 500)
            assert cfg.optim_wrapper.paramwise_cfg.bias_lr_mult == 2.
            assert cfg.optim_wrapper.paramwise_cfg.bias_decay_mult == 0.
        else:
            assert (warmup.type, warmup.start_factor, warmup.end) == (
                'LinearLR', 0.001, 1000)
            # detectron2's WEIGHT_DECAY_NORM = 0
            assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.
        assert steps.type == 'MultiStepLR' and steps.end == max_iters
        assert list(steps.milestones) == milestones
        assert cfg.optim_wrapper.optimizer.lr == 0.01
        assert cfg.optim_wrapper.optimizer.momentum == 0.9
        assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)


def test_coco_recipe_details():
    r101 = load(CONFIG_DIR / 'embedmask' / 'embedmask_r101-caffe_fpn_8xb2-ms-3x_coco.py')
    assert r101.model.backbone.depth == 101
    assert r101.model.backbone.init_cfg.checkpoint == \
        'open-mmlab://detectron2/resnet101_caffe'
    assert published(r101.filename) == (44.2, 39.5)
    # the reference-exact backbone: detectron2's MSRA ResNet (caffe style,
    # frozen BN, BGR, std 1)
    r50 = load(PARENT_1X)
    assert published(r50.filename) == (39.9, 36.2)
    bb = r50.model.backbone
    assert (bb.style, bb.norm_cfg.requires_grad, bb.norm_eval) == (
        'caffe', False, True)
    assert bb.init_cfg.checkpoint == 'open-mmlab://detectron2/resnet50_caffe'
    pre = r50.model.data_preprocessor
    assert (pre.std, pre.bgr_to_rgb) == ([1.0, 1.0, 1.0], False)
    x101 = load(
        CONFIG_DIR / 'embedmask' / 'embedmask_x101-32x4d_fpn_8xb2-ms-3x_coco.py')
    bb = x101.model.backbone
    assert (bb.type, bb.depth, bb.groups, bb.base_width) == (
        'ResNeXt', 101, 32, 4)
    assert bb.init_cfg.checkpoint == 'open-mmlab://resnext101_32x4d'
    # multi-scale train / single-scale test in the AdelaiDet recipe
    ms = load(PARENT_1X)
    resize = ms.train_dataloader.dataset.pipeline[2]
    assert resize.type == 'RandomChoiceResize'
    assert [s[1] for s in resize.scales] == list(range(640, 801, 32))
    assert ms.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    # v3: single-scale 800/1333 training, FCOS-repo heads
    v3 = load(CONFIG_DIR / 'embedmask' / 'embedmask-v3_r50-caffe_fpn_8xb2-1x_coco.py')
    types = [t.type for t in v3.train_dataloader.dataset.pipeline]
    assert 'RandomChoiceResize' not in types
    resize = v3.train_dataloader.dataset.pipeline[types.index('Resize')]
    assert tuple(resize.scale) == (1333, 800)
    m = v3.model
    assert m.bbox_head.proposal_head == 'conv3' and m.bbox_head.sample_in_mask
    assert m.mask_head.pixel_branch == dict(type='p3_tower')
    assert m.mask_head.loss_mask_norm == 'images'
    assert m.bbox_head.center_sample_on == 'box'
    assert published(v3.filename) is None
    assert m.mask_head.sampling == 'best_iou_per_gt'
    assert m.mask_head.alignment == 'fcos_repo'
    assert m.mask_head.learnable_coord_scale
    assert m.mask_head.prob_eps == 1e-9
    assert m.mask_head.loss_mask == dict(type='LovaszHingeLoss',
                                         loss_weight=0.5)
    assert m.mask_head.loss_semantic is None
    assert m.test_cfg.score_type == 'cls_ctr'
    assert m.test_cfg.candidate_rule == 'fcos_repo'
    assert not m.test_cfg.thresh_with_ctr
    assert m.test_cfg.mask_thr == 0.53
    # log p in the box's cells +- 2, resampled as log p, no crop afterwards
    assert m.test_cfg.mask_resample == 'log_prob'
    assert m.test_cfg.window_padding == 2
    assert not m.test_cfg.crop_to_box
    # the knobs reach the built modules (model.test_cfg goes to both heads)
    import torch.nn as nn
    model = build_model(v3)
    assert model.mask_head.pixel_branch_type == 'p3_tower'
    assert isinstance(model.mask_head.coord_scale, nn.Parameter)
    assert model.mask_head.loss_semantic is None
    assert isinstance(model.bbox_head.embedding_head.embed_reduce, nn.Identity)
    assert model.mask_head.test_cfg.mask_thr == 0.53
    assert model.bbox_head.test_cfg.score_type == 'cls_ctr'


def test_dict_diff_helper():
    a = dict(x=1, m=dict(loss=dict(type='A', w=1.0), k=2))
    b = dict(x=1, m=dict(loss=None, k=3), new=0)
    assert dict_diff(a, b) == {
        'm.k': (2, 3),
        'm.loss': (dict(type='A', w=1.0), None),
        'new': (_MISSING, 0)}
    assert dict_diff(a, copy.deepcopy(a)) == {}


@pytest.mark.parametrize('path', ABLATIONS, ids=_rel)
def test_ablation_changes_one_thing(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith('# '), f'{path.name}: needs a one-line comment'
    child = load(path)
    assert child.filename and Path(child.filename).name == path.name
    diff = dict_diff(load(PARENT_1X).to_dict(), child.to_dict())
    expected = EXPECTED_ABLATION_DIFFS[path.name]
    # anything else differing from the parent is a second, unintended change
    assert set(diff) == set(expected), (
        f'{path.name}: differs from the parent in {sorted(diff)}, expected '
        f'{sorted(expected)}')
    for key, value in expected.items():
        assert diff[key][1] == value, (key, diff[key])


# --------------------------------------------------- metafile / model index
def _metafile():
    import yaml
    with open(CONFIG_DIR / 'embedmask' / 'metafile.yml') as f:
        return {m['Name']: m for m in yaml.safe_load(f)['Models']}


METAFILE = _metafile()


def published(config_file):
    """(box AP, mask AP) the metafile gives for a config, or None."""
    import os.path as osp
    entry = METAFILE[osp.splitext(osp.basename(config_file))[0]]
    if 'Results' not in entry:
        return None
    metrics = {k: v for r in entry['Results'] for k, v in r['Metrics'].items()}
    return metrics['box AP'], metrics['mask AP']


def test_metafile_and_configs_match():
    """Every config of configs/embedmask is a metafile model and every
    metafile model names an existing config of its own name."""
    files = {p.stem for p in (CONFIG_DIR / 'embedmask').glob('*.py')}
    assert files == set(METAFILE), (files ^ set(METAFILE))
    for name, entry in METAFILE.items():
        assert entry['Config'] == f'configs/embedmask/{name}.py'
        assert entry['In Collection'] == 'EmbedMask'


def test_model_index_read_as_mim_reads_it():
    """mim's read: model-index.yml -> Import -> each metafile's Models,
    configs relative to the index's folder."""
    import os.path as osp
    import yaml
    root = CONFIG_DIR.parent
    with open(root / 'model-index.yml') as f:
        index = yaml.safe_load(f)
    names = []
    for meta in index['Import']:
        with open(root / meta) as f:
            for model in yaml.safe_load(f)['Models']:
                assert osp.isfile(root / model['Config']), model['Config']
                names.append(model['Name'])
    assert sorted(names) == sorted(METAFILE)
    from embedmask_mmdet.apis import indexed_models
    assert [m['Name'] for m in indexed_models()] == names


def test_inferencer_resolves_a_model_name(tmp_path):
    """EmbedMaskInferencer('<metafile name>', weights=<local file>)."""
    import torch
    from mmdet.registry import MODELS
    from embedmask_mmdet.apis import EmbedMaskInferencer
    name = 'embedmask_r18_fpn_1xb4-3k_synthetic'
    cfg = load(CONFIG_DIR / 'embedmask' / f'{name}.py')
    model = MODELS.build(cfg.model)
    weights = str(tmp_path / 'w.pth')
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=cfg.metainfo.classes))),
               weights)
    inferencer = EmbedMaskInferencer(name, weights=weights, device='cpu',
                                     show_progress=False)
    assert type(inferencer.model).__name__ == 'EmbedMask'
    assert inferencer.cfg.model.backbone.depth == 18
    with pytest.raises(ValueError, match='Cannot find model'):
        EmbedMaskInferencer('embedmask_no-such-model', weights=weights)


def test_num_classes_must_agree_between_the_heads():
    from mmdet.registry import MODELS
    cfg = load(CONFIG_DIR / 'embedmask' / 'embedmask-lite0_fpn_1xb4-1300it_custom.py')
    assert cfg.model.bbox_head.num_classes == cfg.model.mask_head.num_classes \
        == len(cfg.metainfo.classes) == 3
    cfg.model.mask_head.num_classes = 4
    cfg.model.backbone.init_cfg = None
    with pytest.raises(ValueError, match=r'bbox_head.num_classes \(3\) and '
                       r'mask_head.num_classes \(4\)'):
        MODELS.build(cfg.model)


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=_rel)
def test_coco_recipes_use_the_fault_handling(path):
    """RobustCocoDataset (skips with counts), an error for a missing test
    image, atomic checkpoints; images still decoded with PIL."""
    cfg = load(path)
    train = cfg.train_dataloader.dataset
    assert (train.type, train.bad_annotation, train.missing_image) == (
        'RobustCocoDataset', 'skip', 'skip')
    test = cfg.test_dataloader.dataset
    assert (test.type, test.missing_image) == ('RobustCocoDataset', 'error')
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert train.pipeline[0].imdecode_backend == 'pillow'


@pytest.mark.slow  # builds the R-50 model and its optimizer
def test_v3_optimizer_is_maskrcnn_benchmarks():
    """maskrcnn-benchmark's make_optimizer (solver/build.py): every
    trainable parameter whose name holds 'bias' (GroupNorm biases included)
    gets lr x BIAS_LR_FACTOR (2) and WEIGHT_DECAY_BIAS (0), every other one
    the base lr and WEIGHT_DECAY (1e-4)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper

    import embedmask_mmdet  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(CONFIG_DIR / 'embedmask' /
                          'embedmask-v3_r50-caffe_fpn_8xb2-1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    base_lr = optim.defaults['lr']
    names = {id(p): n for n, p in model.named_parameters()}
    checked = 0
    for group in optim.param_groups:
        for p in group['params']:
            name = names[id(p)]
            if not p.requires_grad:
                continue
            is_bias = 'bias' in name
            assert group['lr'] == pytest.approx(
                base_lr * (2. if is_bias else 1.)), name
            assert group['weight_decay'] == (0. if is_bias else 1e-4), name
            checked += 1
    assert checked > 100
