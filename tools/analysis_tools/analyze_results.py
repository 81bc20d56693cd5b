"""mmdet's ``tools/analysis_tools/analyze_results.py`` on our configs.

    python tools/analysis_tools/analyze_results.py CONFIG RESULTS.pkl SHOW_DIR
        [mmdet's options: --show-score-thr, --topk, --cfg-options ...]

mmdet's script keeps the train pipeline's loading steps by exact class
(``get_loading_pipeline``), so our ``RobustLoadImageFromFile`` (a
``LoadImageFromFile`` that skips bad images with a count) makes it stop
with "must include loading image and annotations related pipeline". This
runs mmdet's own script with subclasses of the loading transforms
accepted; nothing else changes. RESULTS.pkl comes from
``tools/test.py CONFIG CKPT --out RESULTS.pkl``.
"""
import os.path as osp
import runpy
import sys

import mmdet
import mmdet.datasets
from mmcv.transforms import LoadImageFromFile
from mmdet.datasets.transforms import (LoadAnnotations,
                                       LoadPanopticAnnotations)
from mmdet.registry import TRANSFORMS

import embedmask_mmdet  # noqa: F401  (registers RobustLoadImageFromFile)

LOADERS = (LoadImageFromFile, LoadAnnotations, LoadPanopticAnnotations)
SCRIPT = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                  'analysis_tools', 'analyze_results.py')


def get_loading_pipeline(pipeline):
    """mmdet's function, with subclasses of the loaders kept too."""
    steps = []
    for cfg in pipeline:
        cls = TRANSFORMS.get(cfg['type'])
        if isinstance(cls, type) and issubclass(cls, LOADERS):
            steps.append(cfg)
    if len(steps) != 2:
        raise ValueError(
            'the config\'s train pipeline must have one image-loading step '
            'and one LoadAnnotations step (found: '
            f'{[s["type"] for s in steps]})')
    return steps


def main():
    if not osp.isfile(SCRIPT):
        sys.exit(f'error: {SCRIPT} not found: mmdet was installed without '
                 'its .mim tools')
    mmdet.datasets.get_loading_pipeline = get_loading_pipeline
    sys.argv[0] = SCRIPT
    runpy.run_path(SCRIPT, run_name='__main__')


if __name__ == '__main__':
    main()
