"""EmbedMask's pixel-embedding branches as mmdet ``MaskFeatModule`` settings.

The published (AdelaiDet) branch is mmdet's CondInst mask branch plus one
3x3 conv to 128 channels (AdelaiDet ``MaskBranch.tower[-1]``) and a 3x3
prediction conv to D (``EmbedHead``: 2 spatial + D-2 free channels as one
conv). Levels are indices into the neck outputs.
"""
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import caffe2_xavier_init, constant_init
from mmdet.models.dense_heads.condinst_head import MaskFeatModule

from ..utils import Float32Conv2d

# init of the normed convs: AdelaiDet's conv_with_kaiming_uniform, or the
# FCOS repo's Normal(0.01)
CONV_INITS = ('kaiming_uniform', 'normal')

PIXEL_BRANCHES = {
    # AdelaiDet (the published model): P3-P5 fused with aligned_bilinear,
    # 4 BN convs, a 3x3 conv to 128, a 3x3 conv to D; p at stride 8
    'p3p5_fusion': dict(start_level=0, end_level=2, feat_channels=128,
                        num_stacked_convs=4, norm_cfg=dict(type='BN'),
                        out_conv=True, pred_kernel_size=3,
                        upsample_embedding=False, conv_init='kaiming_uniform'),
    # authors' FCOS repo (v3): 4 convs with bias + GN on P3 only (the
    # level conv and 3 stacked), 3x3 prediction conv, the coordinates
    # added at stride 8, then the embedding upsampled x2 to stride 4
    'p3_tower': dict(start_level=0, end_level=0, feat_channels=256,
                     num_stacked_convs=3,
                     norm_cfg=dict(type='GN', num_groups=32),
                     out_conv=False, pred_kernel_size=3, conv_bias=True,
                     upsample_embedding=True, coords_before_upsample=True,
                     conv_init='normal'),
    # not in the paper: P2-P5 fused at stride 4 (the neck must also output P2
    # as level 0, the box head then reads from level 1), so small objects'
    # embeddings get stride-4 detail instead of an upsampled stride-8 map
    'p2p5_fusion': dict(start_level=0, end_level=3, feat_channels=128,
                        num_stacked_convs=4, norm_cfg=dict(type='BN'),
                        out_conv=False, pred_kernel_size=1,
                        upsample_embedding=False, mask_stride=4,
                        conv_init='kaiming_uniform'),
}


class EmbedMaskPixelBranch(MaskFeatModule):
    """mmdet's ``MaskFeatModule`` with AdelaiDet's head: ``out_conv`` appends
    a plain 3x3 conv (with bias, no norm/activation) to ``conv_branch``,
    ``pred_kernel_size`` sets the prediction conv's kernel (mmdet: 1) and
    ``conv_init`` the authors' init of the normed convs: 'kaiming_uniform'
    (AdelaiDet) or 'normal' (Normal(0.01), bias 0: the FCOS repo's tower).
    ``conv_bias`` gives the normed convs a bias (mmdet builds them without):
    the FCOS repo's tower has one, and under GroupNorm a per-channel bias
    is not cancelled (only the mean over a group of channels is).

    Output: (B, out_channels, H, W) at ``mask_stride``.
    """

    def __init__(self, *args, out_conv: bool = False,
                 pred_kernel_size: int = 1,
                 conv_init: str = 'kaiming_uniform',
                 conv_bias: bool = False, **kwargs) -> None:
        if pred_kernel_size not in (1, 3):
            raise ValueError('EmbedMaskMaskHead: pixel_branch.pred_kernel_size '
                             f'must be 1 or 3, got {pred_kernel_size!r}')
        if conv_init not in CONV_INITS:
            raise ValueError('EmbedMaskMaskHead: pixel_branch.conv_init must '
                             f'be one of {CONV_INITS}, got {conv_init!r}')
        self.conv_init = conv_init
        self.out_conv = bool(out_conv)
        self.pred_kernel_size = pred_kernel_size
        self.conv_bias = bool(conv_bias)
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        if self.conv_bias:
            for module in self.modules():
                if isinstance(module, ConvModule):
                    conv = module.conv
                    conv.bias = nn.Parameter(conv.weight.new_zeros(
                        conv.out_channels))
                    module.with_bias = True
        if self.out_conv:
            self.conv_branch.append(nn.Conv2d(
                self.feat_channels, self.feat_channels, 3, padding=1))
        # the embeddings: float32 under autocast (see models/utils/precision)
        self.conv_pred = Float32Conv2d(
            self.feat_channels, self.out_channels, self.pred_kernel_size,
            padding=self.pred_kernel_size // 2)

    def init_weights(self) -> None:
        """The authors' initialisation (AdelaiDet ``MaskBranch``).

        mmdet's ``MaskFeatModule.init_weights`` calls ``kaiming_init`` on
        its ``ModuleList``/``Sequential`` containers, which have no
        ``.weight``: a no-op that leaves every conv at the init_cfg's
        Normal(0.01). AdelaiDet builds the fusion and tower convs with
        ``conv_with_kaiming_uniform`` (``kaiming_uniform_(a=1)``, i.e.
        U(+-sqrt(3 / fan_in)), no bias, norm 1/0) and leaves the plain 3x3
        conv closing the tower at torch's default. The prediction conv
        (Normal(0.01), bias 0) is set by the mask head.
        """
        super().init_weights()
        if self.conv_init == 'normal':
            return  # the init_cfg's Normal(0.01), bias 0, is the FCOS repo's
        for module in self.modules():
            if isinstance(module, ConvModule):
                authors_conv_init(module)
        if self.out_conv:
            self.conv_branch[-1].reset_parameters()


def authors_conv_init(module: ConvModule) -> None:
    """AdelaiDet's ``conv_with_kaiming_uniform``: kaiming_uniform_(a=1) on the
    conv, bias 0, norm weight 1 and bias 0."""
    caffe2_xavier_init(module.conv, bias=0)
    if module.with_norm:
        constant_init(module.norm, 1, bias=0)
