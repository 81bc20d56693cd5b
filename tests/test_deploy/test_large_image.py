"""The large-photo comparison of ``make bench`` (tools/analysis_tools/
benchmark/large_image.py) end to end on the overfit model: both contracts
exported, every path measured in rounds of fresh processes, the same
detections and masks from each, and the report's table and verdict."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest


@pytest.mark.slow
def test_large_image_rounds_measure_every_path(overfit, tmp_path):
    # tools/ is on sys.path (tests/conftest.py)
    from analysis_tools.benchmark import large_image
    from analysis_tools.benchmark.deploy_report import large_image_lines
    image = str(tmp_path / 'src.png')
    train = osp.join(overfit['cfg'].test_dataloader.dataset.data_root,
                     'train')
    cv2.imwrite(image, cv2.imread(osp.join(train, sorted(os.listdir(
        train))[0])))
    size = (300, 400)
    logs = []
    result = large_image.run(overfit['config'], overfit['ckpt'], image,
                             str(tmp_path / 'work'), size=size,
                             log=logs.append, rounds=2)
    assert result['rounds'] == 2 and len(
        [line for line in logs if ', round ' in line]) == 2 * len(
            large_image.PATHS)
    rows = result['rows']
    assert set(rows) == set(large_image.PATHS)
    dets = {path: row['detections'] for path, row in rows.items()}
    assert min(dets.values()) > 0 and len(set(dets.values())) == 1, dets
    for path, row in rows.items():
        assert len(row['rounds']) == 2 and row['mask_shape'][1:] == \
            list(size)
        # each figure is the median over the rounds' own processes
        assert row['peak_rss_mb'] == np.median(
            [r['peak_rss_mb'] for r in row['rounds']])
        assert row['peak_rss_mb'] >= row['rss_after_load_mb'] > 0
    pixels = [row['mask_pixels'] for row in rows.values()]
    assert max(pixels) - min(pixels) <= 0.01 * max(pixels), pixels
    lines = '\n'.join(large_image_lines(result))
    assert '2 rounds' in lines and 'Target:' in lines
    assert all(path in lines for path in large_image.PATHS)
