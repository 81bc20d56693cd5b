"""EmbedMask mask head: pixel embedding, mask probability, mask and semantic losses."""
import copy
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads.base_mask_head import BaseMaskHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmdet.models.utils import unpack_gt_instances
from mmdet.utils import (ConfigType, InstanceList, OptConfigType,
                         OptInstanceList)
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils import (check_choice, check_embed_dim, location_map,
                     mask_logit, mask_probability, spatial_embedding)
from ..utils.inference_settings import MASK_RESAMPLES  # noqa: F401
from ..utils.inference_settings import HeadSettings, MaskInferenceSettings
from ..utils.mask_targets import (ALIGNMENTS, cell_targets, gt_mask_tensor,
                                  pad_gt_masks, upsample_prob)
from .embedmask_mask_predict import EmbedMaskMaskPredictMixin
from .pixel_branch import (PIXEL_BRANCHES, EmbedMaskPixelBranch,
                           authors_conv_init)

__all__ = ['EmbedMaskMaskHead']

SAMPLINGS = ('all_positives', 'best_iou_per_gt')
# mask loss normalisation: mean over the batch's instances (AdelaiDet), or
# mean per image, summed, / images incl. empty ones (FCOS repo)
LOSS_MASK_NORMS = ('instances', 'images')


@MODELS.register_module()
class EmbedMaskMaskHead(EmbedMaskMaskPredictMixin, BaseMaskHead):
    """Pixel-embedding branch and mask generation of EmbedMask.

    The mask of proposal k is {i : p_ik > mask_thr} with
    p_ik = exp(-Σ_d s_kd (x_id - q_kd)^2), x the pixel embedding, (q_k, s_k)
    the proposal embedding and margin carried by the box head's positives
    (training) or detections (test).

    Args:
        num_classes (int): Number of classes (semantic loss).
        in_channels (int): Channels of the neck outputs.
        embed_dim (int): D, must equal the box head's.
        pixel_branch (dict): ``type`` in ``PIXEL_BRANCHES`` plus overrides of
            its MaskFeatModule settings.
        with_coords (bool): Add image coordinates / ``coord_norm`` to the two
            spatial channels of both embeddings.
        learnable_coord_scale (bool): Multiply the coordinates by one learnable
            scalar shared by proposals and pixels (FCOS-repo design).
        mask_out_stride (int): Stride of the masks the loss sees.
        sampling (str): Proposals trained per gt: 'all_positives' (AdelaiDet)
            or 'best_iou_per_gt' (FCOS repo: the positive whose predicted box
            best overlaps its gt).
        max_masks_to_train (int): Random cap on trained masks per batch (-1:
            none); bounds memory on crowded images.
        prob_eps (float): p is clamped to [eps, 1-eps] before the logit.
        loss_mask (dict): Loss on mask logits (LovaszHingeLoss, or mmdet's
            DiceLoss / CrossEntropyLoss with use_sigmoid=True).
        loss_mask_norm (str): 'instances' (mean over the batch's trained
            masks, AdelaiDet) or 'images' (mean per image, summed over
            images, divided by the number of images, FCOS repo).
        alignment (str): Where a cell of p sits, for targets and test
            placement alike (see ``mask_targets``): 'centre' (at
            (k + 0.5) x stride), 'adelaidet' (the authors' code; needed
            for their published weights) or 'fcos_repo' (placed as
            'centre', the FCOS repo's targets).
        loss_semantic (dict, optional): Auxiliary semantic focal loss.
        semantic_channels (int): Width of the semantic branch.
        semantic_level (int, optional): Neck output the semantic branch reads;
            None: the pixel branch's first level. Its stride is taken as
            the pixel stride x 2^(levels above that one).

    ``test_cfg`` is read through ``self.settings``
    (:class:`MaskInferenceSettings`, resolved and validated from it).
    """

    settings = HeadSettings(MaskInferenceSettings)

    def __init__(self,
                 num_classes: int,
                 in_channels: int = 256,
                 embed_dim: int = 16,
                 pixel_branch: ConfigType = dict(type='p3p5_fusion'),
                 with_coords: bool = True,
                 learnable_coord_scale: bool = False,
                 coord_norm: float = 100.,
                 mask_out_stride: int = 4,
                 sampling: str = 'all_positives',
                 max_masks_to_train: int = 500,
                 prob_eps: float = 1e-6,
                 loss_mask: ConfigType = dict(
                     type='LovaszHingeLoss', loss_weight=1.0),
                 loss_mask_norm: str = 'instances',
                 alignment: str = 'centre',
                 loss_semantic: OptConfigType = None,
                 semantic_channels: int = 128,
                 semantic_level: Optional[int] = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        check_embed_dim('EmbedMaskMaskHead', embed_dim)
        check_choice('EmbedMaskMaskHead', 'sampling', sampling, SAMPLINGS)
        check_choice('EmbedMaskMaskHead', 'loss_mask_norm', loss_mask_norm,
                     LOSS_MASK_NORMS)
        check_choice('EmbedMaskMaskHead', 'alignment', alignment, ALIGNMENTS)
        self.loss_mask_norm = loss_mask_norm
        self.alignment = alignment
        if not 0 < prob_eps < 0.5:
            raise ValueError(f'EmbedMaskMaskHead: prob_eps must be in (0, 0.5), '
                             f'got {prob_eps!r}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.with_coords = with_coords
        self.coord_norm = coord_norm
        self.mask_out_stride = mask_out_stride
        self.sampling = sampling
        self.max_masks_to_train = max_masks_to_train
        self.prob_eps = prob_eps
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        # resolved now: a bad test_cfg fails the build
        resample = self.settings.mask_resample
        if alignment == 'adelaidet' and resample != 'prob':
            # the authors' placement resamples p; ignoring the key would
            # hide that the embedding path is not used
            raise ValueError(
                "EmbedMaskMaskHead: alignment='adelaidet' places p with "
                "aligned_bilinear and needs test_cfg.mask_resample='prob' "
                f"(got {resample!r}); use "
                "alignment='centre' for the embedding path")
        if learnable_coord_scale:
            self.coord_scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer('coord_scale', torch.tensor(
                1. if with_coords else 0.), persistent=False)
        self._init_pixel_branch(pixel_branch)
        if semantic_level is None:
            semantic_level = self.pixel_start_level
        if not isinstance(semantic_level, int) or \
                semantic_level < self.pixel_start_level:
            raise ValueError(
                'EmbedMaskMaskHead: semantic_level must be an int >= the pixel '
                f'branch start_level ({self.pixel_start_level}), got '
                f'{semantic_level!r}')
        self.semantic_level = semantic_level
        self.semantic_stride = self.pixel_stride * 2**(
            semantic_level - self.pixel_start_level)
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_semantic = None
        if loss_semantic is not None:
            self.loss_semantic = MODELS.build(loss_semantic)
            self._init_semantic_branch(semantic_channels)

    def _init_pixel_branch(self, pixel_branch: ConfigType) -> None:
        cfg = dict(pixel_branch)
        branch_type = cfg.pop('type', 'p3p5_fusion')
        check_choice('EmbedMaskMaskHead', 'pixel_branch.type', branch_type,
                     tuple(PIXEL_BRANCHES))
        settings = copy.deepcopy(PIXEL_BRANCHES[branch_type])
        settings.update(cfg)
        self.pixel_branch_type = branch_type
        self.pixel_start_level = settings['start_level']
        self.upsample_embedding = settings.pop('upsample_embedding')
        self.coords_before_upsample = settings.pop('coords_before_upsample',
                                                   False)
        self.pixel_stride = settings.pop('mask_stride', 8)
        self.pixel_branch = EmbedMaskPixelBranch(
            in_channels=self.in_channels, out_channels=self.embed_dim,
            mask_stride=self.pixel_stride, **settings)
        self.prob_stride = self.pixel_stride // 2 if self.upsample_embedding \
            else self.pixel_stride
        if self.prob_stride % self.mask_out_stride:
            # p is upsampled by an integer factor to the loss's stride
            raise ValueError(
                f'EmbedMaskMaskHead: p comes at stride {self.prob_stride} '
                f'(pixel_branch.mask_stride={self.pixel_stride}, '
                f'upsample_embedding={self.upsample_embedding}), which must be '
                f'a multiple of mask_out_stride={self.mask_out_stride}; set '
                'upsample_embedding=False or a smaller mask_out_stride')
        self._norm_cfg = settings.get('norm_cfg')

    def _init_semantic_branch(self, channels: int) -> None:
        self.semantic_convs = nn.Sequential(*[
            ConvModule(self.in_channels if i == 0 else channels, channels, 3,
                       padding=1, norm_cfg=self._norm_cfg) for i in range(2)
        ])
        self.semantic_logits = nn.Conv2d(channels, self.num_classes, 1)

    def init_weights(self) -> None:
        super().init_weights()
        # small embedding convs: at init the spatial embedding is the pixel's
        # coordinates, as in the authors' code
        nn.init.normal_(self.pixel_branch.conv_pred.weight, std=0.01)
        nn.init.zeros_(self.pixel_branch.conv_pred.bias)
        if self.loss_semantic is not None:
            # AdelaiDet: seg_head convs as the pixel branch's, the logits
            # conv at torch's default with the focal prior's bias
            for conv in self.semantic_convs:
                authors_conv_init(conv)
            self.semantic_logits.reset_parameters()
            nn.init.constant_(self.semantic_logits.bias, -math.log(99.))

    # ------------------------------------------------------------------ forward
    def pixel_embedding(self, x: Tuple[Tensor]) -> Tensor:
        """Pixel embeddings x_i, (B, D, H, W) at ``self.prob_stride``.

        The pixel branch's output (bilinearly upsampled x2 with
        ``upsample_embedding``) with the cell centres' image coordinates
        added to the 2 spatial channels (see :func:`spatial_embedding`).

        Args:
            x (tuple[Tensor]): Neck outputs, each (B, C, H_l, W_l).

        Returns:
            Tensor: Pixel embeddings (B, D, H, W), float32 even under
            autocast, at ``self.prob_stride`` of the padded input.
        """
        # float32 under autocast: image coordinates (up to ~1300 / 100) in
        # bf16 would be ~0.05, i.e. 5 pixels, off
        embed = self.pixel_branch(x).float()
        if self.upsample_embedding and self.coords_before_upsample:
            # the FCOS repo's order; bilinear upsampling reproduces the
            # stride-4 cell centres' coordinates except on the border
            # rows/columns, which get the edge cell's (a 2-px difference)
            embed = self._with_coords(embed, self.pixel_stride)
            return F.interpolate(embed, scale_factor=2, mode='bilinear',
                                 align_corners=False)
        stride = self.pixel_stride
        if self.upsample_embedding:
            embed = F.interpolate(embed, scale_factor=2, mode='bilinear',
                                  align_corners=False)
            stride = stride // 2
        return self._with_coords(embed, stride)

    def _with_coords(self, embed: Tensor, stride: int) -> Tensor:
        """(B, D, H, W) conv output plus its stride-``stride`` cell
        centres' coordinates on the 2 spatial channels."""
        coords = location_map(*embed.shape[-2:], stride, embed.device,
                              embed.dtype)
        return torch.cat([
            spatial_embedding(embed[:, :2], coords, self.coord_scale,
                              self.coord_norm), embed[:, 2:]
        ], dim=1)

    def proposal_embedding(self, instances: InstanceData) -> Tensor:
        """Proposal embeddings q_k, (N, D): the box head's conv output with the
        FCOS location's coordinates added to the spatial channels.

        Args:
            instances (:obj:`InstanceData`): Positives or detections of one
                image with ``embeddings`` (N, D), the box head's embedding
                conv output, and ``points`` (N, 2), the (x, y) image
                coordinates of their FCOS locations.

        Returns:
            Tensor: Proposal embeddings q, (N, D).
        """
        embed = instances.embeddings
        return torch.cat([
            spatial_embedding(embed[:, :2], instances.points, self.coord_scale,
                              self.coord_norm), embed[:, 2:]
        ], dim=1)

    def forward(self, x: Tuple[Tensor], positive_infos=None
                ) -> Tuple[Tensor, Optional[Tensor]]:
        """Returns the pixel embeddings and, in training with the semantic
        loss on, the semantic logits on P3."""
        pixel_embed = self.pixel_embedding(x)
        sem_logits = None
        if self.training and self.loss_semantic is not None:
            sem_logits = self.semantic_logits(
                self.semantic_convs(x[self.semantic_level]))
        return pixel_embed, sem_logits

    def mask_prob_at_out_stride(self, pixel_embed: Tensor,
                                instances: InstanceData) -> Tensor:
        """p of ``instances`` on one image at ``mask_out_stride``, (N, h, w).

        p is computed at ``self.prob_stride`` and upsampled by the integer
        factor ``prob_stride // mask_out_stride`` per ``self.alignment``
        (see :func:`upsample_prob`).

        Args:
            pixel_embed (Tensor): Pixel embeddings of one image, (D, H, W),
                at ``self.prob_stride`` (from :meth:`pixel_embedding`).
            instances (:obj:`InstanceData`): Proposals with ``embeddings``
                (N, D), ``points`` (N, 2) and ``margins`` (N, D).

        Returns:
            Tensor: Mask probabilities in [0, 1], (N, h, w) with
            (h, w) = (H, W) x ``prob_stride // mask_out_stride``.
        """
        prob = mask_probability(pixel_embed, self.proposal_embedding(instances),
                                instances.margins)
        return upsample_prob(prob, self.prob_stride // self.mask_out_stride,
                             self.alignment)

    # --------------------------------------------------------------------- loss
    def loss(self, x: Tuple[Tensor], batch_data_samples,
             positive_infos: OptInstanceList = None, **kwargs) -> dict:
        """``BaseMaskHead.loss``: the forward, the gt masks padded to the
        batch input shape, :meth:`loss_by_feat`. The padding keeps the gt
        masks' tensor that the box head already made
        (:func:`pad_gt_masks`), so they are rasterised once per image and
        step, not again here and for the semantic targets."""
        outs = self(x, positive_infos)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = \
            unpack_gt_instances(batch_data_samples)
        for gt_instances, img_meta in zip(batch_gt_instances,
                                          batch_img_metas):
            pad_gt_masks(gt_instances, img_meta['batch_input_shape'])
        return self.loss_by_feat(
            *outs, batch_gt_instances=batch_gt_instances,
            batch_img_metas=batch_img_metas, positive_infos=positive_infos,
            batch_gt_instances_ignore=batch_gt_instances_ignore, **kwargs)

    def sample_positives(self, positive_infos: InstanceList,
                         batch_gt_instances: InstanceList) -> InstanceList:
        """Positives whose masks are trained, per ``self.sampling``.

        'all_positives' keeps every positive; 'best_iou_per_gt' keeps, per
        gt, the positive whose predicted box has the highest IoU with that
        gt's box (the first such positive on ties). Then, if the batch still
        holds more than ``max_masks_to_train`` (>= 0) positives, that many
        are drawn at random over the whole batch.

        Args:
            positive_infos (list[:obj:`InstanceData`]): Positives of each
                image from :meth:`EmbedMaskBboxHead.get_positive_infos`;
                uses ``pos_assigned_gt_inds``, ``bboxes`` (for
                'best_iou_per_gt') and ``pos_inds``.
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image; ``bboxes`` is used by 'best_iou_per_gt'.

        Returns:
            list[:obj:`InstanceData`]: The kept positives of each image (a
            subset of that image's ``positive_infos``, possibly empty).
        """
        sampled = []
        for info, gt in zip(positive_infos, batch_gt_instances):
            if self.sampling == 'best_iou_per_gt' and len(info) > 0:
                gt_inds = info.pos_assigned_gt_inds
                ious = bbox_overlaps(info.bboxes, gt.bboxes[gt_inds],
                                     is_aligned=True)
                best = ious.new_full((len(gt), ), -1.).scatter_reduce(
                    0, gt_inds, ious, reduce='amax')
                is_best = (ious == best[gt_inds]).nonzero().flatten()
                # one positive per gt even when IoUs tie
                _, first = torch.unique(gt_inds[is_best], return_inverse=True)
                keep = is_best.new_full((int(first.max()) + 1 if len(first) else 0, ),
                                        len(info))
                keep = keep.scatter_reduce(0, first, is_best, reduce='amin')
                info = info[keep]
            sampled.append(info)
        total = sum(len(info) for info in sampled)
        if 0 <= self.max_masks_to_train < total:
            device = sampled[0].pos_inds.device
            chosen = torch.zeros(total, dtype=torch.bool, device=device)
            chosen[torch.randperm(total, device=device)[:self.max_masks_to_train]] = True
            sampled = [info[sel] for info, sel in
                       zip(sampled, chosen.split([len(i) for i in sampled]))]
        return sampled

    def loss_by_feat(self, pixel_embeds: Tensor, sem_logits: Optional[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict], positive_infos: InstanceList,
                     **kwargs) -> dict:
        """Mask loss on the masks of the sampled positives (mean over
        instances, or per image with ``loss_mask_norm='images'``, see
        :meth:`mask_loss`) and, optionally, the semantic loss.

        Called by :meth:`BaseMaskHead.loss`, which pads the gt masks to
        ``batch_input_shape``. Unlike mmdet's ``CondInstMaskHead`` (dice
        loss on dynamic-conv mask logits), the positives are first sampled
        (:meth:`sample_positives`) and the loss is ``loss_mask`` on
        logit(p) at ``mask_out_stride`` against the gt masks' cell targets
        (:func:`cell_targets`), both cropped to their common size. With no
        sampled positive in the batch the mask loss is an exact zero that
        still reaches every parameter.

        Args:
            pixel_embeds (Tensor): Pixel embeddings (B, D, H, W) from
                :meth:`forward`.
            sem_logits (Tensor, optional): Semantic logits
                (B, num_classes, h_s, w_s) at ``semantic_stride``, or None
                (no semantic loss).
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks``, ``labels`` and ``bboxes``.
            batch_img_metas (list[dict]): Meta information of each image
                (unused).
            positive_infos (list[:obj:`InstanceData`]): Positives of each
                image from :meth:`EmbedMaskBboxHead.get_positive_infos`
                (``embeddings``, ``margins``, ``points``, ``bboxes``,
                ``pos_assigned_gt_inds``, ``pos_inds``); must not be None.
            **kwargs: Ignored (e.g. ``batch_gt_instances_ignore``).

        Returns:
            dict[str, Tensor]: ``loss_mask`` and, when ``sem_logits`` is
            given, ``loss_semantic``; scalar tensors.
        """
        assert positive_infos is not None, \
            'EmbedMaskMaskHead needs the positives of the box head'
        sampled = self.sample_positives(positive_infos, batch_gt_instances)
        logits, targets, weights = [], [], []
        for pixel_embed, info, gt in zip(pixel_embeds, sampled,
                                         batch_gt_instances):
            if len(info) == 0:
                continue
            gt_masks = cell_targets(gt_mask_tensor(gt, pixel_embed.device),
                                    self.mask_out_stride, self.alignment)
            prob = self.mask_prob_at_out_stride(pixel_embed, info)
            h = min(prob.size(1), gt_masks.size(1))
            w = min(prob.size(2), gt_masks.size(2))
            logits.append(mask_logit(prob[:, :h, :w], self.prob_eps))
            targets.append(gt_masks[info.pos_assigned_gt_inds, :h, :w].float())
            weights.append(prob.new_full((len(info), ), 1. / len(info)))
        if logits:
            # float32 whatever the autocast state: the loss is exact
            with torch.autocast(pixel_embeds.device.type, enabled=False):
                loss_mask = self.mask_loss(torch.cat(logits).float(),
                                           torch.cat(targets),
                                           torch.cat(weights), len(sampled))
        else:
            # no positive: exact zero that still reaches every parameter
            loss_mask = pixel_embeds.sum() * 0. + sum(
                info.embeddings.sum() * 0. + info.margins.sum() * 0.
                for info in positive_infos)
        losses = dict(loss_mask=loss_mask)
        if sem_logits is not None:
            losses['loss_semantic'] = self.semantic_loss(
                sem_logits, batch_gt_instances)
        return losses

    def mask_loss(self, logits: Tensor, targets: Tensor, weights: Tensor,
                  num_imgs: int) -> Tensor:
        """``loss_mask`` on (M, h, w) logits and targets per
        ``loss_mask_norm``: mean over the M masks, or Σ_img mean_img / B with
        ``weights`` (M,) = 1 / (masks of the mask's image).

        Args:
            logits (Tensor): Mask logits of the M trained masks, (M, h, w),
                float32.
            targets (Tensor): Binary targets as floats, (M, h, w).
            weights (Tensor): Per-mask weights (M,), 1 / (number of trained
                masks of the mask's image); used only with 'images'.
            num_imgs (int): B, the number of images in the batch, empty
                ones included; used only with 'images'.

        Returns:
            Tensor: The mask loss, a scalar.
        """
        if self.loss_mask_norm == 'instances':
            return self.loss_mask(logits, targets)
        return self.loss_mask(logits, targets, weight=weights,
                              avg_factor=float(num_imgs),
                              reduction_override='mean')

    def semantic_targets(self, batch_gt_instances: InstanceList,
                         stride: int, size: Tuple[int, int]) -> Tensor:
        """Class of the smallest gt covering each cell centre, ``num_classes``
        for background; (B, h, w).

        A cell is covered by a gt when its :func:`cell_targets` target (per
        ``self.alignment``) is set; "smallest" is by the mask's area in
        pixels. Cells beyond the gt masks' cells stay background.

        Args:
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks`` and ``labels``.
            stride (int): Stride of the cells.
            size (tuple[int, int]): (h, w), the size of the target maps.

        Returns:
            Tensor: Class targets (B, h, w), of ``gt.labels``' dtype.
        """
        targets = []
        for gt in batch_gt_instances:
            full = gt_mask_tensor(gt, gt.labels.device)
            masks = cell_targets(full, stride, self.alignment)
            target = gt.labels.new_full(size, self.num_classes)
            if len(masks):
                h = min(size[0], masks.size(1))
                w = min(size[1], masks.size(2))
                masks = masks[:, :h, :w]
                # the smallest object by its area in pixels, as AdelaiDet
                areas = full.flatten(1).sum(1).float()
                cost = torch.where(masks, areas[:, None, None],
                                   areas.new_tensor(float('inf')))
                min_cost, inds = cost.min(dim=0)
                target[:h, :w] = torch.where(
                    torch.isinf(min_cost), target[:h, :w], gt.labels[inds])
            targets.append(target)
        return torch.stack(targets)

    def semantic_loss(self, sem_logits: Tensor,
                      batch_gt_instances: InstanceList) -> Tensor:
        """Focal loss of the auxiliary per-pixel classification at
        ``semantic_stride``.

        Targets come from :meth:`semantic_targets`; the loss is averaged
        over the number of foreground cells in the batch (at least 1).

        Args:
            sem_logits (Tensor): Semantic logits (B, num_classes, h, w).
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks`` and ``labels``.

        Returns:
            Tensor: The semantic loss (``loss_semantic``), a scalar.
        """
        b, c, h, w = sem_logits.shape
        stride = self.semantic_stride
        targets = self.semantic_targets(batch_gt_instances, stride, (h, w))
        targets = targets.flatten()
        # a tensor, not a float: no host sync in the training step
        num_pos = (targets < self.num_classes).sum().float().clamp(min=1.)
        # float32 under autocast: the loss is exact
        return self.loss_semantic(
            sem_logits.float().permute(0, 2, 3, 1).reshape(-1, c), targets,
            avg_factor=num_pos)
