"""Training targets and test-time placement of p agree to the half pixel.

A model that reproduces its training targets exactly must give masks where
the objects are. For gt disks (radius 6/10/30 px) at 64 sub-cell positions
evenly covering a stride-4 cell, the targets are taken as p and pasted to
full resolution by the test path: the mean centroid error (the systematic
shift) must stay within 0.05 px. The per-disk error is the quantisation of a
binary stride-4 target (up to ~1.3 px at radius 6), the same in the authors'
code, and averages out.
"""
import pytest
import torch

from embedmask_mmdet.models.utils.aligned_paste import \
    paste_masks_aligned_bilinear
from embedmask_mmdet.models.utils.mask_paste import paste_masks
from embedmask_mmdet.models.utils.mask_targets import (cell_targets,
                                                       upsample_prob)

SIZE = 160
STRIDE = 4


def disk(cx: float, cy: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5,
                            torch.arange(SIZE) + 0.5, indexing='ij')
    return (xs - cx)**2 + (ys - cy)**2 <= r * r


def centroid(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.double().mean(), ys.double().mean()]) + 0.5


def paste(prob: torch.Tensor, placement: str) -> torch.Tensor:
    if placement == 'adelaidet':
        return paste_masks_aligned_bilinear(prob, STRIDE, (SIZE, SIZE),
                                            (SIZE, SIZE), 0.5)
    return paste_masks(prob, STRIDE, (SIZE, SIZE), (SIZE, SIZE), 0.5)


def mean_shift(radius: float, targets: str, placement: str) -> torch.Tensor:
    """Mean (x, y) centroid error over 8 x 8 disk centres every 0.5 px."""
    errors = []
    for i in range(8):
        for j in range(8):
            gt = disk(72.25 + 0.5 * i, 76.25 + 0.5 * j, radius)
            p = cell_targets(gt[None], STRIDE, targets).float()
            out = paste(p, placement)[0]
            errors.append(centroid(out) - centroid(gt))
    return torch.stack(errors).mean(0)


@pytest.mark.parametrize('radius', [6, 10, 30])
@pytest.mark.parametrize('alignment', ['centre', 'adelaidet'])
def test_targets_pasted_keep_centroid(alignment, radius):
    shift = mean_shift(radius, alignment, alignment)
    assert shift.abs().max() < 0.05, f'mean centroid shift {shift.tolist()}'


def test_mixed_conventions_shift_half_a_pixel():
    """The test can fail: the authors' targets (pixel 4k + 2) placed by the
    cell-centre path, as this package did before, shift masks by -0.5 px."""
    shift = mean_shift(10, 'adelaidet', 'centre')
    assert torch.allclose(shift, torch.tensor([-0.5, -0.5],
                                              dtype=shift.dtype), atol=0.05)


def test_centre_targets_are_block_majority():
    """'centre' target of cell k = majority of the s x s pixels around
    (k + 0.5) s, ties counted in; brute force on random masks."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 13, 18, generator=g) > 0.5
    out = cell_targets(masks, 4, 'centre')
    assert out.shape == (3, 4, 5) and out.dtype == torch.bool
    padded = torch.zeros(3, 16, 20, dtype=torch.bool)
    padded[:, :13, :18] = masks
    for n in range(3):
        for i in range(4):
            for j in range(5):
                block = padded[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                assert bool(out[n, i, j]) == (int(block.sum()) * 2 >= 16)


def test_adelaidet_targets_sample_pixel_s_k_plus_half_s():
    masks = torch.rand(2, 16, 16) > 0.5
    torch.testing.assert_close(cell_targets(masks, 4, 'adelaidet'),
                               masks[:, 2::4, 2::4])


@pytest.mark.parametrize('stride', [4, 8])
def test_fcos_repo_targets_are_any_of_the_central_2x2(stride):
    """The FCOS repo's loss.py resizes the zero-padded mask bilinearly
    (align_corners=False) to the cells and keeps > 0: cell k samples between
    pixels s k + s/2 - 1 and s k + s/2, so it is set when any of those 2 x 2
    pixels is; brute force on random masks."""
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 29, 37, generator=g) > 0.7
    out = cell_targets(masks, stride, 'fcos_repo')
    h, w = -(-29 // stride), -(-37 // stride)
    assert out.shape == (3, h, w) and out.dtype == torch.bool
    padded = torch.zeros(3, h * stride, w * stride, dtype=torch.bool)
    padded[:, :29, :37] = masks
    c = stride // 2 - 1
    for n in range(3):
        for i in range(h):
            for j in range(w):
                block = padded[n, stride * i + c:stride * i + c + 2,
                               stride * j + c:stride * j + c + 2]
                assert bool(out[n, i, j]) == bool(block.any()), (n, i, j)
    assert cell_targets(masks[:0], stride, 'fcos_repo').shape == (0, h, w)


def test_fcos_repo_targets_keep_thin_lines_the_majority_drops():
    """A 1-px line through the cells' centres: a target of every cell it
    crosses for the FCOS repo, of none by majority (4 of 16 pixels)."""
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :, 5] = True  # column 5: a central pixel of cell column 1
    assert cell_targets(masks, 4, 'fcos_repo')[0, :, 1].all()
    assert not cell_targets(masks, 4, 'centre').any()


@pytest.mark.parametrize('radius', [6, 10])
def test_fcos_repo_targets_placed_as_centre_keep_centroid(radius):
    """Any-of-2x2 targets grow a disk by about half a pixel on every side,
    symmetrically: placed as 'centre' the centroid stays."""
    shift = mean_shift(radius, 'fcos_repo', 'centre')
    assert shift.abs().max() < 0.05


@pytest.mark.parametrize('alignment', ['centre', 'adelaidet'])
def test_upsampled_prob_keeps_cells_in_place(alignment):
    """p at stride 8 upsampled x2 to stride 4 (the training path) puts cell
    k's value where the same convention's test path puts it: a one-hot p
    pasted from stride 8 directly ('centre') or through stride 4
    ('adelaidet', as the authors) peaks at the same pixel."""
    p8 = torch.zeros(1, 10, 10)
    p8[0, 4, 6] = 1.
    p4 = upsample_prob(p8, 2, alignment)
    assert p4.shape == (1, 20, 20)
    if alignment == 'centre':
        # cell (4, 6) of stride 8 is centred at (52, 36): between stride-4
        # cells 12/13 and 8/9, which share the peak
        assert torch.allclose(p4[0, 8:10, 12:14], p4[0, 8:10, 12:14].max())
    else:
        # aligned_bilinear x2: cell k on stride-4 cell 2k + 1
        assert p4[0].argmax() == 9 * 20 + 13


def authors_pipeline(prob, stride, img_shape, out_shape):
    """AdelaiDet ``EmbedMask.postprocess``, literally (float64)."""
    import torch.nn.functional as F
    from mmdet.models.utils.misc import aligned_bilinear
    up = aligned_bilinear(prob.double()[:, None], stride)
    up = up[:, :, :img_shape[0], :img_shape[1]]
    return F.interpolate(up, size=out_shape, mode='bilinear',
                         align_corners=False)[:, 0]


@pytest.mark.parametrize('stride,cells,img_shape,out_shape', [
    (4, (20, 30), (77, 118), (40, 59)),     # crop and downscale
    (4, (16, 16), (64, 64), (64, 64)),      # same size
    (2, (9, 13), (17, 25), (50, 71)),       # upscale, odd sizes
])
def test_aligned_paste_equals_the_authors_pipeline(stride, cells, img_shape,
                                                   out_shape):
    """The separable, per-detection-region evaluation gives the authors'
    masks wherever p is not within 1e-5 of the threshold."""
    g = torch.Generator().manual_seed(0)
    # smooth blobs, some detections with no cell above the threshold
    prob = torch.rand(12, *cells, generator=g)
    prob = torch.nn.functional.avg_pool2d(prob[:, None], 3, 1, 1)[:, 0]
    prob = prob * torch.linspace(0.3, 1.8, 12)[:, None, None]
    ref = authors_pipeline(prob, stride, img_shape, out_shape)
    out = paste_masks_aligned_bilinear(prob, stride, img_shape, out_shape,
                                       0.5)
    assert out.shape == (12, *out_shape)
    clear = (ref - 0.5).abs() > 1e-5
    assert torch.equal(out[clear], (ref > 0.5)[clear])
    assert out.any() and not out.all()
