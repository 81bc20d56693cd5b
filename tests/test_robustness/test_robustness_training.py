"""Faults in training: config mistakes, 0/300+ objects, non-finite losses, checkpoint write faults, a dying rank (docs/robustness.md)."""
import copy
import os
import os.path as osp
import pickle
import shutil
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.logging import MessageHub

import embedmask_mmdet  # noqa: F401
from embedmask_mmdet.datasets import (SYNTHETIC_CLASSES)
from embedmask_mmdet.engine import (AtomicCheckpointHook, checkpoint_problem,
                                    find_resume_checkpoint)
from robustness_helpers import RecordStartIterHook, toy_runner

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")]

from robustness_common import (  # noqa: E402
    CAP, CPU_CONFIG, HELPERS, ROOT, write_json)


# ----------------------------------------------------------- model / config
def tiny_cfg(cap=CAP):
    """The CPU config with a narrow ResNet-18 and heads, 128-px images."""
    cfg = Config.fromfile(CPU_CONFIG)
    m = cfg.model
    m.backbone.update(base_channels=16)
    m.neck.update(in_channels=[32, 64, 128], out_channels=32)
    m.bbox_head.update(in_channels=32, feat_channels=32, stacked_convs=1,
                       proposal_channels=16,
                       norm_cfg=dict(type='GN', num_groups=8,
                                     requires_grad=True))
    m.mask_head.update(in_channels=32, semantic_channels=16,
                       pixel_branch=dict(type='p3p5_fusion', feat_channels=16,
                                         num_stacked_convs=1),
                       max_masks_to_train=cap)
    for pipe in (cfg.train_dataloader.dataset.pipeline,
                 cfg.val_dataloader.dataset.pipeline):
        for step in pipe:
            if step['type'] == 'Resize':
                step['scale'] = (128, 128)
    return cfg


@pytest.fixture(scope='module')
def tiny():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    return cfg, model


CONFIG_MISTAKES = [
    (dict(bbox_head=dict(embed_dim=2), mask_head=dict(embed_dim=2)),
     'embed_dim must be an int >= 3'),
    (dict(bbox_head=dict(prior_margin=0.)), 'prior_margin must be > 0'),
    (dict(bbox_head=dict(prior_margin=-1.)), 'prior_margin must be > 0'),
    (dict(test_cfg=dict(mask_thr=1.0)), r'mask_thr must be in \(0, 1\)'),
    (dict(test_cfg=dict(mask_thr=0.)), r'mask_thr must be in \(0, 1\)'),
    (dict(mask_head=dict(pixel_branch=dict(type='p4_fusion'))),
     r"pixel_branch.type='p4_fusion' is not supported; use one of "
     r"\('p3p5_fusion', 'p3_tower', 'p2p5_fusion'\)"),
    (dict(mask_head=dict(sampling='random')),
     r"sampling='random' is not supported; use one of \('all_positives', "
     r"'best_iou_per_gt'\)"),
    (dict(bbox_head=dict(margin_type='learned')), "margin_type='learned'"),
    (dict(bbox_head=dict(proposal_head='mlp')), "proposal_head='mlp'"),
    (dict(nonfinite_loss='ignore'),
     r"nonfinite_loss='ignore' is not supported; use one of \('raise', "
     r"'warn'\)"),
]


@pytest.mark.parametrize('change,message', CONFIG_MISTAKES,
                         ids=[m[:24] for _, m in CONFIG_MISTAKES])
def test_config_mistake_fails_at_build(change, message):
    cfg = Config.fromfile(CPU_CONFIG)
    cfg.merge_from_dict(dict(model=change))
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg.model)


def batch_from(cfg, root, ann_file, split='train'):
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg.update(data_root=root, ann_file=ann_file,
                  data_prefix=dict(img=f'{split}/'), filter_cfg=None)
    ds = DATASETS.build(ds_cfg)
    return pseudo_collate([ds[i] for i in range(len(ds))])


def loss_and_grads(model, batch):
    model.zero_grad()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    for k, v in losses.items():
        assert torch.isfinite(v).all(), (k, v)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    return losses


def single_image_json(tmp_path, boxes, size=(128, 96)):
    """One image with square objects at ``boxes`` (x0, y0, side)."""
    w, h = size
    os.makedirs(tmp_path / 'train', exist_ok=True)
    img = np.full((h, w, 3), 90, np.uint8)
    anns = []
    for i, (x, y, s) in enumerate(boxes):
        img[y:y + s, x:x + s] = (40 + 7 * i) % 256
        anns.append(dict(id=i + 1, image_id=1, category_id=i % 6 + 1,
                         iscrowd=0, area=float(s * s),
                         bbox=[float(x), float(y), float(s), float(s)],
                         segmentation=[[x, y, x + s, y, x + s, y + s, x,
                                        y + s]]))
    cv2.imwrite(str(tmp_path / 'train' / 'a.jpg'), img)
    coco = dict(images=[dict(id=1, file_name='a.jpg', width=w, height=h)],
                annotations=anns,
                categories=[dict(id=i + 1, name=n)
                            for i, n in enumerate(SYNTHETIC_CLASSES)])
    return write_json(coco, tmp_path / 'one.json')


def test_image_without_objects_trains(tiny, tmp_path):
    cfg, model = tiny
    ann_file = single_image_json(tmp_path, [])
    batch = batch_from(cfg, str(tmp_path), ann_file)
    assert len(batch['data_samples'][0].gt_instances) == 0
    losses = loss_and_grads(model, batch)
    assert losses['loss_mask'].item() == 0.


def test_300_objects_train_with_capped_masks(tiny, tmp_path):
    cfg, model = tiny
    # 20 x 15 grid of 14-px squares on a 320x240 image: 300 objects
    boxes = [(16 * c + 1, 16 * r + 1, 14) for r in range(15)
             for c in range(20)]
    ann_file = single_image_json(tmp_path, boxes, size=(320, 240))
    cfg = copy.deepcopy(cfg)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = (320, 320)
    batch = batch_from(cfg, str(tmp_path), ann_file)
    assert len(batch['data_samples'][0].gt_instances) == 300
    seen = {}
    head = model.mask_head
    sample, loss_mask = head.sample_positives, head.loss_mask.forward

    def count_positives(infos, gts):
        seen['positives'] = sum(len(i) for i in infos)
        return sample(infos, gts)

    def count_masks(logits, targets, *a, **k):
        seen['masks'] = logits.shape[0]
        return loss_mask(logits, targets, *a, **k)

    head.sample_positives, head.loss_mask.forward = count_positives, \
        count_masks
    try:
        loss_and_grads(model, batch)
    finally:
        del head.sample_positives, head.loss_mask.forward
    assert seen['positives'] > CAP
    assert seen['masks'] == CAP == head.max_masks_to_train


@pytest.mark.parametrize('embed,log_margin', [(1e6, 0.), (0., 1e3),
                                              (0., -1e3), (1e6, 1e3),
                                              (-1e6, -1e3)])
def test_extreme_embeddings_and_margins_stay_finite(tiny, synth, embed,
                                                    log_margin):
    cfg, model = tiny
    batch = batch_from(cfg, synth, 'annotations/instances_train.json')
    batch = {k: v[:2] for k, v in batch.items()}
    pixel = model.mask_head.pixel_branch.conv_pred.bias
    proposal = model.bbox_head.embedding_head.embed_conv.bias
    margin = model.bbox_head.embedding_head.margin_conv.bias
    saved = [t.detach().clone() for t in (pixel, proposal, margin)]
    with torch.no_grad():
        pixel[2:] = embed
        proposal[2:] = -embed
        margin.fill_(log_margin)
    try:
        loss_and_grads(model, batch)
    finally:
        with torch.no_grad():
            for t, s in zip((pixel, proposal, margin), saved):
                t.copy_(s)


def test_nonfinite_loss_raises_or_warns(tiny, synth):
    cfg, model = tiny
    batch = batch_from(cfg, synth, 'annotations/instances_train.json')
    data = model.data_preprocessor({k: v[:2] for k, v in batch.items()},
                                   True)
    forward = model.mask_head.loss_mask.forward
    model.mask_head.loss_mask.forward = \
        lambda *a, **k: forward(*a, **k) * float('nan')
    hub = MessageHub.get_instance('robustness_nan_test')
    hub.update_info('iter', 41)
    try:
        with pytest.raises(FloatingPointError,
                           match=r'loss_mask=nan at iteration 42'):
            model(**data, mode='loss')
        model.nonfinite_loss = 'warn'
        with pytest.warns(UserWarning, match='loss_mask=nan'):
            losses = model(**data, mode='loss')
        assert all(v.item() == 0. for k, v in losses.items() if 'loss' in k)
        model.zero_grad()
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        assert all(torch.isfinite(p.grad).all() and not p.grad.any()
                   for p in model.parameters() if p.grad is not None)
    finally:
        model.nonfinite_loss = 'raise'
        del model.mask_head.loss_mask.forward
        model.zero_grad()


# ------------------------------------------- NaN stops a real training run
class InjectInfHook(Hook):
    """Makes the mask loss infinite from iteration ``at_iter`` (0-based)."""

    def __init__(self, at_iter):
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            self.weights = {k: v.detach().clone()
                            for k, v in runner.model.state_dict().items()}
            loss = runner.model.mask_head.loss_mask
            forward = loss.forward
            loss.forward = lambda *a, **k: forward(*a, **k) * float('inf')


@pytest.fixture(scope='module')
def inf_run(synth, tmp_path_factory):
    from mmengine.runner import Runner
    cfg = tiny_cfg()
    cfg.work_dir = str(tmp_path_factory.mktemp('inf_run'))
    cfg.train_dataloader.update(batch_size=2, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = synth
    for key in ('val', 'test'):
        cfg[f'{key}_dataloader'] = cfg[f'{key}_cfg'] = None
        cfg[f'{key}_evaluator'] = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4,
                         val_interval=100)
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    hook = InjectInfHook(at_iter=2)
    runner.register_hook(hook)
    with pytest.raises(FloatingPointError) as exc:
        runner.train()
    return runner, hook, str(exc.value)


def test_nonfinite_loss_stops_training_before_backward(inf_run):
    runner, hook, message = inf_run
    assert 'loss_mask=inf at iteration 3' in message
    assert "nonfinite_loss='warn'" in message
    assert runner.iter == 2
    for k, v in runner.model.state_dict().items():
        torch.testing.assert_close(v, hook.weights[k], msg=k)
    with open(osp.join(runner.work_dir, 'last_checkpoint')) as f:
        assert f.read().endswith('iter_2.pth')


class ForeignObject:
    pass


def test_checkpoints_load_with_safe_loader_foreign_refused(inf_run, tmp_path):
    from mmdet.apis import init_detector
    runner, hook, _ = inf_run
    ckpt = osp.join(runner.work_dir, 'iter_2.pth')
    assert torch.load(ckpt)['meta']['iter'] == 2  # weights_only default
    model = init_detector(tiny_cfg(), ckpt, device='cpu')
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, hook.weights[k], msg=k)
    from embedmask_mmdet.models.utils.torch_compat import torch_version
    if torch_version() < (2, 6):
        return  # torch < 2.6 unpickles fully by default: nothing to refuse
    bad = str(tmp_path / 'foreign.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={},
                    payload=ForeignObject()), bad)
    with pytest.raises(pickle.UnpicklingError) as exc:
        init_detector(tiny_cfg(), bad, device='cpu')
    assert bad in str(exc.value) and 'ForeignObject' in str(exc.value)
    assert 'weights_only=False' in str(exc.value)


# ------------------------------------------------- checkpoint write faults
def run_helper(work_dir, max_iters, hook_type, max_keep, kill_at=None):
    cmd = [sys.executable, HELPERS, str(work_dir), str(max_iters), hook_type,
           str(max_keep)] + ([str(kill_at)] if kill_at else [])
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def read_last(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_kill_while_writing_checkpoint(tmp_path):
    atomic, plain = tmp_path / 'atomic', tmp_path / 'plain'
    # killed halfway through writing the 3rd checkpoint, keeping 1
    for work, hook in ((atomic, 'AtomicCheckpointHook'),
                       (plain, 'CheckpointHook')):
        proc = run_helper(work, 4, hook, 1, kill_at=3)
        assert proc.returncode == -9, proc.stderr[-2000:]
    # mmengine's hook deleted iter_2 first, then half-wrote iter_3
    assert not (plain / 'iter_2.pth').exists()
    assert checkpoint_problem(str(plain / 'iter_3.pth')) is not None
    with pytest.raises(RuntimeError, match='no complete checkpoint'):
        find_resume_checkpoint(str(plain))
    # the atomic hook left iter_2 complete and last_checkpoint pointing to it
    assert checkpoint_problem(str(atomic / 'iter_2.pth')) is None
    assert not (atomic / 'iter_3.pth').exists()
    assert (atomic / '.iter_3.pth.tmp').exists()
    assert read_last(atomic) == str(atomic / 'iter_2.pth')
    record = RecordStartIterHook()
    toy_runner(atomic, 4, max_keep_ckpts=1, resume=True,
               custom_hooks=[record]).train()
    assert record.start_iter == 2
    assert not (atomic / '.iter_3.pth.tmp').exists()  # cleaned up
    assert read_last(atomic) == str(atomic / 'iter_4.pth')
    assert not (atomic / 'iter_3.pth').exists()  # max_keep_ckpts=1
    assert torch.load(str(atomic / 'iter_4.pth'))['meta']['iter'] == 4


@pytest.fixture(scope='module')
def three_ckpts(tmp_path_factory):
    work = tmp_path_factory.mktemp('three')
    toy_runner(work, 3).train()
    return work


RESUME_CASES = {
    # scenario: (expected start iteration, warning expected)
    'clean': (3, None),
    'newest_missing': (2, 'missing'),
    'newest_truncated': (2, 'corrupt'),
    'no_last_checkpoint': (3, 'last_checkpoint is missing'),
    'stale_last_checkpoint': (3, 'newest complete'),
    'moved_work_dir': (3, None),
}


@pytest.mark.parametrize('case', list(RESUME_CASES))
def test_resume_picks_newest_complete_checkpoint(three_ckpts, tmp_path, logs,
                                                 case):
    work = tmp_path / 'work'
    shutil.copytree(three_ckpts, work)
    last = work / 'last_checkpoint'
    last.write_text(str(work / 'iter_3.pth'))
    newest = work / 'iter_3.pth'
    if case == 'newest_missing':
        newest.unlink()
    elif case == 'newest_truncated':
        newest.write_bytes(newest.read_bytes()[:500])
    elif case == 'no_last_checkpoint':
        last.unlink()
    elif case == 'stale_last_checkpoint':
        last.write_text(str(work / 'iter_2.pth'))
    elif case == 'moved_work_dir':
        last.write_text('/elsewhere/old_work_dir/iter_3.pth')
    start, warning = RESUME_CASES[case]
    record = RecordStartIterHook()
    toy_runner(work, 4, resume=True, custom_hooks=[record]).train()
    assert record.start_iter == start
    warned = [m for m in logs if 'AtomicCheckpointHook' in m]
    if warning is None:
        assert not warned
    else:
        assert any(warning in m for m in warned), warned


def test_explicit_resume_of_broken_checkpoint_is_refused(three_ckpts,
                                                        tmp_path):
    bad = tmp_path / 'iter_3.pth'
    bad.write_bytes((three_ckpts / 'iter_3.pth').read_bytes()[:500])
    with pytest.raises(RuntimeError, match='iter_3.pth.*corrupt'):
        toy_runner(tmp_path / 'w', 4, resume=True, load_from=str(bad)).train()


def test_cpu_config_uses_atomic_checkpoints_and_dist_timeout():
    cfg = Config.fromfile(CPU_CONFIG)
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert cfg.env_cfg.dist_cfg.timeout == 600
    from mmengine.registry import HOOKS
    from mmdet.registry import HOOKS as DET_HOOKS
    assert HOOKS.get('AtomicCheckpointHook') is AtomicCheckpointHook
    assert DET_HOOKS.get('AtomicCheckpointHook') is AtomicCheckpointHook
    lite = Config.fromfile(osp.join(
        ROOT, 'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py'))
    assert lite.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    ds = cfg.train_dataloader.dataset
    assert ds.type == 'RobustCocoDataset'
    assert ds.pipeline[0].type == 'RobustLoadImageFromFile'


# ------------------------------------------------- a rank dies mid-training
def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def dist_train(tmp_path, die, max_iters, timeout=120):
    env_cfg = Config.fromfile(CPU_CONFIG).env_cfg.to_dict()
    hooks = [dict(type='DieOnRankHook', rank=1, at_iter=2)] if die else []
    cfg = tmp_path / f'toy_dist_{die}.py'
    cfg.write_text(
        "custom_imports = dict(imports=['robustness_helpers', "
        "'embedmask_mmdet'], allow_failed_imports=False)\n"
        "default_scope = 'mmengine'\n"
        "model = dict(type='RobustnessToyModel')\n"
        "train_dataloader = dict(dataset=dict(type='RobustnessToyDataset'), "
        "batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', "
        "shuffle=False), collate_fn=dict(type='default_collate'))\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))\n"
        f"train_cfg = dict(by_epoch=False, max_iters={max_iters}, "
        "val_interval=1000)\n"
        "default_hooks = dict(logger=dict(type='LoggerHook', interval=1), "
        "checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, "
        "interval=1000))\n"
        f'custom_hooks = {hooks!r}\n'
        f'env_cfg = {env_cfg!r}\n')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable,
               PORT=str(free_port()),
               PYTHONPATH=os.pathsep.join(
                   [osp.join(ROOT, 'tests', 'test_robustness'), ROOT,
                    os.environ.get('PYTHONPATH', '')]))
    start = time.monotonic()
    proc = subprocess.Popen(
        ['bash', osp.join(ROOT, 'tools/dist_train.sh'), str(cfg), '2',
         '--work-dir', str(tmp_path / f'work_{die}')],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f'distributed job still running after {timeout} s:\n'
                    f'{out[-3000:]}')
    return proc.returncode, time.monotonic() - start, out


@pytest.mark.skipif(not torch.distributed.is_available(),
                    reason='torch.distributed not available')
def test_dead_rank_ends_distributed_job(tmp_path):
    rc, secs, out = dist_train(tmp_path, die=False, max_iters=3)
    assert rc == 0, out[-3000:]  # the control: the setup itself works
    rc, secs, out = dist_train(tmp_path, die=True, max_iters=200)
    assert 'DieOnRankHook: rank 1 exits at iteration 2' in out, out[-3000:]
    assert rc != 0 and secs < 120, (rc, secs, out[-3000:])
