"""Device mistakes caught on a CPU: tensors that the heads create without
saying where, and gt masks rasterised more than once per image and step.

On a CPU-only machine a tensor made without ``device=`` lands on the right
device by accident; on a GPU the same line makes a CPU tensor next to CUDA
ones (an error, or a silent host copy every step). The recorder below sees
every ``torch.*`` factory call made from our library code during a training
step and a predict of every design, and fails on any without a device.
"""
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmdet.structures.mask import PolygonMasks
from torch.overrides import TorchFunctionMode

import embedmask_mmdet
from heads_common import (DESIGNS, THREE_GTS, build_heads,  # noqa: E402
                          make_sample, predict, pyramid, run_losses)

LIBRARY = osp.dirname(osp.abspath(embedmask_mmdet.__file__))
FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.full, torch.empty,
    torch.tensor, torch.as_tensor, torch.linspace, torch.eye, torch.rand,
    torch.randn, torch.randint, torch.randperm, torch.empty_strided,
    torch.scalar_tensor, torch.tril_indices, torch.triu_indices,
}


class DevicelessFactoryCalls(TorchFunctionMode):
    """Records ``torch.<factory>(...)`` calls without ``device=`` whose
    caller is a file of the installed library."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get('device') is None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(
                    osp.dirname(torch.__file__)):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(
                    LIBRARY):
                self.calls.append(
                    f'torch.{func.__name__} at '
                    f'{osp.relpath(frame.f_code.co_filename, LIBRARY)}:'
                    f'{frame.f_lineno}')
        return func(*args, **kwargs)


def test_recorder_sees_a_deviceless_factory_call():
    """The recorder itself: a call from library code is seen, one with a
    device is not (else the tests below could not fail)."""
    from embedmask_mmdet.models.utils import embedding
    with DevicelessFactoryCalls() as rec:
        embedding.location_map(2, 3, 8, device=torch.device('cpu'))
    assert rec.calls == []
    with DevicelessFactoryCalls() as rec:
        embedding.location_map(2, 3, 8)  # device=None: a CPU tensor
    assert len(rec.calls) == 2 and 'embedding.py' in rec.calls[0], rec.calls


def samples_with_polygons():
    """Two images whose gts are PolygonMasks, as COCO annotations load."""
    out = []
    for shift in (0, 6):
        sample = make_sample(THREE_GTS)
        polys = [[np.array([x1 + shift, y1, x2, y1, x2, y2, x1 + shift, y2],
                           np.float64)] for x1, y1, x2, y2 in THREE_GTS]
        sample.gt_instances.masks = PolygonMasks(polys, 128, 160)
        out.append(sample)
    return out


@pytest.mark.parametrize('design', sorted(DESIGNS))
def test_heads_create_every_tensor_on_the_input_device(design):
    torch.manual_seed(0)
    bbox_head, mask_head = build_heads(design)
    x = pyramid(batch=2)
    with DevicelessFactoryCalls() as rec:
        losses, _ = run_losses(bbox_head, mask_head, x,
                               samples_with_polygons())
        sum(losses.values()).backward()
        predict(bbox_head, mask_head, x, samples_with_polygons())
    assert rec.calls == [], '\n'.join(sorted(set(rec.calls)))


def test_gt_masks_are_rasterised_once_per_image_and_step(monkeypatch):
    """Centre sampling on the mask centroid, positives inside the mask, the
    mask loss and the semantic targets all use the gt masks: one
    rasterisation of each image's polygons serves them all."""
    calls = []
    original = PolygonMasks.to_ndarray

    def counting(self):
        calls.append(id(self))
        return original(self)

    monkeypatch.setattr(PolygonMasks, 'to_ndarray', counting)
    monkeypatch.setattr(PolygonMasks, 'to_tensor', lambda self, dtype, device:
                        torch.from_numpy(counting(self)).to(dtype=dtype,
                                                            device=device))
    bbox_head, mask_head = build_heads(
        'default', bbox_overrides=dict(center_sample_on='mask',
                                       sample_in_mask=True))
    assert mask_head.loss_semantic is not None
    samples = samples_with_polygons()
    losses, _ = run_losses(bbox_head, mask_head, pyramid(batch=2), samples)
    assert losses['loss_mask'] > 0 and losses['loss_semantic'] > 0
    assert len(calls) == 2 and len(set(calls)) == 2, calls
    # and the cached masks are those of a fresh rasterisation
    from embedmask_mmdet.models.utils import gt_mask_tensor
    for sample in samples:
        got = gt_mask_tensor(sample.gt_instances, 'cpu')
        want = torch.from_numpy(original(sample.gt_instances.masks)).bool()
        assert torch.equal(got, want)
    assert len(calls) == 2


def test_cached_gt_masks_follow_a_replaced_masks_field():
    from embedmask_mmdet.models.utils import gt_mask_tensor
    sample = samples_with_polygons()[0]
    first = gt_mask_tensor(sample.gt_instances, 'cpu')
    sample.gt_instances.masks = sample.gt_instances.masks.flip('horizontal')
    second = gt_mask_tensor(sample.gt_instances, 'cpu')
    assert torch.equal(second, first.flip(-1))
