"""COCO dataset that validates its annotation file and says what it dropped.

mmdet's ``CocoDataset`` silently drops some bad annotations (box outside the
image, area <= 0, unknown category), crashes later on others (a missing
``segmentation``, an RLE of the wrong size) and only asserts on duplicate ids.
:class:`RobustCocoDataset` checks every annotation once at init and, per
``bad_annotation``, skips it with a logged count or raises naming the file,
the annotation id and the field.
"""
import copy
import logging
import os.path as osp
from collections import Counter
from typing import List, Optional

import numpy as np
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from pycocotools import mask as mask_util

POLICIES = ('skip', 'error')
SELF_INTERSECTING = ('keep', 'skip', 'error', 'ignore')
MAX_IDS_LOGGED = 10

# reason -> the annotation field it is about
FIELDS = dict(
    **dict.fromkeys(('malformed bbox', 'negative bbox width/height',
                     'bbox smaller than 1 px', 'bbox outside the image'),
                    'bbox'),
    **dict.fromkeys(('missing segmentation', 'polygon < 3 points',
                     'malformed segmentation', 'zero area',
                     'self-intersecting polygon'), 'segmentation'),
    **{'unknown category_id': 'category_id',
       'image_id not in images': 'image_id'})


def _is_number(v) -> bool:
    return (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            and np.isfinite(v))


def polygon_self_intersects(poly: List[float]) -> bool:
    """Whether two non-adjacent edges of a closed polygon properly cross.

    O(n^2) vectorised orientation tests (~0.1 ms for a 50-point polygon);
    edges that only touch or overlap collinearly do not count.
    """
    a = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    n = len(a)
    if n < 4:
        return False
    d = np.roll(a, -1, axis=0) - a

    def sides(c):  # side of point c[j] w.r.t. edge i, (n, n)
        v = c[None] - a[:, None]
        return d[:, None, 0] * v[..., 1] - d[:, None, 1] * v[..., 0]

    crosses = sides(a) * sides(np.roll(a, -1, axis=0)) < 0
    both = crosses & crosses.T
    gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None])
    return bool((both & (gap > 1) & (gap < n - 1)).any())


@DATASETS.register_module()
class RobustCocoDataset(CocoDataset):
    """``CocoDataset`` that validates images and annotations at init.

    Args:
        bad_annotation (str): 'skip' (default): drop a bad annotation and
            count it; 'error': raise ``ValueError`` naming the file, the
            annotation id and the field. Bad: bbox not 4 finite numbers,
            negative or < 1 px width/height, wholly outside the image;
            ``category_id`` not in ``categories``; no segmentation; every
            polygon with < 3 points; zero area; an RLE of another size;
            ``image_id`` not in ``images``.
        missing_image (str, optional): 'skip' drops images whose file does
            not exist (``os.path.exists``, local paths only); 'error' raises.
            Default None: 'error' in ``test_mode`` (CocoMetric would count
            the dropped image's objects as missed), else 'skip'.
        self_intersecting (str): 'keep' (default: counted and kept; mmdet and
            COCO rasterise them with pycocotools), 'skip', 'error', or
            'ignore' (no check, saves ~0.1 ms per polygon at init).

    Always fixed and counted: bboxes partly outside the image are clipped;
    polygon parts with < 3 points are dropped when others remain. Always an
    error: duplicate annotation or image ids. ``iscrowd=1`` annotations get
    ``ignore_flag=1`` (not trained, as in mmdet). Categories present in
    ``categories`` but not in ``metainfo['classes']`` are dropped silently.
    ``self.robust_stats`` holds the counts after init.
    """

    def __init__(self, *args, bad_annotation: str = 'skip',
                 missing_image: Optional[str] = None,
                 self_intersecting: str = 'keep', **kwargs) -> None:
        for name, value, choices in (
                ('bad_annotation', bad_annotation, POLICIES),
                ('missing_image', missing_image, POLICIES + (None, )),
                ('self_intersecting', self_intersecting, SELF_INTERSECTING)):
            if value not in choices:
                raise ValueError(f'RobustCocoDataset: {name}={value!r} is not '
                                 f'supported; use one of {choices}')
        self.bad_annotation = bad_annotation
        self.self_intersecting = self_intersecting
        self._missing_image = missing_image
        self.robust_stats = None
        super().__init__(*args, **kwargs)

    @property
    def missing_image(self) -> str:
        if self._missing_image is not None:
            return self._missing_image
        return 'error' if self.test_mode else 'skip'

    # ------------------------------------------------------------ loading
    def load_data_list(self) -> List[dict]:
        """mmdet's, with the raw lists validated first and bad entries
        skipped or reported."""
        self.robust_stats = dict(skipped=Counter(), fixed=Counter(),
                                 offending_ids=[], missing_images=[],
                                 crowd=0, other_classes=0)
        with get_local_path(self.ann_file,
                            backend_args=self.backend_args) as local_path:
            self.coco = self.COCOAPI(local_path)
        self._check_raw()
        self.cat_ids = self.coco.get_cat_ids(
            cat_names=self.metainfo['classes'])
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.cat_img_map = copy.deepcopy(self.coco.cat_img_map)
        data_list = []
        for img_id in self.coco.get_img_ids():
            raw_img_info = self.coco.load_imgs([img_id])[0]
            raw_img_info['img_id'] = img_id
            raw_ann_info = self.coco.load_anns(
                self.coco.get_ann_ids(img_ids=[img_id]))
            info = self.parse_data_info(dict(raw_ann_info=raw_ann_info,
                                             raw_img_info=raw_img_info))
            if info is not None:
                data_list.append(info)
        del self.coco
        self._log_summary()
        return data_list

    def _check_raw(self) -> None:
        raw = self.coco.dataset
        for key, what in (('annotations', 'annotation'), ('images', 'image')):
            ids = Counter(item.get('id') for item in raw.get(key, []))
            dup = sorted((i for i, c in ids.items() if c > 1), key=str)
            if dup:
                raise ValueError(
                    f'{self.ann_file}: duplicate {what} ids '
                    f'{dup[:MAX_IDS_LOGGED]} ({len(dup)} in all) in field '
                    f'"{key}[].id"; ids must be unique, renumber them')
        self._known_cats = set(self.coco.cats)
        for ann in raw.get('annotations', []):
            if ann.get('image_id') not in self.coco.imgs:
                self._bad(ann, 'image_id not in images', ann.get('image_id'))

    def parse_data_info(self, raw_data_info: dict) -> Optional[dict]:
        img = raw_data_info['raw_img_info']
        for field in ('file_name', 'width', 'height'):
            if field not in img:
                raise ValueError(f'{self.ann_file}: image id {img.get("id")} '
                                 f'has no field "{field}"; add it')
        img_path = osp.join(self.data_prefix['img'], img['file_name'])
        if not self._exists(img_path):
            if self.missing_image == 'error':
                raise FileNotFoundError(
                    f'{self.ann_file}: image id {img["img_id"]}: file_name '
                    f'{img["file_name"]!r} not found at {img_path!r}; restore '
                    'the file, remove the image from the annotation file, or '
                    "set missing_image='skip' on the dataset")
            self.robust_stats['missing_images'].append(img_path)
            return None
        anns = [self._check_ann(a, img) for a in raw_data_info['raw_ann_info']]
        anns = [a for a in anns if a is not None]
        return super().parse_data_info(
            dict(raw_img_info=img, raw_ann_info=anns))

    def _exists(self, path: str) -> bool:
        if self.backend_args is not None or '://' in path:
            return True  # remote: leave it to the loading transform
        return osp.exists(path)

    def filter_data(self) -> List[dict]:
        """mmdet's filter, on the annotations that survived validation."""
        if self.test_mode or self.filter_cfg is None:
            return self.data_list
        empty = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        return [d for d in self.data_list
                if not (empty and not d['instances'])
                and min(d['width'], d['height']) >= min_size]

    def prepare_data(self, idx: int):
        data = super().prepare_data(idx)
        if data is None and self.test_mode:
            path = self.get_data_info(idx)['img_path']
            raise RuntimeError(
                f'{path}: the pipeline returned None (an image skipped as '
                'corrupt?); a test set cannot skip images: fix the file or '
                "use on_corrupt='error'")
        return data

    # --------------------------------------------------------- validation
    def _bad(self, ann: dict, reason: str, value=None) -> None:
        option = ('self_intersecting' if reason.startswith('self')
                  else 'bad_annotation')
        if getattr(self, option) == 'error':
            if len(repr(value)) > 80:
                value = repr(value)[:77] + '...'
            raise ValueError(
                f'{self.ann_file}: annotation id {ann.get("id")} (image id '
                f'{ann.get("image_id")}): field "{FIELDS[reason]}": {reason} '
                f'({value!r}); fix or remove the annotation, or set '
                f"{option}='skip' on the dataset to skip such annotations "
                'with a logged count')
        self.robust_stats['skipped'][reason] += 1
        if len(self.robust_stats['offending_ids']) < MAX_IDS_LOGGED:
            self.robust_stats['offending_ids'].append(ann.get('id'))

    def _check_ann(self, ann: dict, img: dict) -> Optional[dict]:
        """The annotation (bbox clipped, bad polygon parts dropped) or None."""
        if ann.get('ignore', False):
            return None
        w_img, h_img = img['width'], img['height']
        bbox = ann.get('bbox')
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(_is_number(v) for v in bbox)):
            return self._bad(ann, 'malformed bbox', bbox)
        x, y, w, h = bbox
        if w < 0 or h < 0:
            return self._bad(ann, 'negative bbox width/height', bbox)
        if w < 1 or h < 1:
            return self._bad(ann, 'bbox smaller than 1 px', bbox)
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + w, w_img), min(y + h, h_img)
        if x2 - x1 < 1 or y2 - y1 < 1:  # mmdet drops < 1 px boxes
            return self._bad(ann, 'bbox outside the image', bbox)
        cat = ann.get('category_id')
        if cat not in self._known_cats:
            return self._bad(ann, 'unknown category_id', cat)
        if cat not in self.cat_ids:
            self.robust_stats['other_classes'] += 1
            return None
        seg = ann.get('segmentation')
        if not seg:
            return self._bad(ann, 'missing segmentation', seg)
        ann = dict(ann)
        if isinstance(seg, list):
            ok = [p for p in seg if isinstance(p, (list, tuple))
                  and len(p) >= 6 and len(p) % 2 == 0
                  and all(_is_number(v) for v in p)]
            if not ok:
                return self._bad(ann, 'polygon < 3 points', seg)
            if len(ok) < len(seg):
                self.robust_stats['fixed'][
                    'polygon parts < 3 points dropped'] += len(seg) - len(ok)
                ann['segmentation'] = ok
            # pycocotools' rasterisation (as COCO and mmdet decode it)
            rles = mask_util.frPyObjects([list(map(float, p)) for p in ok],
                                         h_img, w_img)
            if not mask_util.area(rles).any():
                return self._bad(ann, 'zero area', seg)
            if self.self_intersecting != 'ignore' and any(
                    polygon_self_intersects(p) for p in ok):
                if self.self_intersecting == 'keep':
                    self.robust_stats['fixed'][
                        'self-intersecting polygons kept'] += 1
                else:
                    return self._bad(ann, 'self-intersecting polygon', seg)
        elif isinstance(seg, dict):
            size = seg.get('size')
            if (not isinstance(seg.get('counts'), (list, str))
                    or list(size or []) != [h_img, w_img]):
                return self._bad(ann, 'malformed segmentation',
                                 dict(size=size))
            rle = mask_util.frPyObjects(seg, h_img, w_img) \
                if isinstance(seg['counts'], list) else seg
            if int(mask_util.area(rle)) == 0:
                return self._bad(ann, 'zero area', dict(size=size))
        else:
            return self._bad(ann, 'malformed segmentation', seg)
        if 'area' not in ann:
            self.robust_stats['fixed']['missing area set to bbox area'] += 1
            ann['area'] = float(w * h)
        if not _is_number(ann['area']) or ann['area'] <= 0:
            return self._bad(ann, 'zero area', ann['area'])
        if x < 0 or y < 0 or x + w > w_img or y + h > h_img:
            self.robust_stats['fixed']['bboxes clipped to the image'] += 1
            ann['bbox'] = [x1, y1, x2 - x1, y2 - y1]
        if ann.get('iscrowd', False):
            self.robust_stats['crowd'] += 1
        return ann

    def _log_summary(self) -> None:
        s = self.robust_stats
        skipped = sum(s['skipped'].values())
        parts = [f'{self.__class__.__name__}: skipped {skipped} annotations'
                 + (' (' + ', '.join(f'{n} {r}' for r, n in
                                     s['skipped'].most_common()) + ')'
                    if skipped else '') + f' in {self.ann_file}']
        if skipped:
            parts.append(f'first offending annotation ids: '
                         f'{s["offending_ids"]}')
        if s['fixed']:
            parts.append('kept: ' + ', '.join(
                f'{n} {r}' for r, n in s['fixed'].most_common()))
        if s['missing_images']:
            shown = s['missing_images'][:3]
            parts.append(f'skipped {len(s["missing_images"])} images whose '
                         f'file is missing (first: {shown})')
        if s['crowd']:
            parts.append(f'{s["crowd"]} iscrowd=1 annotations get '
                         'ignore_flag=1 (not trained)')
        self.robust_summary = '; '.join(parts)
        bad = skipped or s['missing_images']
        print_log(self.robust_summary, logger='current',
                  level=logging.WARNING if bad else logging.INFO)
