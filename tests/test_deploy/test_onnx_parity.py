"""ONNX export parity: the exported graph, run by ONNX Runtime and by
OpenVINO, against PyTorch on the same weights (a small EmbedMask trained a
few dozen iterations, so that it detects), on the built-in data.

Parity: the same detections in the same order (a swap only between
detections whose scores differ by < 1e-4), boxes within 0.5 px, scores
within 1e-3, per-detection mask IoU >= 0.99. Each design branch of the
graph (mask placement 'centre' with p, log p or embedding resampling, the
authors' 'adelaidet' placement, mmdet's, AdelaiDet's or the FCOS repo's
candidate selection, crop to box, sqrt score) is exported once with the
compact mask outputs (the default); the dense contract (N x H x W
probabilities through the NumPy step) is held on the branches it restates
(embedding resampling, p resampling of resized images).
"""
import copy
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')

from embedmask_mmdet.deploy import EmbedMaskONNXModel, export_onnx  # noqa
from embedmask_mmdet.deploy.postprocess import resize_maps  # noqa
from embedmask_mmdet.models.utils.torch_compat import \
    export_torch_problem  # noqa

if export_torch_problem():  # the declared export range (EXPORT_MIN_TORCH)
    pytest.skip(export_torch_problem(), allow_module_level=True)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CPU_CONFIG = osp.join(ROOT,
                      'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')

pytestmark = pytest.mark.slow  # make test-fast skips it
SIZE = 128
TINY = dict(
    neck=dict(out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=1,
                   proposal_channels=16),
    mask_head=dict(in_channels=64, semantic_channels=16,
                   pixel_branch=dict(feat_channels=16, num_stacked_convs=1)),
    test_cfg=dict(score_thr=0.02, nms_pre=200, max_per_img=30))
# (name, model overrides): one export per graph branch
DESIGNS = {
    # the CPU config: 'centre', embedding resampling, AdelaiDet selection
    'cpu-config': {},
    # the Lite/demo placement: 'centre', p resampled
    'centre-prob': dict(test_cfg=dict(mask_resample='prob', mask_thr=0.4)),
    # the published model's: 'adelaidet' placement, sqrt(cls x ctr)
    'adelaidet': dict(mask_head=dict(alignment='adelaidet'),
                      test_cfg=dict(mask_resample='prob',
                                    score_type='sqrt_cls_ctr')),
    # mmdet's selection (boxes clipped), crop to box
    'mmdet-selection': dict(test_cfg=dict(
        mask_resample='prob', thresh_with_ctr=False, score_type='cls_ctr',
        crop_to_box=True, min_bbox_size=0)),
    # the v3 design's: the FCOS repo's selection, log p in box windows
    'v3': dict(test_cfg=dict(
        candidate_rule='fcos_repo', thresh_with_ctr=False,
        mask_resample='log_prob', mask_thr=0.53, crop_to_box=False,
        score_type='cls_ctr', min_bbox_size=0)),
}


def tiny_config(data_root: str, work_dir: str, overrides: dict) -> Config:
    cfg = Config.fromfile(CPU_CONFIG)
    cfg.merge_from_dict(dict(model=TINY))
    cfg.merge_from_dict(dict(model=overrides))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].dataset.data_root = data_root
        for step in cfg[loader].dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (SIZE, SIZE)
    cfg.train_dataloader.batch_size = 4
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = data_root + 'annotations/instances_val.json'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=40,
                         val_interval=1000)
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 2e-3
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=40)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=40)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny EmbedMask trained 40 iterations on 16 generated images."""
    from embedmask_mmdet.datasets import generate_synthetic_coco
    base = tmp_path_factory.mktemp('deploy')
    data_root = str(base / 'data') + '/'
    generate_synthetic_coco(data_root, num_train=16, num_val=4, seed=3,
                            size=(SIZE, SIZE))
    # images the test pipeline resizes (160x128 -> 128x102)
    resized_root = str(base / 'resized') + '/'
    generate_synthetic_coco(resized_root, num_train=1, num_val=4, seed=4,
                            size=(SIZE + 32, SIZE))
    cfg = tiny_config(data_root, str(base / 'work'), {})
    runner = Runner.from_cfg(cfg)
    runner.train()
    with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    return dict(base=base, data_root=data_root, resized_root=resized_root,
                cfg=cfg, ckpt=ckpt,
                state=copy.deepcopy(runner.model.state_dict()))


def build(trained, overrides, data_root=None):
    from mmdet.registry import MODELS
    cfg = tiny_config(data_root or trained['data_root'],
                      str(trained['base'] / 'work'), overrides)
    model = MODELS.build(cfg.model)
    model.load_state_dict(trained['state'])
    model.dataset_meta = dict(classes=cfg.metainfo['classes'])
    return cfg, model.eval()


def val_batches(cfg):
    loader = Runner.build_dataloader(cfg.test_dataloader)
    return [copy.deepcopy(data) for data in loader]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1. if union == 0 else (a & b).sum().item() / union


def assert_parity(ref, got, what: str, min_iou: float = 0.99):
    """Same detections in the same order (swaps only within near-equal
    scores), boxes within 0.5 px, scores within 1e-3, mask IoU >=
    ``min_iou``; returns the IoUs."""
    r, g = ref.pred_instances, got.pred_instances
    assert len(r) == len(g), f'{what}: {len(r)} vs {len(g)} detections'
    assert len(r) > 0, f'{what}: no detections to compare'
    used, ious = set(), []
    for i in range(len(r)):
        # position i, or a near-tie neighbour
        cands = [j for j in range(len(g)) if j not in used and (
            j == i or abs(float(r.scores[i] - g.scores[j])) < 1e-4)]
        match = next((j for j in cands if r.labels[i] == g.labels[j] and
                      (r.bboxes[i] - g.bboxes[j]).abs().max() <= 0.5), None)
        assert match is not None, (
            f'{what}: detection {i} (label {int(r.labels[i])}, score '
            f'{float(r.scores[i]):.5f}, box {r.bboxes[i].tolist()}) has no '
            f'counterpart; got label {int(g.labels[i])}, score '
            f'{float(g.scores[i]):.5f}, box {g.bboxes[i].tolist()}')
        used.add(match)
        assert abs(float(r.scores[i] - g.scores[match])) <= 1e-3, what
        ious.append(mask_iou(r.masks[i], g.masks[match]))
        assert ious[-1] >= min_iou, \
            f'{what}: detection {i} mask IoU {ious[-1]:.4f}'
    return ious


def check_runtime(cfg, model, onnx_file, backend, batches, min_iou=0.99):
    """Parity of every val image; returns (the runtime, the mask IoUs)."""
    runtime = EmbedMaskONNXModel(onnx_file, backend, config=cfg)
    # every image's results first, compared after: results must not share
    # a backend buffer that the next inference overwrites (as CocoMetric
    # keeps them until the end)
    gots = [runtime.predict_batch(copy.deepcopy(data)) for data in batches]
    ious = []
    for data, got in zip(batches, gots):
        with torch.no_grad():
            ref = model.test_step(copy.deepcopy(data))
        for r, g in zip(ref, got):
            ious += assert_parity(r, g, f'{backend} {r.img_path}', min_iou)
    assert len(ious) >= 10, f'only {len(ious)} detections compared'
    return runtime, ious


@pytest.mark.parametrize('design,masks', [
    (design, 'compact') for design in DESIGNS] + [('cpu-config', 'dense')])
def test_export_parity_onnxruntime_and_openvino(trained, design, masks,
                                                tmp_path):
    cfg, model = build(trained, DESIGNS[design])
    onnx_file = str(tmp_path / f'{design}.onnx')
    export_onnx(cfg, None, onnx_file, model=model, masks=masks)
    # every conv's weight is an initializer (INT8 quantizers see a conv's
    # weight only as one; log_margin_conv divides its weight at run time)
    import onnx
    proto = onnx.load(onnx_file)
    weights = {i.name for i in proto.graph.initializer}
    computed = [n.name for n in proto.graph.node
                if n.op_type == 'Conv' and n.input[1] not in weights]
    assert not computed, f'{design}: convs with computed weights {computed}'
    batches = val_batches(cfg)
    for backend in ('onnxruntime', 'openvino'):
        runtime, _ = check_runtime(cfg, model, onnx_file, backend, batches)
        assert runtime.mask_contract == masks


@pytest.mark.parametrize('design,masks', [
    ('v3', 'compact'), ('centre-prob', 'compact'), ('adelaidet', 'dense'), ('centre-prob', 'dense')])
def test_parity_on_resized_images(trained, design, masks, tmp_path):
    """Images the pipeline resizes. Compact: the masks come from the mask
    head's own code at the original size (the bar above). Dense: the
    graph's p at the input size is resized to the original size by the
    NumPy step; for the authors' placement that is their pipeline (the bar
    above); for 'centre' PyTorch resamples the cells to the original size
    in one step, so a boundary pixel may flip: per detection IoU >= 0.95,
    median >= 0.99."""
    cfg, model = build(trained, DESIGNS[design], trained['resized_root'])
    onnx_file = str(tmp_path / f'{design}.onnx')
    export_onnx(cfg, None, onnx_file, model=model, masks=masks)
    batches = val_batches(cfg)
    assert batches[0]['data_samples'][0].ori_shape != \
        batches[0]['data_samples'][0].img_shape
    exact = masks == 'compact' or design == 'adelaidet'
    ious = check_runtime(cfg, model, onnx_file, 'onnxruntime', batches,
                         0.99 if exact else 0.95)[1]
    assert np.median(ious) >= 0.99, np.median(ious)


def test_static_shape_export_pads_to_the_graph(trained, tmp_path):
    """--shape H W: the runtime pads each image to the fixed input; the
    model is fully convolutional, so compare with PyTorch fed the same
    padded tensor (the graph contract: normalised, zero-padded input)."""
    cfg, model = build(trained, DESIGNS['centre-prob'])
    onnx_file = str(tmp_path / 'static.onnx')
    export_onnx(cfg, None, onnx_file, shape=(192, 192), model=model)
    runtime = EmbedMaskONNXModel(onnx_file, 'onnxruntime', config=cfg)
    assert runtime.fixed_shape == (192, 192)
    for data in val_batches(cfg):
        got = runtime.predict_batch(copy.deepcopy(data))[0]
        ref_data = model.data_preprocessor(copy.deepcopy(data), False)
        inputs = torch.nn.functional.pad(
            ref_data['inputs'], (0, 192 - ref_data['inputs'].shape[3], 0,
                                 192 - ref_data['inputs'].shape[2]))
        for s in ref_data['data_samples']:
            s.set_metainfo(dict(batch_input_shape=(192, 192)))
        with torch.no_grad():
            ref = model.predict(inputs, ref_data['data_samples'])[0]
        assert_parity(ref, got, f'static {ref.img_path}')


def test_resize_step_matches_torch_bilinear():
    """The NumPy step's cv2 resize is F.interpolate(bilinear,
    align_corners=False) up and down."""
    rng = np.random.default_rng(0)
    maps = rng.random((3, 37, 53), dtype=np.float32)
    for size in ((80, 100), (20, 31), (37, 53)):
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(maps)[None], size=size, mode='bilinear',
            align_corners=False)[0].numpy()
        assert np.abs(resize_maps(maps, size) - ref).max() < 1e-5, size


def test_runtime_skips_unreadable_images(trained, tmp_path):
    """A list with an empty file and a non-image: both skipped with a
    warning naming them, the others processed, the skipped ones listed."""
    cfg, model = build(trained, DESIGNS['centre-prob'])
    onnx_file = str(tmp_path / 'm.onnx')
    export_onnx(cfg, None, onnx_file, model=model)
    src = osp.join(trained['data_root'], 'val')
    images = sorted(osp.join(src, f) for f in __import__('os').listdir(src))
    empty, text = str(tmp_path / 'empty.jpg'), str(tmp_path / 'notes.png')
    open(empty, 'wb').close()
    with open(text, 'w') as f:
        f.write('not an image')
    runtime = EmbedMaskONNXModel(onnx_file, 'onnxruntime')  # config inside
    with pytest.warns(UserWarning) as record:
        results = runtime(images[:1] + [empty] + images[1:3] + [text])
    warned = ' '.join(str(w.message) for w in record)
    assert empty in warned and text in warned
    assert [r.img_path for r in results] == images[:3]
    assert [p for p, _ in runtime.skipped] == [empty, text]
    for r in results:
        h, w = cv2.imread(r.img_path).shape[:2]
        assert r.pred_instances.masks.shape[1:] == (h, w)
        assert r.pred_instances.masks.dtype == torch.bool


# ------------------------------------------------------------ the tools
PY = sys.executable


def run_tool(args, timeout=600):
    proc = subprocess.run([PY] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def on_disk(trained):
    """The trained model as a config file + checkpoint, exported by the
    command-line tool."""
    config = str(trained['base'] / 'tiny.py')
    trained['cfg'].dump(config)
    onnx_file = str(trained['base'] / 'tiny.onnx')
    rc, out = run_tool(['tools/deployment/export_onnx.py', config,
                        trained['ckpt'], '--out', onnx_file])
    assert rc == 0, out[-4000:]
    assert 'labels equal' in out, out[-2000:]
    return dict(config=config, onnx=onnx_file, ckpt=trained['ckpt'],
                export_out=out)


def test_export_tool_refuses_with_a_clear_message(on_disk, tmp_path):
    mask_rcnn = str(tmp_path / 'mask_rcnn.py')
    with open(mask_rcnn, 'w') as f:
        f.write("_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n")
    cases = [
        ([mask_rcnn, on_disk['ckpt']], 'EmbedMask configs only'),
        ([on_disk['config'], str(tmp_path / 'nope.pth')],
         'nope.pth\' not found'),
        ([on_disk['config'], on_disk['ckpt'], '--shape', '300', '320'],
         'multiples of 32'),
    ]
    for args, message in cases:
        rc, out = run_tool(['tools/deployment/export_onnx.py'] + args +
                           (['--out', str(tmp_path / 'x.onnx')]))
        assert rc != 0 and message in out, (args, out[-2000:])
        assert 'Traceback' not in out, out[-2000:]


def test_onnx_test_tool_matches_pytorch_metrics(on_disk, tmp_path):
    """tools/deployment/onnx_test.py prints CocoMetric's segm mAP of the
    exported model; it equals tools/test.py's on the PyTorch model."""
    import json
    rc, out = run_tool(['tools/test.py', on_disk['config'], on_disk['ckpt'],
                        '--work-dir', str(tmp_path / 'pt')])
    assert rc == 0, out[-3000:]
    with open(tmp_path / 'pt' / 'test_metrics.json') as f:
        ref = json.load(f)
    for backend in ('onnxruntime', 'openvino'):
        rc, out = run_tool(['tools/deployment/onnx_test.py',
                            on_disk['config'], on_disk['onnx'], '--backend',
                            backend, '--work-dir', str(tmp_path / backend)])
        assert rc == 0, out[-3000:]
        assert 'coco/segm_mAP:' in out, out[-2000:]
        with open(tmp_path / backend / 'onnx_test_metrics.json') as f:
            got = json.load(f)
        for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
            assert abs(got[key] - ref[key]) <= 0.005, (backend, key, got, ref)


def test_onnx_demo_skips_unreadable_images(trained, on_disk, tmp_path):
    """A folder of 3 images, one empty file and one non-image: 3 drawn,
    2 skipped by name, exit 1."""
    import shutil
    folder = tmp_path / 'imgs'
    folder.mkdir()
    src = osp.join(trained['data_root'], 'val')
    for name in sorted(__import__('os').listdir(src))[:3]:
        shutil.copy(osp.join(src, name), folder / name)
    (folder / '0_empty.jpg').write_bytes(b'')
    (folder / 'z_text.png').write_text('not an image')
    out_dir = tmp_path / 'out'
    rc, out = run_tool(['tools/deployment/onnx_demo.py', str(folder),
                        on_disk['onnx'], '--out-dir', str(out_dir),
                        '--score-thr', '0.05'])
    assert rc == 1, out[-3000:]
    assert '3 images processed, 2 skipped' in out, out[-2000:]
    assert '0_empty.jpg' in out and 'z_text.png' in out
    drawn = sorted(p.name for p in out_dir.iterdir())
    assert len(drawn) == 3 and all(p.endswith('.png') for p in drawn)
    assert cv2.imread(str(out_dir / drawn[0])).shape[:2] == (SIZE, SIZE)


def test_test_tool_amp_and_channels_last(on_disk, tmp_path):
    """tools/test.py --amp --channels-last runs and evaluates (segm
    metrics written). How close bf16 stays to fp32 (AP, masks) is
    test_reduced_precision's: this 40-iteration model's AP is ~0."""
    import json
    rc, out = run_tool(['tools/test.py', on_disk['config'], on_disk['ckpt'],
                        '--work-dir', str(tmp_path), '--amp',
                        '--channels-last'])
    assert rc == 0, out[-3000:]
    with open(tmp_path / 'test_metrics.json') as f:
        assert 'coco/segm_mAP' in json.load(f)
