"""EmbedMask mask head: pixel embedding and mask probability (its losses in
``embedmask_mask_loss.py``, its test-time masks in
``embedmask_mask_predict.py``)."""
import copy
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads.base_mask_head import BaseMaskHead
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils import (check_choice, check_embed_dim, location_map,
                     mask_probability, spatial_embedding)
from ..utils.inference_settings import MASK_RESAMPLES  # noqa: F401
from ..utils.inference_settings import HeadSettings, MaskInferenceSettings
from ..utils.mask_targets import ALIGNMENTS, upsample_prob
from .embedmask_mask_loss import EmbedMaskMaskLossMixin
from .embedmask_mask_predict import EmbedMaskMaskPredictMixin
from .pixel_branch import (PIXEL_BRANCHES, EmbedMaskPixelBranch,
                           authors_conv_init)

__all__ = ['EmbedMaskMaskHead']

SAMPLINGS = ('all_positives', 'best_iou_per_gt')
# mask loss normalisation: mean over the batch's instances (AdelaiDet), or
# mean per image, summed, / images incl. empty ones (FCOS repo)
LOSS_MASK_NORMS = ('instances', 'images')


@MODELS.register_module()
class EmbedMaskMaskHead(EmbedMaskMaskLossMixin, EmbedMaskMaskPredictMixin,
                        BaseMaskHead):
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
