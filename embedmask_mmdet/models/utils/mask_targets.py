"""Where a stride-s cell of p sits in the image, for training targets and
test-time placement alike.

Three conventions, each consistent between training and test:

* ``'centre'``: cell k of a stride-s map is the point (k + 0.5) s (the
  FCOS location, the coordinate channels). Its target is the majority of
  the s x s block of pixels around that point, and at test p is resampled
  with ``align_corners=False``, which puts cell k at the same point.
* ``'adelaidet'`` (the authors' code): the target of stride-4 cell k is the
  pixel 4k + 2, and ``aligned_bilinear`` puts cell k on that pixel at test.
  Needed to reproduce the authors' published weights.
* ``'fcos_repo'`` (the authors' FCOS-repo code, ``embed_mask/loss.py``):
  placed as 'centre'; the target is the mask resized bilinearly to the cells
  and kept where > 0, i.e. set when any of the cell's central 2 x 2 pixels
  is: thicker than the majority rule on thin parts, and what that design's
  mask threshold 0.53 was tuned on.

Shapes: G masks, (H, W) image, (h, w) = ceil((H, W) / s) cells.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from mmdet.models.utils.misc import aligned_bilinear
from torch import Tensor

ALIGNMENTS = ('centre', 'adelaidet', 'fcos_repo')


def cell_targets(masks: Tensor, stride: int, alignment: str = 'centre'
                 ) -> Tensor:
    """Binary targets of the stride-``stride`` cells, (G, h, w) bool.

    'centre': t_k = [ mean of the s x s block centred at (k + 0.5) s >= 1/2 ];
    ties go to the object on both sides alike, so no direction is favoured.
    'adelaidet': t_k = mask[s k + s // 2].
    'fcos_repo': t_k = [ bilinear(mask, 1/s) at cell k > 0 ] = OR of the
    pixels s k + s/2 - 1 and s k + s/2 in each direction (even s).

    Args:
        masks (Tensor): Gt masks (G, H, W), bool or 0/1 integers.
        stride (int): s, the stride of the cells; 1 returns ``masks`` as
            bool.
        alignment (str): 'centre', 'adelaidet' or 'fcos_repo'. Defaults to
            'centre'.

    Returns:
        Tensor: (G, h, w) bool. 'centre' and 'fcos_repo': (h, w) =
        ceil((H, W) / s), pixels beyond the image counting as background
        (the FCOS repo zero-pads the masks to the padded image); 'adelaidet': the
        sub-sampled pixels, ceil(((H, W) - s // 2) / s) of them.
    """
    if stride == 1:
        return masks.bool()
    if alignment == 'adelaidet':
        start = stride // 2
        return masks[:, start::stride, start::stride].bool()
    num, height, width = masks.shape
    h, w = -(-height // stride), -(-width // stride)
    padded = F.pad(masks.to(torch.uint8), (0, w * stride - width,
                                           0, h * stride - height))
    if alignment == 'fcos_repo':
        if num == 0:
            return masks.new_zeros((0, h, w), dtype=torch.bool)
        return F.interpolate(padded[None].float(), size=(h, w),
                             mode='bilinear', align_corners=False)[0] > 0
    counts = padded.view(num, h, stride, w, stride).sum(dim=(2, 4),
                                                        dtype=torch.int32)
    return counts * 2 >= stride * stride


def upsample_prob(prob: Tensor, factor: int, alignment: str = 'centre'
                  ) -> Tensor:
    """p of (N, h, w) cells at stride s -> (N, factor h, factor w) at s /
    factor, keeping each cell where ``alignment`` puts it.

    'centre': bilinear with ``align_corners=False``; 'adelaidet': mmdet's
    ``aligned_bilinear``.

    Args:
        prob (Tensor): Probabilities (N, h, w) at stride s.
        factor (int): Integer upsampling factor; 1 returns ``prob``.
        alignment (str): 'centre' or 'adelaidet'. Defaults to 'centre'.

    Returns:
        Tensor: Upsampled probabilities (N, factor h, factor w).
    """
    if factor == 1:
        return prob
    if alignment == 'adelaidet':
        return aligned_bilinear(prob[:, None], factor)[:, 0]
    return F.interpolate(prob[None], scale_factor=factor, mode='bilinear',
                         align_corners=False)[0]


def gt_mask_tensor(gt_instances, device) -> Tensor:
    """The gt masks of one image as a (G, H, W) bool tensor on ``device``,
    made once per image and training step.

    ``PolygonMasks`` are rasterised on the CPU (pycocotools) and copied to
    the device; the box head's centre sampling, the mask loss and the
    semantic targets all need the same tensor, so it is kept on the
    ``InstanceData`` (as a plain attribute, not a data field: indexing or
    concatenating the gt instances drops it) and reused while ``masks`` is
    the same object (:func:`pad_gt_masks` carries it over a padding).

    Args:
        gt_instances (:obj:`InstanceData`): Gt instances of one image with
            ``masks`` (``BitmapMasks``/``PolygonMasks`` or a tensor).
        device (torch.device | str): Device of the result.

    Returns:
        Tensor: (G, H, W) bool.
    """
    masks = gt_instances.masks
    if isinstance(masks, Tensor):
        return masks.to(device=device, dtype=torch.bool)
    cache = gt_instances.__dict__.get('_mask_tensor_cache')
    if cache is not None and cache[0] is masks and \
            cache[1].device == torch.device(device):
        return cache[1]
    array = torch.from_numpy(masks.to_ndarray()).to(torch.bool)
    if array.device != torch.device(device) and torch.device(
            device).type == 'cuda':
        # a pinned buffer lets the copy overlap with the host
        array = array.pin_memory().to(device, non_blocking=True)
    else:
        array = array.to(device)
    object.__setattr__(gt_instances, '_mask_tensor_cache', (masks, array))
    return array


def pad_gt_masks(gt_instances, shape: Tuple[int, int]) -> None:
    """``gt_instances.masks = gt_instances.masks.pad(shape)``, as mmdet's
    ``BaseMaskHead.loss`` does, keeping the tensor of :func:`gt_mask_tensor`
    (zero-padded on its device) so that the padded masks are not rasterised
    again.

    Zero padding is exactly what ``BitmapMasks.pad`` does; for polygons it
    equals rasterising them on the larger canvas except for polygon parts
    outside the masks' own canvas (outside the image), which stay
    background.

    Args:
        gt_instances (:obj:`InstanceData`): Gt instances with ``masks``.
        shape (tuple[int, int]): (H, W) to pad to (``batch_input_shape``).
    """
    cache = gt_instances.__dict__.get('_mask_tensor_cache')
    masks = gt_instances.masks
    padded = masks.pad(tuple(shape[:2]))
    gt_instances.masks = padded
    if cache is None or cache[0] is not masks:
        return
    tensor = cache[1]
    pad_h, pad_w = shape[0] - tensor.size(1), shape[1] - tensor.size(2)
    if pad_h < 0 or pad_w < 0:
        return
    tensor = F.pad(tensor, (0, pad_w, 0, pad_h))
    object.__setattr__(gt_instances, '_mask_tensor_cache', (padded, tensor))
