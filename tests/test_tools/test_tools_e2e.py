"""CI-sized end-to-end runs of the command-line tools.

Every tool runs as a subprocess on a tiny built-in dataset (8 train / 4 val
images of 96x96) with a narrow ResNet-18 EmbedMask: our tools/train.py,
test.py, demo.py, plot_curves.py and print_metrics.py; mmdet's packaged
train.py / test.py unchanged; 2-process gloo training and testing through
tools/dist_train.sh / dist_test.sh; and a SIGKILL-then-resume run compared
with an uninterrupted one. A few iterations give a model with ~0 AP, so the
tests check files, keys, types and agreement, never AP values.
"""
import json
import math
import os
import os.path as osp
import pickle
import pprint
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import cv2
import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CPU_CONFIG = osp.join(ROOT,
                      'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')

pytestmark = pytest.mark.slow  # make test-fast skips it
PY = sys.executable
SIZE = 96
METRIC_KEYS = ('coco/bbox_mAP', 'coco/segm_mAP')

# The base config's pipelines with every Resize scaled to SIZE are pasted in
# (see small_pipeline), so its loaders and transforms stay what it uses.
# Narrow heads. GroupNorm in the box head uses 32 groups, so the neck needs
# >= 64 channels: at 96 px the P7 map is 1x1 and 32 channels (one per group)
# would leave a single value per group at batch size 1 ("Expected more than
# 1 value per channel").
TINY_CONFIG = '''
_base_ = {base!r}
_data_root = {data_root!r}
_ch = 64
model = dict(
    neck=dict(out_channels=_ch),
    bbox_head=dict(in_channels=_ch, feat_channels=_ch, stacked_convs=1,
                   proposal_channels=16),
    mask_head=dict(in_channels=_ch, semantic_channels=16,
                   pixel_branch=dict(feat_channels=16, num_stacked_convs=1)),
    # keep low-score detections so the barely trained model's results are
    # not empty (CocoMetric returns no metrics for an empty result list)
    test_cfg=dict(score_thr=0.0, nms_pre=100, max_per_img=20))
_train_pipeline = {train_pipeline}
_test_pipeline = {test_pipeline}
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=_data_root, pipeline=_train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=_data_root, pipeline=_test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=_data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=2, max_keep_ckpts=-1))
randomness = dict(seed=0)
'''

# The kill/resume run: 12 iterations, a checkpoint every 4, and an LR that
# changes at every iteration (linear warm-up over the whole run).
RESUME_CONFIG = '''
_base_ = {base!r}
train_cfg = dict(max_iters=12, val_interval=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=12)
]
default_hooks = dict(checkpoint=dict(interval=4))
'''


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1', PYTHON=PY)
    env.pop('CUDA_VISIBLE_DEVICES', None)
    return env


def run(cmd, timeout=300, env=None):
    """Run ``cmd`` in its own session; kill the whole group on timeout.

    Returns (returncode, combined stdout+stderr).
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f'{cmd} timed out after {timeout}s:\n{out[-4000:]}')
    return proc.returncode, out


def run_ok(cmd, timeout=300, env=None):
    rc, out = run(cmd, timeout, env)
    assert rc == 0, f'{cmd} exited {rc}:\n{out[-6000:]}'
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        path = f.read().strip()
    assert osp.isfile(path), path
    return path


def run_dirs(work_dir: str):
    """The <timestamp> folders mmengine made, oldest first."""
    return sorted(d for d in os.listdir(work_dir)
                  if re.fullmatch(r'\d{8}_\d{6}', d)
                  and osp.isdir(osp.join(work_dir, d)))


def read_scalars(run_dir: str):
    path = osp.join(run_dir, 'vis_data', 'scalars.json')
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    assert recs, path
    return recs


def train_records(run_dir: str):
    return {r['iter']: r for r in read_scalars(run_dir) if 'loss' in r}


def checkpoint_files(work_dir: str):
    return sorted(f for f in os.listdir(work_dir) if f.endswith('.pth'))


def load_pickle_results(path: str):
    with open(path, 'rb') as f:
        return pickle.load(f)


def fresh_model(config: str):
    import embedmask_mmdet  # noqa: F401  (registers, allowlists globals)
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def assert_loads_cleanly(config: str, ckpt: str):
    """The checkpoint loads, under torch's default (weights_only) loader,
    into a freshly built model with no missing or unexpected keys."""
    from mmengine.runner import load_checkpoint
    model = fresh_model(config)
    state = load_checkpoint(model, ckpt, map_location='cpu', strict=True)
    keys = set(state['state_dict'])
    assert keys == set(model.state_dict()), (
        sorted(set(model.state_dict()) - keys)[:5],
        sorted(keys - set(model.state_dict()))[:5])
    assert not any(k.startswith('module.') for k in keys)
    return state


def small_pipeline(pipeline) -> str:
    """``pipeline`` (a list of ConfigDicts) with Resize at SIZE, as Python."""
    steps = []
    for step in pipeline:
        step = step.to_dict()
        if step['type'] == 'Resize':
            step['scale'] = (SIZE, SIZE)
        steps.append(step)
    return pprint.pformat(steps, sort_dicts=False)


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """A tiny dataset and the tiny config, made once."""
    from embedmask_mmdet.datasets import generate_synthetic_coco
    base = tmp_path_factory.mktemp('tools_e2e')
    data_root = str(base / 'data') + '/'
    generate_synthetic_coco(data_root, num_train=8, num_val=4, seed=1,
                            size=(SIZE, SIZE))
    base_cfg = Config.fromfile(CPU_CONFIG)
    config = str(base / 'tiny_embedmask.py')
    with open(config, 'w') as f:
        f.write(TINY_CONFIG.format(
            base=CPU_CONFIG, data_root=data_root,
            train_pipeline=small_pipeline(
                base_cfg.train_dataloader.dataset.pipeline),
            test_pipeline=small_pipeline(
                base_cfg.test_dataloader.dataset.pipeline)))
    cfg = Config.fromfile(config)  # the tiny config parses and is small
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        (resize, ) = [t for t in cfg[loader].dataset.pipeline
                      if t.type == 'Resize']
        assert tuple(resize.scale) == (SIZE, SIZE)
        assert cfg[loader].dataset.data_root == data_root
    return dict(base=base, data_root=data_root, config=config)


@pytest.fixture(scope='module')
def trained(env):
    """tools/train.py then tools/test.py --out, as subprocesses."""
    work = str(env['base'] / 'work')
    train_out = run_ok([PY, 'tools/train.py', env['config'],
                        '--work-dir', work])
    ckpt = last_checkpoint(work)
    test_dir = str(env['base'] / 'test')
    pkl = osp.join(test_dir, 'res.pkl')
    test_out = run_ok([PY, 'tools/test.py', env['config'], ckpt,
                       '--work-dir', test_dir, '--out', pkl])
    return dict(work=work, ckpt=ckpt, test_dir=test_dir, pkl=pkl,
                train_out=train_out, test_out=test_out)


# ------------------------------------------------------------------ tests


def test_train_and_test_tools(env, trained):
    work = trained['work']
    assert checkpoint_files(work) == ['iter_2.pth', 'iter_4.pth']
    assert osp.basename(trained['ckpt']) == 'iter_4.pth'
    # evaluation at the end of training, logged to the run's scalars
    (run_dir, ) = run_dirs(work)
    recs = read_scalars(osp.join(work, run_dir))
    assert sorted(train_records(osp.join(work, run_dir))) == [1, 2, 3, 4]
    val = [r for r in recs if 'coco/bbox_mAP' in r]
    assert len(val) == 1 and all(k in val[0] for k in METRIC_KEYS)
    assert 'coco/segm_mAP' in trained['train_out']

    with open(osp.join(trained['test_dir'], 'test_metrics.json')) as f:
        metrics = json.load(f)
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], float) and -1 <= metrics[key] <= 1
    results = load_pickle_results(trained['pkl'])
    assert sorted(r['img_id'] for r in results) == [1, 2, 3, 4]
    assert all('masks' in r['pred_instances'] for r in results)

    state = assert_loads_cleanly(env['config'], trained['ckpt'])
    assert state['meta']['iter'] == 4


def test_mmdet_packaged_tools(env, trained):
    import mmdet
    mim_tools = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
    work = str(env['base'] / 'mim_work')
    run_ok([PY, osp.join(mim_tools, 'train.py'), env['config'],
            '--work-dir', work])
    assert checkpoint_files(work) == ['iter_2.pth', 'iter_4.pth']
    ckpt = last_checkpoint(work)

    test_work = str(env['base'] / 'mim_test')
    run_ok([PY, osp.join(mim_tools, 'test.py'), env['config'], ckpt,
            '--work-dir', test_work])
    (run_dir, ) = run_dirs(test_work)
    with open(osp.join(test_work, run_dir, run_dir + '.json')) as f:
        metrics = json.load(f)
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], float)


def test_mmdet_analysis_tools(env, trained, tmp_path):
    """mmdet's CPU analysis tools on our config and its results
    (docs/getting_started.md lists them): analyze_results through our thin
    wrapper (mmdet's keeps the loaders by exact class), the others as
    mmdet ships them."""
    import glob
    import mmdet
    tools = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                     'analysis_tools')
    show = tmp_path / 'analyze'
    run_ok([PY, 'tools/analysis_tools/analyze_results.py', env['config'],
            trained['pkl'], str(show), '--topk', '2'])
    assert glob.glob(str(show / 'good' / '*.jpg')) and \
        glob.glob(str(show / 'bad' / '*.jpg'))
    run_ok([PY, osp.join(tools, 'confusion_matrix.py'), env['config'],
            trained['pkl'], str(tmp_path / 'cm')])
    assert osp.isfile(tmp_path / 'cm' / 'confusion_matrix.png')
    browse = tmp_path / 'browse'
    run_ok([PY, osp.join(tools, 'browse_dataset.py'), env['config'],
            '--output-dir', str(browse), '--not-show'])
    drawn = glob.glob(str(browse / '*'))
    # the 8 train images but those the dataset filters (no annotation)
    assert 1 <= len(drawn) <= 8
    assert all(cv2.imread(p) is not None for p in drawn)
    out = run_ok([PY, osp.join(tools, 'get_flops.py'), env['config'],
                  '--num-images', '1'])
    assert 'Flops:' in out and 'Params:' in out
    (log,) = glob.glob(osp.join(trained['work'], '*', 'vis_data',
                                 'scalars.json'))
    out = run_ok([PY, osp.join(tools, 'analyze_logs.py'), 'cal_train_time',
                  log])
    assert 'average iter time' in out


def test_tta_with_our_and_mmdets_test_tools(env, trained):
    """--tta: the config's EmbedMaskTTAModel and tta_pipeline (3 scales x
    flip), through our tools/test.py and mmdet's packaged one."""
    import mmdet
    work = str(env['base'] / 'tta')
    out = run_ok([PY, 'tools/test.py', env['config'], trained['ckpt'],
                  '--tta', '--work-dir', work])
    assert 'coco/segm_mAP' in out
    with open(osp.join(work, 'test_metrics.json')) as f:
        metrics = json.load(f)
    assert all(isinstance(metrics[k], float) for k in METRIC_KEYS)

    mim_test = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                        'test.py')
    mim_work = str(env['base'] / 'mim_tta')
    out = run_ok([PY, mim_test, env['config'], trained['ckpt'], '--tta',
                  '--work-dir', mim_work])
    assert 'coco/segm_mAP' in out
    (run_dir, ) = run_dirs(mim_work)
    with open(osp.join(mim_work, run_dir, run_dir + '.json')) as f:
        mim_metrics = json.load(f)
    # the same model, views and merge through either tool
    for key in METRIC_KEYS:
        assert mim_metrics[key] == pytest.approx(metrics[key], abs=1e-9)


def test_dist_train_and_test_gloo(env):
    """2 processes (torchrun + gloo): one checkpoint per save, and the
    distributed test merges both ranks' shards into exactly the predictions
    and metrics of a single-process test of the same checkpoint."""
    work = str(env['base'] / 'dist_work')
    env_vars = dict(_env(), PORT=str(free_port()))
    out = run_ok(['bash', 'tools/dist_train.sh', env['config'], '2',
                  '--work-dir', work], timeout=300, env=env_vars)
    assert checkpoint_files(work) == ['iter_2.pth', 'iter_4.pth']
    assert out.count('Saving checkpoint at 2 iterations') == 1
    assert out.count('Saving checkpoint at 4 iterations') == 1
    (run_dir, ) = run_dirs(work)
    with open(osp.join(work, run_dir, run_dir + '.log')) as f:
        log = f.read()
    assert 'Distributed training: True' in log
    assert re.search(r'GPU number: 2\b', log)  # mmengine's world size
    # each rank validates its half of the 4 val images
    assert 'Iter(val) [2/2]' in log and 'Iter(val) [4/4]' not in log
    ckpt = last_checkpoint(work)
    assert_loads_cleanly(env['config'], ckpt)  # no DDP 'module.' prefix

    dist_dir = str(env['base'] / 'dist_test')
    single_dir = str(env['base'] / 'dist_single_test')
    env_vars = dict(_env(), PORT=str(free_port()))
    out = run_ok(['bash', 'tools/dist_test.sh', env['config'], ckpt, '2',
                  '--work-dir', dist_dir, '--out',
                  osp.join(dist_dir, 'res.pkl')], timeout=300, env=env_vars)
    assert 'Iter(test) [2/2]' in out
    run_ok([PY, 'tools/test.py', env['config'], ckpt, '--work-dir',
            single_dir, '--out', osp.join(single_dir, 'res.pkl')])

    metrics = []
    for d in (dist_dir, single_dir):
        with open(osp.join(d, 'test_metrics.json')) as f:
            metrics.append(json.load(f))
    assert all(k in metrics[0] for k in METRIC_KEYS)
    assert metrics[0] == metrics[1]
    dist_res = load_pickle_results(osp.join(dist_dir, 'res.pkl'))
    single_res = load_pickle_results(osp.join(single_dir, 'res.pkl'))
    assert [r['img_id'] for r in dist_res] == [1, 2, 3, 4]
    assert [r['img_id'] for r in single_res] == [1, 2, 3, 4]
    for a, b in zip(dist_res, single_res):
        pa, pb = a['pred_instances'], b['pred_instances']
        assert len(pa['scores']) == len(pb['scores']) > 0
        for key in ('bboxes', 'scores'):
            torch.testing.assert_close(pa[key], pb[key], rtol=1e-4,
                                       atol=1e-4)
        assert torch.equal(pa['labels'], pb['labels'])


def test_kill9_then_resume_matches_uninterrupted(env):
    config = str(env['base'] / 'resume_cfg.py')
    with open(config, 'w') as f:
        f.write(RESUME_CONFIG.format(base=env['config']))

    # uninterrupted reference
    ref_work = str(env['base'] / 'ref_work')
    run_ok([PY, 'tools/train.py', config, '--work-dir', ref_work])
    (ref_run, ) = run_dirs(ref_work)
    ref = train_records(osp.join(ref_work, ref_run))
    assert sorted(ref) == list(range(1, 13))
    # the schedule really changes the LR at every iteration
    assert len({r['lr'] for r in ref.values()}) == 12

    work = str(env['base'] / 'kill_work')
    cmd = [PY, 'tools/train.py', config, '--work-dir', work]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = osp.join(work, 'last_checkpoint')
    deadline = time.monotonic() + 240
    try:
        # last_checkpoint is written after the .pth is complete
        while not osp.isfile(marker):
            assert proc.poll() is None, f'training exited {proc.returncode}'
            assert time.monotonic() < deadline, 'no checkpoint in time'
            time.sleep(0.05)
        assert proc.poll() is None, 'training finished before the kill'
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpt = last_checkpoint(work)
    ckpt_iter = int(re.fullmatch(r'iter_(\d+)\.pth',
                                 osp.basename(ckpt)).group(1))
    assert ckpt_iter in (4, 8)
    assert 'iter_12.pth' not in checkpoint_files(work)

    out = run_ok([PY, 'tools/train.py', config, '--work-dir', work,
                  '--resume'])
    assert f'resumed epoch: 0, iter: {ckpt_iter}' in out
    resumed_run = run_dirs(work)[-1]
    with open(osp.join(work, resumed_run, resumed_run + '.log')) as f:
        assert f'resumed epoch: 0, iter: {ckpt_iter}' in f.read()
    resumed = train_records(osp.join(work, resumed_run))
    assert sorted(resumed) == list(range(ckpt_iter + 1, 13))
    for it, rec in resumed.items():
        assert math.isclose(rec['lr'], ref[it]['lr'], rel_tol=1e-6), (
            it, rec['lr'], ref[it]['lr'])

    final = torch.load(osp.join(work, 'iter_12.pth'), map_location='cpu')
    assert final['meta']['iter'] == 12
    assert last_checkpoint(work).endswith('iter_12.pth')
    opt_state = final['optimizer']['state']
    assert opt_state, 'no optimizer state in the resumed checkpoint'
    steps = set()
    for buf in opt_state.values():
        assert {'exp_avg', 'exp_avg_sq', 'step'} <= set(buf)  # AdamW
        steps.add(int(buf['step']))
    # the optimizer state was restored, not restarted: 12 steps in all
    assert max(steps) == 12
    ref_final = torch.load(osp.join(ref_work, 'iter_12.pth'),
                           map_location='cpu')
    assert set(ref_final['optimizer']['state']) == set(opt_state)
    assert final['param_schedulers'] == ref_final['param_schedulers']


def test_demo_and_det_inferencer(env, trained, tmp_path):
    from mmdet.apis import DetInferencer
    val_dir = osp.join(env['data_root'], 'val')
    image = osp.join(val_dir, '000001.jpg')
    out_dir = str(tmp_path / 'demo_one')
    run_ok([PY, 'tools/demo.py', image, env['config'], trained['ckpt'],
            '--out-dir', out_dir])
    png = osp.join(out_dir, '000001.png')
    drawn = cv2.imread(png)
    assert drawn is not None, png
    assert drawn.shape[:2] == cv2.imread(image).shape[:2] == (SIZE, SIZE)

    out_dir = str(tmp_path / 'demo_dir')
    run_ok([PY, 'tools/demo.py', val_dir, env['config'], trained['ckpt'],
            '--out-dir', out_dir, '--limit', '2'])
    assert sorted(os.listdir(out_dir)) == ['000000.png', '000001.png']

    # a folder with unreadable files: they are skipped by name, the rest is
    # processed, the run ends with the count and a non-zero exit
    bad_dir = tmp_path / 'mixed'
    bad_dir.mkdir()
    for name in ('000000.jpg', '000001.jpg', '000002.jpg'):
        shutil.copy(osp.join(val_dir, name), bad_dir / name)
    (bad_dir / '000003.png').write_bytes(b'')
    (bad_dir / '000004.jpg').write_text('not an image')
    with open(osp.join(val_dir, '000003.jpg'), 'rb') as f:
        (bad_dir / '000005.jpg').write_bytes(f.read()[:200])  # truncated
    out_dir = str(tmp_path / 'demo_mixed')
    rc, out = run([PY, 'tools/demo.py', str(bad_dir), env['config'],
                   trained['ckpt'], '--out-dir', out_dir])
    assert rc == 1, out[-3000:]
    for name in ('000003.png', '000004.jpg', '000005.jpg'):
        assert f'warning: skipped {bad_dir / name}: not a readable image' in \
            out, out[-3000:]
    assert '3 images processed, 3 skipped' in out
    assert sorted(os.listdir(out_dir)) == ['000000.png', '000001.png',
                                           '000002.png']

    import embedmask_mmdet  # noqa: F401
    inferencer = DetInferencer(model=env['config'], weights=trained['ckpt'],
                               device='cpu', show_progress=False)
    res = inferencer(image, no_save_vis=True, return_datasamples=True)
    sample = res['predictions'][0]
    masks = sample.pred_instances.masks
    assert masks.shape[-2:] == (SIZE, SIZE) and len(masks) > 0
    res = inferencer(image, no_save_vis=True)
    pred = res['predictions'][0]
    assert {'labels', 'scores', 'bboxes', 'masks'} <= set(pred)
    assert len(pred['masks']) == len(pred['scores']) > 0


def test_train_amp(env, tmp_path):
    """--amp trains on a CPU too (CpuAmpOptimWrapper: bf16 autocast)."""
    work = str(tmp_path / 'amp')
    out = run_ok([PY, 'tools/train.py', env['config'], '--amp',
                  '--work-dir', work])
    assert "type='CpuAmpOptimWrapper'" in out, out[-2000:]
    assert last_checkpoint(work).endswith('iter_4.pth')


def test_tool_errors(env, tmp_path):
    # --amp switches only OptimWrapper / AmpOptimWrapper configs
    start = time.monotonic()
    rc, out = run([PY, 'tools/train.py', env['config'], '--amp',
                   '--cfg-options', 'optim_wrapper.type=ApexOptimWrapper',
                   '--work-dir', str(tmp_path / 'amp')], timeout=120)
    assert rc != 0
    assert '--amp' in out and 'ApexOptimWrapper' in out, out[-2000:]
    assert time.monotonic() - start < 60
    assert not osp.exists(tmp_path / 'amp' / 'last_checkpoint')

    missing = str(tmp_path / 'missing.pth')
    rc, out = run([PY, 'tools/test.py', env['config'], missing,
                   '--work-dir', str(tmp_path / 'test')], timeout=120)
    assert rc != 0 and missing in out, out[-2000:]


def test_plot_curves_and_print_metrics(trained):
    out = run_ok([PY, 'tools/plot_curves.py', trained['work']])
    png = osp.join(trained['work'], 'loss_curve.png')
    with open(png, 'rb') as f:
        head = f.read(8)
    assert head == b'\x89PNG\r\n\x1a\n' and osp.getsize(png) > 1000
    img = cv2.imread(png)
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert '4 points' in out

    out = run_ok([PY, 'tools/print_metrics.py',
                  osp.join(trained['test_dir'], 'test_metrics.json')])
    rows = {line.split('|')[1].strip(): line for line in out.splitlines()
            if line.startswith('|')}
    assert 'bbox' in rows and 'segm' in rows
    for task in ('bbox', 'segm'):
        cells = [c.strip() for c in rows[task].strip('|').split('|')[1:]]
        assert len(cells) == 6
        assert all(re.fullmatch(r'-?\d+\.\d{3}', c) for c in cells), cells
