"""mask_paste: p resampled to the output size, against a brute-force
bilinear reference; the region path against the whole-image path."""
import math
import os.path as osp

import numpy as np
import pytest
import torch

import embedmask_mmdet  # noqa: F401  (registers the heads and the loss)
from embedmask_mmdet.models.utils.aligned_paste import \
    paste_masks_aligned_bilinear
from embedmask_mmdet.models.utils.mask_paste import (crop_masks_to_boxes,
                                                     paste_masks)


def bilinear_reference(prob, stride, img_shape, out_shape):
    """Output pixel (v, u) samples the input at ((u + .5) img_w / out_w,
    (v + .5) img_h / out_h), i.e. cell coordinate (. / stride - .5), with
    bilinear weights and edge clamping; written with numpy loops."""
    prob = prob.double().numpy()
    n, hh, ww = prob.shape

    def taps(dst, img, out, size):
        src = max((dst + .5) * img / out / stride - .5, 0.)
        lo = min(int(math.floor(src)), size - 1)
        hi = min(lo + 1, size - 1)
        return lo, hi, src - lo if lo < size - 1 else 0.

    out = np.zeros((n, *out_shape))
    for v in range(out_shape[0]):
        y0, y1, ly = taps(v, img_shape[0], out_shape[0], hh)
        for u in range(out_shape[1]):
            x0, x1, lx = taps(u, img_shape[1], out_shape[1], ww)
            out[:, v, u] = (prob[:, y0, x0] * (1 - ly) * (1 - lx) +
                            prob[:, y0, x1] * (1 - ly) * lx +
                            prob[:, y1, x0] * ly * (1 - lx) +
                            prob[:, y1, x1] * ly * lx)
    return torch.from_numpy(out)


@pytest.mark.parametrize('stride,prob_shape,img_shape,out_shape', [
    (8, (100, 6), (800, 48), (402, 24)),    # unpadded, rounds down
    (8, (16, 20), (120, 150), (60, 75)),    # padded input, downscale
    (4, (32, 40), (120, 150), (150, 190)),  # upscale
    (8, (16, 20), (128, 160), (128, 160)),  # identity scale
])
def test_paste_masks_matches_bilinear_reference(stride, prob_shape, img_shape,
                                                out_shape):
    g = torch.Generator().manual_seed(15)
    prob = torch.rand(3, *prob_shape, generator=g)
    ref = bilinear_reference(prob, stride, img_shape, out_shape)
    for thr in (0.3, 0.5):
        for max_elements in (2**25, out_shape[0] * out_shape[1]):  # chunks
            for regions in (False, True):
                masks = paste_masks(prob, stride, img_shape, out_shape, thr,
                                    max_elements=max_elements,
                                    regions=regions)
                assert masks.shape == (3, *out_shape) and \
                    masks.dtype == torch.bool
                undecided = (ref - thr).abs() < 1e-5
                assert torch.equal(masks[~undecided], (ref > thr)[~undecided])


@pytest.mark.parametrize('stride,prob_shape,img_shape,out_shape', [
    (8, (16, 20), (128, 160), (128, 160)),  # identity scale
    (8, (16, 20), (120, 150), (97, 203)),   # padded, non-integer scales
    (4, (32, 40), (120, 150), (150, 190)),  # upscale
])
def test_paste_masks_regions_equal_whole_image(stride, prob_shape, img_shape,
                                               out_shape):
    """Blobs of every size (none above the threshold, a few cells, one cell
    at a border, most of the image) pasted only inside their support
    rectangles equal the whole-image path and the bilinear reference, with
    the box crop too."""
    h, w = prob_shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5,
                            indexing='ij')
    blobs = [(h / 2, w / 2, 0.3), (h / 3, w / 4, 1.5), (0., w - 1., 1.),
             (h / 2, w / 2, 3 * max(h, w)), (h / 2, w / 2, 1e-3),
             (h - 1., 2., 2.)]
    prob = torch.stack([torch.exp(-((ys - cy)**2 + (xs - cx)**2) / (2 * r * r))
                        for cy, cx, r in blobs])
    prob[4] *= 0.2  # nothing above any threshold
    ref = bilinear_reference(prob, stride, img_shape, out_shape)
    g = torch.Generator().manual_seed(2)
    centre = torch.rand(len(blobs), 2, generator=g) * torch.tensor(
        [out_shape[1], out_shape[0]])
    boxes = torch.cat([centre - 20, centre + 20], 1)
    for thr in (0.3, 0.5, 0.9):
        whole = paste_masks(prob, stride, img_shape, out_shape, thr,
                            regions=False)
        region = paste_masks(prob, stride, img_shape, out_shape, thr,
                             regions=True)
        assert torch.equal(region, whole)
        undecided = (ref - thr).abs() < 1e-5
        assert torch.equal(region[~undecided], (ref > thr)[~undecided])
        assert not region[4].any() and region[3].any()
        torch.testing.assert_close(
            paste_masks(prob, stride, img_shape, out_shape, thr, boxes, 3.,
                        regions=True),
            paste_masks(prob, stride, img_shape, out_shape, thr, boxes, 3.,
                        regions=False))


@pytest.mark.parametrize('max_elements,strip_elements',
                         [(2**21, 2**18), (3000, 2**18), (2**21, 50)])
def test_paste_masks_batched_regions_many_detections(max_elements,
                                                     strip_elements,
                                                     monkeypatch):
    """Many detections of mixed sizes, several sharing a size class and some
    touching the image border (windows shifted inside it), batched into one
    group or split by a small element budget, the vertical blend in one
    strip of rows or in strips of a row or a few: equal to the whole
    image."""
    from embedmask_mmdet.models.utils import mask_paste
    monkeypatch.setattr(mask_paste, 'STRIP_ELEMENTS', strip_elements)
    stride, prob_shape, img_shape, out_shape = 4, (30, 38), (118, 150), \
        (177, 225)
    h, w = prob_shape
    g = torch.Generator().manual_seed(5)
    num = 40
    cy = torch.rand(num, generator=g) * h
    cx = torch.rand(num, generator=g) * w
    cy[:4] = torch.tensor([0., h - 0.5, 3., h / 2])
    cx[:4] = torch.tensor([2., w / 2, w - 0.5, 0.])
    r = 0.5 + torch.rand(num, generator=g) * 3
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5,
                            indexing='ij')
    prob = torch.exp(-((ys - cy[:, None, None])**2 +
                       (xs - cx[:, None, None])**2) /
                     (2 * r[:, None, None]**2))
    for thr in (0.2, 0.5):
        whole = paste_masks(prob, stride, img_shape, out_shape, thr,
                            regions=False)
        region = paste_masks(prob, stride, img_shape, out_shape, thr,
                             max_elements=max_elements, regions=True)
        assert whole.flatten(1).any(dim=1).all()  # torch 2.1: one dim
        assert torch.equal(region, whole)


@pytest.mark.parametrize('max_elements', [None, 1, 13 * 17 * 3, 10**9])
def test_crop_masks_to_boxes_matches_pixel_loop(max_elements):
    """The crop, whole or in chunks of masks (one mask, three, all):
    a pixel stays foreground iff its centre lies in the box widened by the
    padding, checked pixel by pixel; masks are cleared in place."""
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(7, 13, 17, generator=g) > 0.3
    boxes = torch.rand(7, 4, generator=g) * 12
    boxes[:, 2:] += boxes[:, :2]
    pad = 1.5
    expected = masks.clone()
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for i in range(13):
            for j in range(17):
                if not (x1 - pad <= j + 0.5 <= x2 + pad and
                        y1 - pad <= i + 0.5 <= y2 + pad):
                    expected[n, i, j] = False
    got = masks.clone()
    out = crop_masks_to_boxes(got, boxes, pad, max_elements)
    assert out is got and torch.equal(got, expected)
    assert expected.sum() < masks.sum()  # the boxes do crop


@pytest.mark.parametrize('placement', ['mmdet', 'adelaidet'])
def test_crop_in_windows_equals_crop_of_whole_masks(placement):
    """The crop to boxes, applied inside each detection's window (both
    placements, region and whole-image paths), equals
    ``crop_masks_to_boxes`` on the uncropped masks."""
    stride, prob_shape, img_shape, out_shape = 4, (30, 38), (118, 150), \
        (177, 225)
    g = torch.Generator().manual_seed(11)
    prob = torch.nn.functional.avg_pool2d(
        torch.rand(9, 1, *prob_shape, generator=g), 5, 1, 2)[:, 0]
    prob = prob * torch.linspace(0.8, 2.2, 9)[:, None, None]  # one ~whole
    centre = torch.rand(9, 2, generator=g) * torch.tensor(
        [out_shape[1], out_shape[0]])
    boxes = torch.cat([centre - 30, centre + 30], 1).clamp(min=0)
    for thr in (0.5, 0.8):
        if placement == 'adelaidet':
            def paste(b=None):
                return paste_masks_aligned_bilinear(
                    prob, stride, img_shape, out_shape, thr, b, 2.5)
            cases = [paste]
        else:
            cases = [lambda b=None, r=r: paste_masks(
                prob, stride, img_shape, out_shape, thr, b, 2.5, regions=r)
                for r in (True, False)]
        for paste in cases:
            whole = paste()
            cropped = paste(boxes)
            assert whole.any() and torch.equal(
                cropped, crop_masks_to_boxes(whole.clone(), boxes, 2.5))
            assert cropped.sum() < whole.sum()


def _resident_mb(tensor: torch.Tensor) -> float:
    """Resident memory of the mapping that holds ``tensor`` (smaps' Rss)."""
    address = tensor.data_ptr()
    with open('/proc/self/smaps') as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if '-' in head and not head.endswith(':'):
                start, end = (int(v, 16) for v in head.split('-'))
                inside = start <= address < end
            elif inside and head == 'Rss:':
                return int(line.split()[1]) / 1024
    raise AssertionError('no mapping holds the tensor')


@pytest.mark.skipif(not osp.exists('/proc/self/smaps'),
                    reason='reads the mapping\'s Rss from /proc')
@pytest.mark.parametrize('placement', ['mmdet', 'adelaidet'])
def test_large_image_masks_hold_memory_of_their_regions(placement):
    """20 small blobs pasted onto a 2000x2000 output: the 80 MB of masks
    are untouched zero pages outside the blobs' windows, so the masks'
    mapping holds only their rows' pages (well under a quarter of 80 MB:
    each window spans < 1/8 of the rows), and the masks read as
    zeros there."""
    h = w = 500
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5,
                            indexing='ij')
    cy = torch.linspace(40, 460, 20)
    cx = torch.linspace(460, 40, 20)
    prob = torch.exp(-((ys - cy[:, None, None])**2 +
                       (xs - cx[:, None, None])**2) / (2 * 6.**2))
    paste = paste_masks_aligned_bilinear if placement == 'adelaidet' else \
        paste_masks
    masks = paste(prob, 4, (2000, 2000), (2000, 2000), 0.5)
    resident = _resident_mb(masks)
    dense_mb = masks.numel() / 2**20
    assert masks.shape == (20, 2000, 2000) and masks.flatten(1).any(1).all()
    assert resident < dense_mb / 4, (resident, dense_mb)
    # a blob's mask stays near its centre: zero pages read as background
    assert not masks[0, 1000:].any() and not masks[-1, :1000].any()
