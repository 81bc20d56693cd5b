import warnings
import weakref
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from mmdet.models.detectors.single_stage_instance_seg import \
    SingleStageInstanceSegmentor
from mmdet.registry import MODELS
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.logging import MessageHub
from torch import Tensor

NONFINITE_LOSS = ('raise', 'warn')


# torch.compile'd backbone + neck per model, outside the module: state-dict
# keys, deepcopy (EMA) and pickling stay those of the plain model
_COMPILED = weakref.WeakKeyDictionary()


def compiled_feat(model) -> Callable:
    """``torch.compile`` of the model's backbone + neck forward, made on
    first use with ``model.compile_feat``'s arguments (``True``: torch's
    defaults)."""
    fn = _COMPILED.get(model)
    if fn is None:
        kwargs = model.compile_feat if isinstance(model.compile_feat,
                                                  dict) else {}
        fn = torch.compile(
            partial(SingleStageInstanceSegmentor.extract_feat, model),
            **kwargs)
        _COMPILED[model] = fn
    return fn


def all_ranks_true(flag: Tensor) -> bool:
    """Whether a bool scalar is true on every rank (an all-reduce of its
    minimum; just ``bool(flag)`` outside distributed training)."""
    if get_world_size() == 1:
        return bool(flag)
    flag = flag.to(torch.int32).reshape(1)
    all_reduce(flag, op='min')
    return bool(flag)


@MODELS.register_module()
class EmbedMask(SingleStageInstanceSegmentor):
    """EmbedMask (Ying et al., arXiv 1912.01954): an FCOS detector whose
    detections carry an embedding and a margin, with masks made of the pixels
    whose embeddings lie within the margin.

    ``bbox_head`` is an :class:`EmbedMaskBboxHead`, ``mask_head`` an
    :class:`EmbedMaskMaskHead`; training, inference and the data flow between
    the heads are those of :class:`SingleStageInstanceSegmentor`.

    ``nonfinite_loss`` says what a NaN/inf loss term does, checked in
    :meth:`loss`, i.e. before backward: 'raise' (default) raises
    ``FloatingPointError`` naming the term and the iteration, so the weights
    (and the checkpoints) stay those of the last finite iteration; 'warn'
    warns and replaces all losses of that iteration by zeros (zero gradients;
    the optimizer still applies momentum and weight decay). Either way the
    BatchNorm running statistics that forward pass updated are restored. In
    distributed training the check is all-reduced, so every rank raises (or
    skips the iteration) together instead of one rank leaving the others in
    the gradient all-reduce until the NCCL timeout.

    ``channels_last=True`` keeps images and conv weights in NHWC memory
    layout: the same results, and oneDNN's CPU convolutions (depthwise ones
    above all) run much faster in it (about 1.2-1.5x per training step on
    the CPU configs). Checkpoints are layout-independent.

    ``compile_feat=True`` (or a dict of ``torch.compile`` arguments, e.g.
    ``dict(mode='max-autotune')``) runs the backbone and neck through
    ``torch.compile`` (made on the first forward; the heads, whose shapes
    change with the number of detections, stay eager). Parameters and
    checkpoints are unchanged.
    """

    def __init__(self, *args, nonfinite_loss: str = 'raise',
                 channels_last: bool = False, compile_feat=False,
                 **kwargs) -> None:
        if nonfinite_loss not in NONFINITE_LOSS:
            raise ValueError(f'EmbedMask: nonfinite_loss={nonfinite_loss!r} '
                             f'is not supported; use one of {NONFINITE_LOSS}')
        super().__init__(*args, **kwargs)
        self.nonfinite_loss = nonfinite_loss
        self.channels_last = bool(channels_last)
        if not isinstance(compile_feat, (bool, dict)):
            raise ValueError('EmbedMask: compile_feat must be a bool or a '
                             'dict of torch.compile arguments, got '
                             f'{compile_feat!r}')
        self.compile_feat = compile_feat
        if self.channels_last:
            # 4-D weights only; init and checkpoint loading copy in place,
            # which keeps the layout
            self.to(memory_format=torch.channels_last)
        box_dim = getattr(self.bbox_head, 'embed_dim', None)
        mask_dim = getattr(self.mask_head, 'embed_dim', None)
        box_classes = getattr(self.bbox_head, 'num_classes', None)
        mask_classes = getattr(self.mask_head, 'num_classes', None)
        if None not in (box_classes, mask_classes) and \
                box_classes != mask_classes:
            raise ValueError(
                f'EmbedMask: bbox_head.num_classes ({box_classes}) and '
                f'mask_head.num_classes ({mask_classes}) must be equal; set '
                'both to the number of classes of your dataset')
        if box_dim is not None and mask_dim is not None and box_dim != mask_dim:
            raise ValueError(
                f'EmbedMask: bbox_head.embed_dim ({box_dim}) and '
                f'mask_head.embed_dim ({mask_dim}) must be equal')

    def extract_feat(self, batch_inputs):
        """Extract features, as ``SingleStageInstanceSegmentor``.

        The only difference from the parent: with ``channels_last=True`` the
        images are first made contiguous in NHWC memory layout.

        Args:
            batch_inputs (Tensor): Images (N, C, H, W).

        Returns:
            tuple[Tensor]: Multi-level features of the backbone (and neck),
            each (N, C_l, H_l, W_l).
        """
        if self.channels_last:
            batch_inputs = batch_inputs.contiguous(
                memory_format=torch.channels_last)
        if self.compile_feat:
            return compiled_feat(self)(batch_inputs)
        return super().extract_feat(batch_inputs)

    def loss(self, batch_inputs, batch_data_samples) -> dict:
        """mmdet's losses, checked for NaN/inf per ``nonfinite_loss``.

        Runs ``SingleStageInstanceSegmentor.loss`` (see there), then checks
        every entry whose key contains 'loss'. If one is not finite, the
        BatchNorm running statistics are restored to their values before
        the forward pass and, with 'raise', ``FloatingPointError`` is
        raised; with 'warn', a warning is issued and each such entry is
        replaced by one zero scalar that reaches every trainable parameter.

        Args:
            batch_inputs (Tensor): Images (N, C, H, W).
            batch_data_samples (list[:obj:`DetDataSample`]): The batch data
                samples, with ``gt_instances`` (``bboxes``, ``labels``,
                ``masks``) and meta information.

        Returns:
            dict[str, Tensor]: The loss components of both heads (zeroed as
            above after a non-finite loss with 'warn').

        Raises:
            FloatingPointError: A loss term is NaN/inf and
                ``nonfinite_loss='raise'``.
        """
        # the forward pass updates BN running stats before the check
        stats = [b for m in self.modules()
                 if isinstance(m, nn.modules.batchnorm._NormBase)
                 and m.training and m.track_running_stats
                 for b in (m.running_mean, m.running_var,
                           m.num_batches_tracked) if b is not None]
        saved = [b.clone() for b in stats]
        losses = super().loss(batch_inputs, batch_data_samples)
        terms = {k: torch.stack([t.detach().float().sum() for t in (
            v if isinstance(v, (list, tuple)) else [v])])
            for k, v in losses.items() if 'loss' in k}
        if not terms:
            return losses
        finite = torch.isfinite(torch.cat(list(terms.values()))).all()
        # every rank takes the same branch: a rank that raised or skipped
        # alone would leave the others waiting in DDP's all-reduce
        all_finite = all_ranks_true(finite)
        if all_finite:
            return losses  # one device sync per iteration
        bad = ', '.join(f'{k}={t.sum().item()}' for k, t in terms.items()
                        if not torch.isfinite(t).all()) or \
            f'on another rank (this is rank {get_rank()})'
        it = MessageHub.get_current_instance().get_info('iter')
        where = 'outside a training loop' if it is None else \
            f'at iteration {it + 1} (runner.iter={it})'
        msg = f'EmbedMask: non-finite loss {bad} {where}. '
        with torch.no_grad():
            for b, v in zip(stats, saved):
                b.copy_(v)
        if self.nonfinite_loss == 'raise':
            raise FloatingPointError(
                msg + 'Stopped before backward, so the weights and saved '
                'checkpoints are those of the last finite iteration. Lower '
                'the learning rate, keep optim_wrapper.clip_grad, check the '
                "data, or set model.nonfinite_loss='warn' to skip such "
                'iterations.')
        warnings.warn(msg + 'All losses of this iteration are set to 0 '
                      "(model.nonfinite_loss='warn').")
        zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.
        return {k: zero if k in terms else v for k, v in losses.items()}
