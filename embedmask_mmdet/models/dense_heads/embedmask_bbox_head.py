"""EmbedMask box head: FCOS plus a proposal embedding and margin per location
(its targets and losses in ``embedmask_bbox_loss.py``, its detections in
``embedmask_bbox_predict.py``)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import Scale
from mmdet.models.dense_heads import CondInstBboxHead, FCOSHead
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils import (Float32Conv2d, autocast_off, check_choice,
                     check_embed_dim, prior_margin_bias, proposal_margin)
from ..utils.inference_settings import SCORE_TYPES  # noqa: F401
from ..utils.inference_settings import BoxInferenceSettings, HeadSettings
from .embedmask_bbox_loss import EmbedMaskBboxLossMixin
from .embedmask_bbox_predict import EmbedMaskBboxPredictMixin

PROPOSAL_HEADS = ('conv1_conv3', 'conv3')
MARGIN_TYPES = ('per_dim', 'scalar', 'fixed')


def _check_choice(name: str, value, choices: Sequence) -> None:
    check_choice('EmbedMaskBboxHead', name, value, choices)


class ProposalEmbeddingHead(nn.Module):
    """Predicts the raw proposal embedding and log-margin from the box tower.

    ``conv1_conv3`` (AdelaiDet port): a 1x1 conv to ``channels`` before each
    3x3 prediction conv; ``conv3`` (authors' FCOS repo): 3x3 convs directly on
    the tower. The margin branch sees the tower divided by
    ``margin_reduce_factor`` so that exp() starts in a tame range.

    Output: [embedding conv output (D), log-margin (D)], returned by
    :meth:`forward` as two (B, D, H, W) tensors, which the caller turns into
    the (B, 2D, H, W) ``param_pred`` [embedding, margin = exp(log-margin)].
    The spatial log-margins are multiplied by a per-level scale by the caller
    (``margin_type='per_dim'`` only).

    Args:
        in_channels (int): Channels of the box (regression) tower.
        embed_dim (int): D, the embedding size.
        proposal_head (str): 'conv1_conv3' or 'conv3' (see above).
        margin_type (str): 'per_dim' (a D-channel margin conv), 'scalar' (a
            1-channel margin conv, expanded to D) or 'fixed' (no margin
            conv: the log-margin is the constant
            ``prior_margin_bias(prior_margin)``).
        prior_margin (float): m, the distance at which p = 0.5 at init; sets
            the margin conv's initial bias (or the fixed log-margin).
        margin_reduce_factor (float): The margin branch sees the tower
            divided by this.
        channels (int): Width of the 1x1 reduce convs of 'conv1_conv3'
            (unused by 'conv3'). Defaults to 128.
    """

    def __init__(self, in_channels: int, embed_dim: int, proposal_head: str,
                 margin_type: str, prior_margin: float,
                 margin_reduce_factor: float, channels: int = 128) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.margin_type = margin_type
        self.margin_reduce_factor = margin_reduce_factor
        self.margin_bias = prior_margin_bias(prior_margin)
        pred_in = channels if proposal_head == 'conv1_conv3' else in_channels

        def reduce_conv():
            if proposal_head != 'conv1_conv3':
                return nn.Identity()
            return nn.Conv2d(in_channels, channels, 1)

        self.embed_reduce = reduce_conv()
        self.embed_conv = nn.Conv2d(pred_in, embed_dim, 3, padding=1)
        if margin_type == 'fixed':
            self.register_buffer('fixed_log_margin',
                                 torch.tensor(self.margin_bias),
                                 persistent=False)
        else:
            self.margin_reduce = reduce_conv()
            self.margin_conv = nn.Conv2d(
                pred_in, embed_dim if margin_type == 'per_dim' else 1, 3,
                padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0.01) convs; margin bias log(ln2/m^2) so p(m) = 0.5 at init.

        Called again by mmengine after the head's ``init_cfg`` (which would
        otherwise reset the margin bias to 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if self.margin_type != 'fixed':
            nn.init.constant_(self.margin_conv.bias, self.margin_bias)

    def log_margin_conv(self, tower_feat: Tensor) -> Tensor:
        """The margin branch on tower / ``margin_reduce_factor``, with the
        division folded into the first conv's weight: a conv is linear, and
        autograd would keep a divided copy of the tower for the backward.

        Only for ``margin_type`` 'per_dim' or 'scalar' ('fixed' has no
        margin convs).

        Args:
            tower_feat (Tensor): Box tower features (B, in_channels, H, W).

        Returns:
            Tensor: Raw log-margins (B, D, H, W) for 'per_dim', (B, 1, H, W)
            for 'scalar'.
        """
        convs = [m for m in (self.margin_reduce, self.margin_conv)
                 if isinstance(m, nn.Conv2d)]
        first = convs[0]
        out = F.conv2d(tower_feat, first.weight / self.margin_reduce_factor,
                       first.bias, first.stride, first.padding, first.dilation,
                       first.groups)
        for conv in convs[1:]:
            out = conv(out)
        return out

    def forward(self, tower_feat: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns embedding conv output and log-margin, each (B, D, H, W),
        float32 even under autocast (see models/utils/precision)."""
        with autocast_off(tower_feat):
            return self._forward(tower_feat.float())

    def _forward(self, tower_feat: Tensor) -> Tuple[Tensor, Tensor]:
        embed = self.embed_conv(self.embed_reduce(tower_feat))
        b, _, h, w = tower_feat.shape
        if self.margin_type == 'fixed':
            log_margin = self.fixed_log_margin.expand(b, self.embed_dim, h, w)
        else:
            log_margin = self.log_margin_conv(tower_feat)
            log_margin = log_margin.expand(b, self.embed_dim, h, w)
        return embed, log_margin


@MODELS.register_module()
class EmbedMaskBboxHead(EmbedMaskBboxLossMixin, EmbedMaskBboxPredictMixin,
                        CondInstBboxHead):
    """FCOS head that also predicts, at every location, the proposal embedding
    q (D values) and the proposal margin s (D values) of EmbedMask.

    Reuses ``CondInstBboxHead`` for target assignment (positives with their gt
    indices), ``get_positive_infos`` and carrying per-location parameters
    through NMS: its ``param_preds`` are here [embedding conv output, margin],
    which :meth:`get_positive_infos` and :meth:`predict_by_feat` split into the
    ``embeddings`` and ``margins`` fields. Image coordinates are added to the
    spatial embedding by the mask head, which owns the coordinate scale shared
    by proposals and pixels.

    Args:
        embed_dim (int): D, the embedding size (2 spatial + D-2 free).
        prior_margin (float): m, the distance at which p = 0.5 at init.
        margin_reduce_factor (float): The margin conv sees tower / this.
        proposal_head (str): 'conv1_conv3' (AdelaiDet) or 'conv3' (FCOS repo).
        proposal_channels (int): Width of the 1x1 reduce conv of 'conv1_conv3'.
        margin_type (str): 'per_dim' (one s per dimension), 'scalar' (one s
            shared by all dimensions, arXiv v1/v2) or 'fixed' (ln2/m^2).
        sample_in_mask (bool): A location may only take a gt whose mask
            holds it, tested before the smallest-area choice (FCOS-repo
            design).
        center_sample_on (str): Centre of the centre-sampling region: 'mask'
            (mask centroid, mmdet CondInst / AdelaiDet) or 'box' (box centre,
            FCOS repo).
        start_level (int): First neck output the head reads: 1 when the neck
            also outputs P2 for the pixel branch ('p2p5_fusion').

    ``test_cfg`` is read through ``self.settings``
    (:class:`BoxInferenceSettings`, resolved and validated from it).
    """

    settings = HeadSettings(BoxInferenceSettings)

    def __init__(self,
                 *args,
                 embed_dim: int = 16,
                 prior_margin: float = 2.0,
                 margin_reduce_factor: float = 32.,
                 proposal_head: str = 'conv1_conv3',
                 proposal_channels: int = 128,
                 margin_type: str = 'per_dim',
                 sample_in_mask: bool = False,
                 center_sample_on: str = 'mask',
                 start_level: int = 0,
                 **kwargs) -> None:
        check_embed_dim('EmbedMaskBboxHead', embed_dim)
        if prior_margin <= 0:
            raise ValueError('EmbedMaskBboxHead: prior_margin must be > 0, got '
                             f'{prior_margin!r}')
        if margin_reduce_factor <= 0:
            raise ValueError('EmbedMaskBboxHead: margin_reduce_factor must be '
                             f'> 0, got {margin_reduce_factor!r}')
        _check_choice('proposal_head', proposal_head, PROPOSAL_HEADS)
        _check_choice('margin_type', margin_type, MARGIN_TYPES)
        self.embed_dim = embed_dim
        self.prior_margin = prior_margin
        self.margin_reduce_factor = margin_reduce_factor
        self.proposal_head = proposal_head
        self.proposal_channels = proposal_channels
        self.margin_type = margin_type
        self.sample_in_mask = sample_in_mask
        _check_choice('center_sample_on', center_sample_on, ('mask', 'box'))
        self.center_sample_on = center_sample_on
        if not isinstance(start_level, int) or start_level < 0:
            raise ValueError('EmbedMaskBboxHead: start_level must be an int '
                             f'>= 0, got {start_level!r}')
        self.start_level = start_level
        super().__init__(*args, num_params=2 * embed_dim, **kwargs)
        self.settings  # resolved now: a bad test_cfg fails the build

    def _init_layers(self) -> None:
        # FCOS towers and predictors; CondInst's dynamic-parameter conv is
        # replaced by the embedding/margin head
        FCOSHead._init_layers(self)
        # float32 islands under autocast (see models/utils/precision): the
        # class, box and centerness prediction convs. Their bf16 outputs (3
        # significant digits) move box sides and scores near score_thr,
        # NMS and AP's IoU thresholds; in float32 they cost nothing
        # measurable (a few output channels). docs/design.md, numerics.
        for name in ('conv_cls', 'conv_reg', 'conv_centerness'):
            conv = getattr(self, name)
            setattr(self, name, Float32Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size,
                stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None))
        # in CondInst's place of the dynamic-parameter 'controller': the
        # proposal embedding/margin head
        self.embedding_head = ProposalEmbeddingHead(
            self.feat_channels, self.embed_dim, self.proposal_head,
            self.margin_type, self.prior_margin, self.margin_reduce_factor,
            self.proposal_channels)
        # per-level scales of the spatial log-margins, which only the
        # per-dimension margin has (unused parameters would break DDP)
        self.margin_scales = nn.ModuleList(
            [Scale(1.0) for _ in self.strides]) \
            if self.margin_type == 'per_dim' else None

    def forward(self, x: Tuple[Tensor]) -> Tuple[List[Tensor], ...]:
        """Returns cls scores, bbox preds, centernesses and param preds
        ([embedding, margin], 2D channels) of every level."""
        x = x[self.start_level:]
        if len(x) != len(self.strides):
            # zip() below would silently drop levels
            raise ValueError(
                f'EmbedMaskBboxHead: got {len(x)} neck levels from '
                f'start_level={self.start_level} but strides has '
                f'{len(self.strides)}; make neck.num_outs - start_level equal '
                'len(bbox_head.strides)')
        margin_scales = self.margin_scales if self.margin_scales is not None \
            else [None] * len(self.strides)
        return multi_apply(self.forward_single, x, self.scales, self.strides,
                           margin_scales)

    def forward_single(self, x: Tensor, scale: Scale, stride: int,
                       margin_scale: Optional[Scale] = None
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forward features of a single scale level.

        As ``CondInstBboxHead.forward_single`` (see there), except that all
        four outputs are float32 even under autocast and ``param_pred``
        comes from :class:`ProposalEmbeddingHead` (not CondInst's
        ``controller``): the embedding conv output and the margin
        s = exp(log-margin) (:func:`proposal_margin`), the spatial
        log-margins first multiplied by ``margin_scale`` with
        ``margin_type='per_dim'``.

        Args:
            x (Tensor): Neck features of this level, (B, C, H, W).
            scale (:obj:`mmcv.cnn.Scale`): Learnable scale of the bbox
                prediction.
            stride (int): Stride of this level; with ``norm_on_bbox`` the
                bbox prediction is multiplied by it at test time.
            margin_scale (:obj:`mmcv.cnn.Scale`, optional): Learnable
                scale of this level's spatial log-margins ('per_dim' only).
                Defaults to None.

        Returns:
            tuple[Tensor, Tensor, Tensor, Tensor]: float32 tensors:

            - cls_score (Tensor): Class logits (B, num_classes, H, W).
            - bbox_pred (Tensor): Distances (l, t, r, b), (B, 4, H, W); in
              stride units during training with ``norm_on_bbox``, else in
              pixels.
            - centerness (Tensor): Centerness logits (B, 1, H, W).
            - param_pred (Tensor): (B, 2D, H, W), [embedding conv output
              (D), margin s > 0 (D)].
        """
        cls_score, bbox_pred, cls_feat, reg_feat = \
            super(FCOSHead, self).forward_single(x)
        centerness = self.conv_centerness(
            reg_feat if self.centerness_on_reg else cls_feat).float()
        # float32 from here under autocast: scores meet score_thr and NMS,
        # and exp() of a bf16 log-margin is 0.4% off
        cls_score, bbox_pred = cls_score.float(), scale(bbox_pred).float()
        if self.norm_on_bbox:
            bbox_pred = bbox_pred.clamp(min=0)
            if not self.training:
                bbox_pred = bbox_pred * stride
        else:
            bbox_pred = bbox_pred.exp()
        embed, log_margin = (t.float() for t in self.embedding_head(reg_feat))
        if margin_scale is not None and self.margin_type == 'per_dim':
            # per-level scale on the spatial margins: objects of different
            # levels have different extents in image coordinates
            log_margin = torch.cat(
                [margin_scale(log_margin[:, :2]), log_margin[:, 2:]], dim=1)
        param_pred = torch.cat([embed, proposal_margin(log_margin)], dim=1)
        return cls_score, bbox_pred, centerness, param_pred

    def _split_params(self, results: InstanceData) -> InstanceData:
        params = results.pop('param_preds')
        results.embeddings = params[:, :self.embed_dim]
        results.margins = params[:, self.embed_dim:]
        return results
