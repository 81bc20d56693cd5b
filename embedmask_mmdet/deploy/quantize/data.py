"""What the quantizer reads besides the graph: calibration images (a
folder, or the config's train split), their graph inputs as the runtime
prepares them, and the test set's segm AP for accuracy control."""
import copy
import json
import os
import os.path as osp
import random
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from .onnx_graph import QuantizeError


def _list_images(folder: str) -> List[str]:
    from ...utils.image_io import IMG_EXTENSIONS
    return sorted(osp.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMG_EXTENSIONS))


def calibration_images(config=None, calib_dir: Optional[str] = None
                       ) -> List[str]:
    """Image files for calibration: ``calib_dir``'s images, or else the
    config's train split (``train_dataloader.dataset``: the images its
    COCO ann_file lists under data_root / data_prefix.img, or that
    folder's images)."""
    from ...utils.image_io import IMG_EXTENSIONS
    if calib_dir is not None:
        if not osp.isdir(calib_dir):
            raise QuantizeError(
                f'--calib-dir {calib_dir!r}: no such folder; pass a folder '
                'of calibration images (a few dozen training images), or '
                'leave it out to use the config\'s train split')
        files = _list_images(calib_dir)
        if not files:
            raise QuantizeError(
                f'--calib-dir {calib_dir!r} holds no images '
                f'({", ".join(IMG_EXTENSIONS)}); pass a folder of training '
                'images')
        return files
    if config is None:
        raise QuantizeError('no calibration images: pass --calib-dir DIR, '
                            'or a CONFIG whose train_dataloader names its '
                            'images')
    dataset = _train_dataset(config)
    data_root = dataset.get('data_root') or ''
    prefix = (dataset.get('data_prefix') or {}).get('img', '') or ''
    img_dir = osp.join(data_root, prefix)
    ann_file = dataset.get('ann_file')
    files = []
    if ann_file:
        path = ann_file if osp.isabs(ann_file) else osp.join(data_root,
                                                             ann_file)
        if osp.isfile(path):
            with open(path) as f:
                listed = json.load(f).get('images', [])
            files = [osp.join(img_dir, im['file_name']) for im in listed]
            files = [f for f in files if osp.isfile(f)]
    if not files and osp.isdir(img_dir):
        files = _list_images(img_dir)
    if not files:
        raise QuantizeError(
            f'the config\'s train split ({ann_file or "no ann_file"}, '
            f'images under {img_dir!r}) has no images here; pass --calib-dir '
            'DIR, or run from the directory that its data_root is relative '
            'to')
    return files


def _load_config(config):
    from mmengine.config import Config
    if config is None or isinstance(config, Config):
        return config
    if not osp.isfile(str(config)):
        raise QuantizeError(f'CONFIG {config!r}: no such file')
    return Config.fromfile(config)


def _train_dataset(config) -> dict:
    cfg = _load_config(config)
    dataset = cfg.get('train_dataloader', {}).get('dataset', {})
    # wrappers (RepeatDataset, ConcatDataset, ...) hold the real one
    while 'dataset' in dataset or 'datasets' in dataset:
        dataset = dataset.get('dataset') or dataset['datasets'][0]
    return dataset


def sample_images(files: Sequence, num_images: int, seed: int = 0
                  ) -> list:
    """``num_images`` of ``files`` (all of them when fewer): a seeded
    random sample, in file order."""
    if int(num_images) <= 0:
        raise QuantizeError(f'--num-images {num_images}: must be > 0')
    if len(files) <= num_images:
        return list(files)
    keep = sorted(random.Random(seed).sample(range(len(files)), num_images))
    return [files[i] for i in keep]


def calibration_feeds(model_file: str, images: Sequence, config=None
                      ) -> List[Dict[str, np.ndarray]]:
    """The graph's inputs for each image, prepared by the runtime
    (``EmbedMaskONNXModel``): the config's test pipeline, its data
    preprocessor, zero padding up to a fixed-shape graph's size. Images
    keep their own (padded) sizes: ONNX Runtime and NNCF calibrate per
    image. Unreadable files are skipped with a warning."""
    import torch

    from ...utils.image_io import UnreadableImage
    from ..runtime import EmbedMaskONNXModel
    runtime = EmbedMaskONNXModel(model_file, 'onnxruntime',
                                 config=_load_config(config))
    feeds = []
    for item in images:
        try:
            data = runtime.prepare(item)
        except UnreadableImage as e:
            warnings.warn(f'calibration: skipped {e}')
            continue
        with torch.no_grad():
            data = runtime.data_preprocessor(data, False)
        try:
            feeds.append(runtime.graph_inputs(
                data['inputs'][:1].numpy(),
                data['data_samples'][0].img_shape))
        except ValueError as e:  # larger than a fixed-shape graph
            path = item if isinstance(item, str) else '(array)'
            raise QuantizeError(f'calibration image {path}: {e}')
    if not feeds:
        raise QuantizeError('none of the calibration images could be read; '
                            'pass --calib-dir DIR with readable images')
    return feeds


# -------------------------------------------------------------- evaluation
class SegmAP:
    """COCO segm mAP (the config's test dataloader and evaluator) of an
    .onnx run by ``EmbedMaskONNXModel``: ``SegmAP(config)(model_file)``;
    ``indices`` restricts it to those images of the test set (NNCF's
    accuracy control ranks its quantizers on subsets)."""

    def __init__(self, config, backend: str = 'onnxruntime',
                 metric: str = 'coco/segm_mAP') -> None:
        from mmengine.registry import init_default_scope
        from mmengine.runner import Runner
        self.cfg = _load_config(config)
        init_default_scope(self.cfg.get('default_scope', 'mmdet'))
        self.backend, self.metric = backend, metric
        loader = Runner.build_dataloader(self.cfg.test_dataloader)
        self.metainfo = loader.dataset.metainfo
        self.batches = [copy.deepcopy(data) for data in loader]

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, model_file: str, indices=None) -> float:
        from mmengine.evaluator import Evaluator

        from ..runtime import EmbedMaskONNXModel
        runtime = EmbedMaskONNXModel(model_file, self.backend, config=self.cfg)
        evaluator = Evaluator(self.cfg.test_evaluator)
        evaluator.dataset_meta = self.metainfo
        batches = self.batches if indices is None else \
            [self.batches[int(i)] for i in indices]
        if indices is not None:
            ids = [s.img_id for b in batches for s in b['data_samples']]
            for metric in evaluator.metrics:
                if hasattr(metric, 'img_ids'):  # CocoMetric: only these
                    metric.img_ids = ids
        count = 0
        for data in batches:
            # copied: a runtime's outputs may be views of its buffers, which
            # the next inference overwrites (CocoMetric keeps views of them)
            samples = copy.deepcopy(runtime.predict_batch(copy.deepcopy(data)))
            evaluator.process(data_samples=samples, data_batch=data)
            count += len(samples)
        return float(evaluator.evaluate(count)[self.metric])

