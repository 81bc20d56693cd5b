"""Where a stride-s cell of p sits in the image, for training targets and
test-time placement alike.

Two conventions, each consistent between training and test:

* ``'centre'``: cell k of a stride-s map is the point (k + 0.5) s (the
  FCOS location, the coordinate channels). Its target is the majority of
  the s x s block of pixels around that point, and at test p is resampled
  with ``align_corners=False``, which puts cell k at the same point.
* ``'adelaidet'`` (the authors' code): the target of stride-4 cell k is the
  pixel 4k + 2, and ``aligned_bilinear`` puts cell k on that pixel at test.
  Needed to reproduce the authors' published weights.

Shapes: G masks, (H, W) image, (h, w) = ceil((H, W) / s) cells.
"""
import torch
import torch.nn.functional as F
from mmdet.models.utils.misc import aligned_bilinear
from torch import Tensor

ALIGNMENTS = ('centre', 'adelaidet')


def cell_targets(masks: Tensor, stride: int, alignment: str = 'centre'
                 ) -> Tensor:
    """Binary targets of the stride-``stride`` cells, (G, h, w) bool.

    'centre': t_k = [ mean of the s x s block centred at (k + 0.5) s >= 1/2 ];
    ties go to the object on both sides alike, so no direction is favoured.
    'adelaidet': t_k = mask[s k + s // 2].

    Args:
        masks (Tensor): Gt masks (G, H, W), bool or 0/1 integers.
        stride (int): s, the stride of the cells; 1 returns ``masks`` as
            bool.
        alignment (str): 'centre' or 'adelaidet'. Defaults to 'centre'.

    Returns:
        Tensor: (G, h, w) bool. 'centre': (h, w) = ceil((H, W) / s), pixels
        beyond the image counting as background; 'adelaidet': the
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
