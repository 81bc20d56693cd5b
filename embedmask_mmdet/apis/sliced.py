"""Sliced inference for large images, with masks that join across tiles.

    from embedmask_mmdet.apis import EmbedMaskSlicedInferencer
    sliced = EmbedMaskSlicedInferencer(config, checkpoint,
                                       slice_size=(512, 512), overlap=0.25,
                                       batch_size=4, device='cpu')
    sample = sliced('big.png')          # or a BGR ndarray, as mmdet's
                                        # inference_detector takes
    sample.pred_instances               # bboxes, scores, labels, masks
                                        # at the original image size

``model`` may also be a built detector (``init_detector``'s), then
``checkpoint`` is not used. The result is a ``DetDataSample`` like
``model.predict``'s: ``pred_instances`` with ``bboxes`` (N, 4), ``scores``,
``labels`` and boolean ``masks`` (N, H, W) at the original size.

How (docs/large_images_and_video.md has the longer version):

1. The test pipeline and data preprocessor run on the whole image. With
   ``scale='tile'`` (default) every Resize of the pipeline is replaced by
   the scale factor the config's Resize gives an image of ``slice_size``,
   so each tile is seen at the scale the model sees a slice-sized image (as
   SAHI, which resizes every slice through the pipeline); with
   ``scale='config'`` the pipeline is the config's unchanged (the whole
   image resized as plain predict resizes it).
2. The padded input is cut into tiles of ``slice_size`` x that factor,
   rounded up to a multiple of ``ALIGN`` (32) input pixels, overlapping by
   at least ``overlap`` of a tile, the starts on multiples of ``ALIGN`` and
   the last tile of a row / column moved back to end at the input's edge.
3. Backbone, neck and both heads' forward run on the tiles, ``batch_size``
   tiles at a time.
4. Every location is taken from one tile: the one whose centre is nearest
   (per axis). The ownership boundary between two neighbours is the middle
   of their overlap, so every location kept lies at least half the overlap
   away from its tile's border (where the convolutions' zero padding stands
   in for image that the tile does not see); at the image's own border the
   whole image has the same padding. The same rule picks the box head's
   locations and the pixel-embedding cells.
5. The mask head's pixel embeddings of the tiles are stitched into one map
   of the whole padded input: each tile's owned cells are put at its
   offset, and the offset's coordinates are added to the 2 spatial
   channels by :func:`spatial_embedding` (linear in the coordinates, so a
   tile's embedding plus its offset's term is its conv output plus the
   cells' image coordinates).
6. The owned box-head locations of all tiles, with their FCOS points in
   image coordinates (the tile's grid plus its offset), go through the box
   head's own selection, decoding and ONE NMS
   (:meth:`EmbedMaskBboxHead.predict_at_points`, the model's settings);
   q of each detection takes the coordinates of its image-coordinate point.
7. Masks are computed once, on the stitched map, by the mask head's own
   ``predict_by_feat`` (its placement, threshold and rescale to the
   original image, as plain predict).

A tiling of one tile (the tile covers the padded input) runs exactly the
operations of ``model.predict``: the same boxes, scores, labels and masks,
bit for bit (tests/test_apis/test_sliced.py).

Tile starts and sizes are multiples of 32, the backbones' largest stride:
every stride-2 layer then samples a tile on the phase it samples the whole
image, so a tile's features are those of a whole-image forward wherever
the tile border's padding does not reach, and the pixel-embedding cells of
every tile fall on one grid. The box head's coarse levels (P6, P7) need
not align: their locations are decoded per tile from their own points.
The candidate rule 'mmdet' (mmdet's CondInst path) is not supported; the
configs here use 'adelaidet' or 'fcos_repo'.

A class of its own rather than an option of ``EmbedMaskInferencer``:
``DetInferencer`` runs ``model.test_step`` on collated batches of images,
while slicing batches the tiles of one image and needs the whole image's
meta information between the heads; ``tools/demo.py`` (``init_detector``)
and the SAHI comparison call a plain ``sliced(img) -> DetDataSample``.
"""
import copy
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmdet.registry import TRANSFORMS
from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg
from mmengine.dataset import pseudo_collate
from torch import Tensor

from ..models.utils import spatial_embedding

__all__ = ['EmbedMaskSlicedInferencer', 'Tile', 'tile_starts', 'tile_grid',
           'ALIGN', 'SCALES']

# input pixels: tile starts and sizes are multiples of it (the backbones'
# largest stride; see the module docstring)
ALIGN = 32
# 'tile': the whole image at the scale the config gives a slice-sized
# image; 'config': the config's pipeline unchanged
SCALES = ('tile', 'config')
RESIZE_TYPES = ('Resize', 'mmdet.Resize')


@dataclass(frozen=True)
class Tile:
    """One tile of the padded input: its top-left corner (y0, x0) and size
    (h, w) in input pixels, and the region whose locations it owns,
    [y_lo, y_hi) x [x_lo, x_hi) in input pixels (±inf at the image's
    border)."""
    y0: int
    x0: int
    h: int
    w: int
    y_lo: float
    y_hi: float
    x_lo: float
    x_hi: float


def tile_starts(length: int, tile: int, overlap: float,
                align: int = ALIGN) -> List[int]:
    """Starts of the tiles covering ``length`` pixels: a step of
    ``tile`` x (1 - ``overlap``) rounded down to a multiple of ``align``
    (at least ``align``), the last tile moved back to end at ``length``.
    ``length`` and ``tile`` are multiples of ``align``, ``tile <= length``.
    """
    step = max(align, int(tile * (1. - overlap)) // align * align)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _owned_bounds(starts: Sequence[int], tile: int
                  ) -> List[Tuple[float, float]]:
    """[lo, hi) of each tile along one axis: the points nearer its centre
    than any other tile's, i.e. split at the middle of each overlap."""
    cuts = [(a + b + tile) / 2. for a, b in zip(starts[:-1], starts[1:])]
    return list(zip([-math.inf] + cuts, cuts + [math.inf]))


def tile_grid(input_shape: Tuple[int, int], tile_shape: Tuple[int, int],
              overlap: float, align: int = ALIGN) -> List[Tile]:
    """The tiles of an ``input_shape`` (H, W) padded input, row by row:
    ``tile_shape`` (h, w) capped at the input; both multiples of
    ``align``."""
    (height, width), (th, tw) = input_shape, tile_shape
    th, tw = min(th, height), min(tw, width)
    for name, value in (('input', height), ('input', width), ('tile', th),
                        ('tile', tw)):
        if value % align:
            raise ValueError(f'tile_grid: {name} sizes must be multiples of '
                             f'{align}, got {input_shape} / {tile_shape}')
    ys, xs = tile_starts(height, th, overlap, align), \
        tile_starts(width, tw, overlap, align)
    return [Tile(y0, x0, th, tw, *ylim, *xlim)
            for y0, ylim in zip(ys, _owned_bounds(ys, th))
            for x0, xlim in zip(xs, _owned_bounds(xs, tw))]


def _owned(coords: Tensor, lo: float, hi: float) -> Tensor:
    """Bool mask of the coordinates in [lo, hi)."""
    return (coords >= lo) & (coords < hi)


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple - 1e-9)) * multiple)


class EmbedMaskSlicedInferencer:
    """Sliced inference of an EmbedMask model with one mask per object
    across tiles (see the module docstring for the method).

    Args:
        model (str | Config | nn.Module): A config (file or object), or a
            built EmbedMask detector in eval mode (e.g. ``init_detector``'s;
            then ``checkpoint``, ``device`` and ``cfg_options`` are unused).
        checkpoint (str, optional): Weights for a config.
        slice_size (tuple[int, int]): (h, w) of a tile in original-image
            pixels (scaled by the resize, rounded up to a multiple of 32
            input pixels).
        overlap (float): Least share of a tile shared with each neighbour,
            in [0, 1). Locations within half the overlap of a tile's border
            are taken from the neighbour.
        batch_size (int): Tiles per forward.
        device (str): Device of a model built here.
        scale (str): 'tile' (default): the whole image at the scale the
            config's Resize gives a ``slice_size`` image; 'config': resized
            as the config resizes the whole image (plain predict's input).
        cfg_options (dict, optional): Overrides of the config.
    """

    def __init__(self, model, checkpoint: Optional[str] = None,
                 slice_size: Tuple[int, int] = (512, 512),
                 overlap: float = 0.25, batch_size: int = 4,
                 device: str = 'cpu', scale: str = 'tile',
                 cfg_options: Optional[dict] = None) -> None:
        if isinstance(model, torch.nn.Module):
            self.model = model
        else:
            from mmdet.apis import init_detector
            self.model = init_detector(model, checkpoint, device=device,
                                       cfg_options=cfg_options)
        for head, method in (('bbox_head', 'predict_at_points'),
                             ('mask_head', 'pixel_embedding')):
            if not hasattr(getattr(self.model, head, None), method):
                raise ValueError(
                    f'EmbedMaskSlicedInferencer: {type(self.model).__name__} '
                    f'has no {head}.{method} (EmbedMask models only)')
        if len(slice_size) != 2 or min(slice_size) <= 0:
            raise ValueError('EmbedMaskSlicedInferencer: slice_size must be '
                             f'(height, width) > 0, got {slice_size!r}')
        if not 0 <= overlap < 1:
            raise ValueError('EmbedMaskSlicedInferencer: overlap must be in '
                             f'[0, 1), got {overlap!r}')
        if batch_size < 1:
            raise ValueError('EmbedMaskSlicedInferencer: batch_size must be '
                             f'>= 1, got {batch_size!r}')
        if scale not in SCALES:
            raise ValueError(f'EmbedMaskSlicedInferencer: scale must be one '
                             f'of {SCALES}, got {scale!r}')
        if self.model.bbox_head.settings.candidate_rule == 'mmdet':
            raise ValueError(
                "EmbedMaskSlicedInferencer: test_cfg candidate_rule 'mmdet' "
                "(mmdet's CondInst path) selects on its own grid; set "
                "model.test_cfg.candidate_rule='adelaidet' (or 'fcos_repo') "
                'in the config')
        stride = self.model.mask_head.prob_stride
        if ALIGN % stride:
            raise ValueError(
                f'EmbedMaskSlicedInferencer: the pixel embedding stride '
                f'{stride} must divide {ALIGN}')
        self.slice_size = tuple(int(s) for s in slice_size)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.scale = scale
        self._pipelines = {}
        self.tile_scale = self._tile_scale() if scale == 'tile' else None

    # ------------------------------------------------------------ pipeline
    def _pipeline_cfg(self) -> list:
        cfg = getattr(self.model, 'cfg', None)
        if cfg is None:
            raise ValueError(
                'EmbedMaskSlicedInferencer: the model has no .cfg (its '
                'config, which init_detector sets); set model.cfg to the '
                'config whose test pipeline it should use')
        return copy.deepcopy(get_test_pipeline_cfg(cfg))

    def _tile_scale(self) -> Tuple[float, float]:
        """(w, h) scale factor the config's Resize steps give an image of
        ``slice_size`` (mmcv's own rounding)."""
        height, width = self.slice_size
        results = dict(img=np.zeros((height, width, 3), np.uint8),
                       img_shape=(height, width), ori_shape=(height, width))
        for step in self._pipeline_cfg():
            if step['type'] in RESIZE_TYPES:
                results = TRANSFORMS.build(step)(results)
        new_h, new_w = results['img'].shape[:2]
        return new_w / width, new_h / height

    def pipeline(self, array_input: bool) -> Compose:
        """The test pipeline (``inference_detector``'s), its Resize steps
        replaced by the tile scale with ``scale='tile'``."""
        if array_input not in self._pipelines:
            steps = self._pipeline_cfg()
            if array_input:
                steps[0]['type'] = 'mmdet.LoadImageFromNDArray'
            if self.tile_scale is not None:
                steps = [dict(type='Resize', scale_factor=self.tile_scale,
                              keep_ratio=False)
                         if s['type'] in RESIZE_TYPES else s for s in steps]
            self._pipelines[array_input] = Compose(steps)
        return self._pipelines[array_input]

    def __call__(self, img: Union[str, np.ndarray]) -> DetDataSample:
        """Predict one image (a path, or a BGR array as mmdet's
        ``inference_detector``)."""
        array_input = isinstance(img, np.ndarray)
        data = self.pipeline(array_input)(
            dict(img=img, img_id=0) if array_input else
            dict(img_path=img, img_id=0))
        data = self.model.data_preprocessor(pseudo_collate([data]), False)
        return self.predict(data['inputs'], data['data_samples'])[0]

    # ------------------------------------------------------------- predict
    def tiles(self, data_sample: DetDataSample, input_shape: Tuple[int, int]
              ) -> List[Tile]:
        """The tiles of one preprocessed image (``input_shape``: its padded
        (H, W) rounded up to ``ALIGN``)."""
        scale_factor = data_sample.metainfo.get('scale_factor', (1., 1.))
        tile_shape = tuple(
            _round_up(size * factor, ALIGN)
            for size, factor in zip(self.slice_size, scale_factor[::-1]))
        return tile_grid(input_shape, tile_shape, self.overlap)

    @torch.no_grad()
    def predict(self, batch_inputs: Tensor,
                batch_data_samples: List[DetDataSample]
                ) -> List[DetDataSample]:
        """``model.predict`` for preprocessed images (the output of the
        model's data preprocessor), one image at a time, each in tiles."""
        model = self.model
        for inputs, sample in zip(batch_inputs, batch_data_samples):
            outputs = self.tile_outputs(inputs, sample)
            meta = [sample.metainfo]
            results = model.bbox_head.predict_at_points(
                *outputs['levels'], batch_img_metas=meta)
            results = model.mask_head.predict_by_feat(
                outputs['pixel_embed'][None], None, results_list=results,
                batch_img_metas=meta, rescale=True)
            model.add_pred_to_datasample([sample], results)
        return list(batch_data_samples)

    def _pad_to_align(self, inputs: Tensor) -> Tensor:
        """The input padded (bottom / right, the preprocessor's pad value)
        to multiples of ``ALIGN``; a no-op for configs that pad to 32."""
        height, width = inputs.shape[-2:]
        pad_h, pad_w = (-height) % ALIGN, (-width) % ALIGN
        if pad_h or pad_w:
            value = getattr(self.model.data_preprocessor, 'pad_value', 0)
            inputs = F.pad(inputs, (0, pad_w, 0, pad_h), value=value)
        return inputs

    @torch.no_grad()
    def tile_outputs(self, inputs: Tensor, data_sample: DetDataSample
                     ) -> dict:
        """The heads' outputs of one image, from its tiles.

        Args:
            inputs (Tensor): One preprocessed image, (3, H, W).
            data_sample (DetDataSample): Its meta information.

        Returns:
            dict: ``levels``, the arguments of
            :meth:`EmbedMaskBboxHead.predict_at_points` before the metas
            (per level the owned locations of all tiles as (1, C, 1, N)
            strips, their points (N, 2) in input pixels and strides (N,)),
            ``pixel_embed``, the stitched pixel embeddings (D, H / s,
            W / s) at the mask head's stride s, and ``tiles``.
        """
        model, mask_head = self.model, self.model.mask_head
        inputs = self._pad_to_align(inputs)
        height, width = inputs.shape[-2:]
        tiles = self.tiles(data_sample, (height, width))
        stride = mask_head.prob_stride
        stitched = None
        levels = None
        for first in range(0, len(tiles), self.batch_size):
            batch = tiles[first:first + self.batch_size]
            crops = torch.stack([inputs[:, t.y0:t.y0 + t.h, t.x0:t.x0 + t.w]
                                 for t in batch])
            feats = model.extract_feat(crops)
            head_outs = model.bbox_head(feats)
            pixel_embed = mask_head(feats)[0]
            if stitched is None:
                stitched = pixel_embed.new_zeros(
                    (pixel_embed.size(1), height // stride, width // stride))
                levels = [[[] for _ in head_outs[0]]
                          for _ in range(len(head_outs) + 2)]
            for i, tile in enumerate(batch):
                self._stitch(stitched, pixel_embed[i], tile, stride)
                self._collect(levels, [[o[i] for o in outs]
                                       for outs in head_outs], tile)
        # (C, N) outputs -> (1, C, 1, N) strips; points (N, 2), strides
        maps = [[torch.cat(lvl, dim=1)[None, :, None] for lvl in kind]
                for kind in levels[:-2]]
        points, strides = ([torch.cat(lvl) for lvl in kind]
                           for kind in levels[-2:])
        return dict(levels=(*maps, points, strides), pixel_embed=stitched,
                    tiles=tiles)

    def _stitch(self, stitched: Tensor, embed: Tensor, tile: Tile,
                stride: int) -> None:
        """Put a tile's owned cells of its pixel embedding (D, h, w) into
        the map of the whole input, its coordinates moved by the offset."""
        mask_head = self.model.mask_head
        if embed.shape[-2:] != (tile.h // stride, tile.w // stride):
            raise RuntimeError(
                f'EmbedMaskSlicedInferencer: the pixel embedding of a '
                f'{tile.h}x{tile.w} tile is {tuple(embed.shape[-2:])}, not '
                f'the input / {stride}')
        offset = embed.new_tensor([tile.x0, tile.y0])[:, None, None]
        embed = torch.cat([
            spatial_embedding(embed[:2], offset, mask_head.coord_scale,
                              mask_head.coord_norm), embed[2:]])
        rows = self._owned_cells(tile.y0, tile.h, tile.y_lo, tile.y_hi,
                                 stride, embed.device)
        cols = self._owned_cells(tile.x0, tile.w, tile.x_lo, tile.x_hi,
                                 stride, embed.device)
        stitched[:, tile.y0 // stride + rows.start:tile.y0 // stride +
                 rows.stop, tile.x0 // stride + cols.start:tile.x0 // stride +
                 cols.stop] = embed[:, rows, cols]

    @staticmethod
    def _owned_cells(start: int, size: int, lo: float, hi: float,
                     stride: int, device) -> slice:
        """The local cells (a slice) of one axis of a tile whose centres
        (in input pixels) the tile owns."""
        centres = start + (torch.arange(size // stride, device=device) +
                           0.5) * stride
        owned = _owned(centres, lo, hi).nonzero().flatten()
        if len(owned) == 0:
            return slice(0, 0)
        return slice(int(owned[0]), int(owned[-1]) + 1)

    def _collect(self, levels: list, outs: list, tile: Tile) -> None:
        """Append a tile's owned locations of every level (their head
        outputs (C, N), points and strides) to ``levels``."""
        bbox_head = self.model.bbox_head
        sizes = [o.shape[-2:] for o in outs[0]]
        priors = bbox_head.prior_generator.grid_priors(
            sizes, dtype=outs[1][0].dtype, device=outs[1][0].device,
            with_stride=True)
        offset = priors[0].new_tensor([tile.x0, tile.y0])
        for lvl, prior in enumerate(priors):
            points = prior[:, :2] + offset
            owned = _owned(points[:, 0], tile.x_lo, tile.x_hi) & \
                _owned(points[:, 1], tile.y_lo, tile.y_hi)
            for kind, out in enumerate(outs):
                levels[kind][lvl].append(out[lvl].flatten(1)[:, owned])
            levels[-2][lvl].append(points[owned])
            levels[-1][lvl].append(prior[owned, 2])
