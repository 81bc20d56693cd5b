"""Convert an AdelaiDet EmbedMask checkpoint to an embedmask-mmdet checkpoint.

    python tools/model_converters/adelaidet2mmdet.py SRC DST [--config CFG]

SRC: an AdelaiDet (detectron2) checkpoint, ``.pth`` or ``.pkl``, weights
under ``model`` (or a bare state dict), e.g. the authors' published
EmbedMask_R_50_1x.pth / EmbedMask_R_101_3x.pth. DST: an mmdet checkpoint for
CFG (default: the reference-exact R-50 or R-101 config, chosen by the
depth found in SRC), loadable by mmdet's ``tools/test.py``.

Every source tensor maps onto exactly one model tensor (the spatial/free
embedding and margin convs, two convs in AdelaiDet, are concatenated into
our one conv each). The conversion is refused, with lists, if a source key
has no rule, a model key gets no tensor, or a shape differs.
"""
import argparse
import os.path as osp
import pickle
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = {
    50: osp.join(ROOT, 'configs/embedmask/'
                 'embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py'),
    101: osp.join(ROOT, 'configs/embedmask/'
                  'embedmask_r101-caffe_fpn_8xb2-ms-3x_coco.py'),
}
BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'


def _tower(m):
    # detectron2 towers are [conv, GN, ReLU] x 4: index 3i is conv i
    idx, kind = int(m.group(2)), m.group(3)
    part = {0: 'conv', 1: 'gn'}[idx % 3]
    name = {'cls': 'cls_convs', 'bbox': 'reg_convs'}[m.group(1)]
    return f'bbox_head.{name}.{idx // 3}.{part}.{kind}'


# (source regex, target: format string of the groups or a function)
RULES: List[Tuple[str, object]] = [
    (r'backbone\.bottom_up\.stem\.conv1\.weight', 'backbone.conv1.weight'),
    (rf'backbone\.bottom_up\.stem\.conv1\.norm\.{BN}', 'backbone.bn1.{0}'),
    (r'backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight',
     lambda m: f'backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.'
     f'conv{m.group(3)}.weight'),
    (rf'backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.{BN}',
     lambda m: f'backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.'
     f'bn{m.group(3)}.{m.group(4)}'),
    (r'backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight',
     lambda m: f'backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.'
     'downsample.0.weight'),
    (rf'backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.{BN}',
     lambda m: f'backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.'
     f'downsample.1.{m.group(3)}'),
    (r'backbone\.fpn_lateral(\d)\.(weight|bias)',
     lambda m: f'neck.lateral_convs.{int(m.group(1)) - 3}.conv.{m.group(2)}'),
    (r'backbone\.fpn_output(\d)\.(weight|bias)',
     lambda m: f'neck.fpn_convs.{int(m.group(1)) - 3}.conv.{m.group(2)}'),
    (r'backbone\.top_block\.p(6|7)\.(weight|bias)',
     lambda m: f'neck.fpn_convs.{int(m.group(1)) - 3}.conv.{m.group(2)}'),
    (r'proposal_generator\.fcos_head\.(cls|bbox)_tower\.(\d+)\.(weight|bias)',
     _tower),
    (r'proposal_generator\.fcos_head\.cls_logits\.(weight|bias)',
     'bbox_head.conv_cls.{0}'),
    (r'proposal_generator\.fcos_head\.bbox_pred\.(weight|bias)',
     'bbox_head.conv_reg.{0}'),
    (r'proposal_generator\.fcos_head\.ctrness\.(weight|bias)',
     'bbox_head.conv_centerness.{0}'),
    (r'proposal_generator\.fcos_head\.scales\.(\d)\.scale',
     'bbox_head.scales.{0}.scale'),
    (r'proposal_head\.embed_conv\.(weight|bias)',
     'bbox_head.embedding_head.embed_reduce.{0}'),
    (r'proposal_head\.margin_conv\.(weight|bias)',
     'bbox_head.embedding_head.margin_reduce.{0}'),
    (r'proposal_head\.margin_scales\.(\d)\.scale',
     'bbox_head.margin_scales.{0}.scale'),
    (r'mask_branch\.refine\.(\d)\.0\.weight',
     'mask_head.pixel_branch.convs_all_levels.{0}.conv{0}.conv.weight'),
    (rf'mask_branch\.refine\.(\d)\.1\.{BN}',
     'mask_head.pixel_branch.convs_all_levels.{0}.conv{0}.bn.{1}'),
    (r'mask_branch\.tower\.(\d)\.0\.weight',
     'mask_head.pixel_branch.conv_branch.{0}.conv.weight'),
    (rf'mask_branch\.tower\.(\d)\.1\.{BN}',
     'mask_head.pixel_branch.conv_branch.{0}.bn.{1}'),
    # the last tower conv: plain, with bias
    (r'mask_branch\.tower\.(\d)\.(weight|bias)',
     'mask_head.pixel_branch.conv_branch.{0}.{1}'),
    (r'mask_branch\.seg_head\.(\d)\.0\.weight',
     'mask_head.semantic_convs.{0}.conv.weight'),
    (rf'mask_branch\.seg_head\.(\d)\.1\.{BN}',
     'mask_head.semantic_convs.{0}.bn.{1}'),
    (r'mask_branch\.logits\.(weight|bias)', 'mask_head.semantic_logits.{0}'),
]
# two AdelaiDet convs (spatial: 2 channels, free: D-2) -> one conv of D
CONCAT_RULES: List[Tuple[str, str, str]] = [
    (r'proposal_head\.embed_head\.spatial_embed_head\.(weight|bias)',
     'proposal_head.embed_head.free_embed_head.{0}',
     'bbox_head.embedding_head.embed_conv.{0}'),
    (r'proposal_head\.spatial_margin_head\.(weight|bias)',
     'proposal_head.free_margin_head.{0}',
     'bbox_head.embedding_head.margin_conv.{0}'),
    (r'pixel_head\.spatial_embed_head\.(weight|bias)',
     'pixel_head.free_embed_head.{0}', 'mask_head.pixel_branch.conv_pred.{0}'),
]
# training-state buffers of AdelaiDet's MaskPred (an iteration counter and
# FCOS size constants that live in our config): not weights
IGNORED = (r'mask_pred\._iter', r'mask_pred\.sizes_of_interest')


class ConversionError(ValueError):
    """The checkpoint does not fit the model; the message lists why."""


def load_adelaidet(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a detectron2 checkpoint (.pth / .pkl), float32."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    if path.endswith('.pkl'):
        with open(path, 'rb') as f:
            ckpt = pickle.load(f, encoding='latin1')
    else:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    state = ckpt.get('model', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ConversionError(f'{path}: no state dict found (expected the '
                              "weights under 'model' or a bare state dict)")
    out = OrderedDict()
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not torch.is_tensor(value):
            continue
        # the published and reference files may hold float16
        out[key] = value.float() if value.is_floating_point() else value
    return out


def map_keys(src: Dict[str, torch.Tensor]):
    """Applies RULES and CONCAT_RULES. Returns (mapped state dict, list of
    (source keys, target key), unmapped source keys, ignored source keys)."""
    dst, pairs, unmapped, ignored, used = OrderedDict(), [], [], [], set()
    for key, value in src.items():
        for pattern, free_fmt, out_fmt in CONCAT_RULES:
            m = re.fullmatch(pattern, key)
            if m:
                free = free_fmt.format(*m.groups())
                if free not in src:
                    raise ConversionError(f'{key} has no partner {free}')
                target = out_fmt.format(*m.groups())
                dst[target] = torch.cat([value, src[free]])
                used.update((key, free))
                pairs.append(((key, free), target))
    for key, value in src.items():
        if key in used:
            continue
        if any(re.fullmatch(p, key) for p in IGNORED):
            ignored.append(key)
            continue
        for pattern, fmt in RULES:
            m = re.fullmatch(pattern, key)
            if m:
                target = fmt(m) if callable(fmt) else fmt.format(*m.groups())
                dst[target] = value
                pairs.append(((key, ), target))
                break
        else:
            unmapped.append(key)
    return dst, pairs, unmapped, ignored


def fit_to_model(dst: Dict[str, torch.Tensor],
                 model_state: Dict[str, torch.Tensor]) -> List[str]:
    """Checks ``dst`` against the model's state dict (in place: scalars are
    reshaped, BN counters detectron2's FrozenBN lacks are created). Raises
    ConversionError listing missing / unexpected keys and shape mismatches;
    returns the created keys."""
    created = []
    for key, ref in model_state.items():
        if key not in dst and key.endswith('num_batches_tracked') and \
                key[:-len('num_batches_tracked')] + 'running_mean' in dst:
            dst[key] = torch.zeros_like(ref)
            created.append(key)
    missing = [k for k in model_state if k not in dst]
    unexpected = [k for k in dst if k not in model_state]
    shapes = []
    for key, value in dst.items():
        ref = model_state.get(key)
        if ref is None:
            continue
        if value.numel() == ref.numel() == 1 and value.shape != ref.shape:
            dst[key] = value.reshape(ref.shape)  # Scale: [1] vs []
        elif value.shape != ref.shape:
            shapes.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                          f'{tuple(ref.shape)}')
        dst[key] = dst[key].to(ref.dtype)
    problems = []
    for title, items in (('model keys with no tensor', missing),
                         ('converted keys the model does not have', unexpected),
                         ('shape mismatches', shapes)):
        if items:
            problems.append(f'{len(items)} {title}:\n  ' + '\n  '.join(items))
    if problems:
        raise ConversionError('the checkpoint does not fit the model: ' +
                              '\n'.join(problems))
    return created


def resnet_depth(src: Dict[str, torch.Tensor]) -> Optional[int]:
    blocks = {int(m.group(1)) for k in src for m in
              [re.match(r'backbone\.bottom_up\.res4\.(\d+)\.', k)] if m}
    return {6: 50, 23: 101}.get(len(blocks))


def build_model_state(config: str) -> Dict[str, torch.Tensor]:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config)
    return MODELS.build(cfg.model).state_dict()


def convert(src: Dict[str, torch.Tensor], model_state: Dict[str, torch.Tensor],
            log=print) -> 'OrderedDict[str, torch.Tensor]':
    """AdelaiDet state dict -> state dict of the model ``model_state`` comes
    from; raises ConversionError if any key is unmapped, missing or of
    another shape."""
    dst, pairs, unmapped, ignored = map_keys(src)
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} checkpoint keys have no conversion rule (is it '
            'an AdelaiDet EmbedMask checkpoint?):\n  ' + '\n  '.join(unmapped))
    created = fit_to_model(dst, model_state)
    log(f'mapped {len(pairs)} model tensors from {sum(len(s) for s, _ in pairs)}'
        f' checkpoint tensors ({sum(len(s) == 2 for s, _ in pairs)} of them '
        'spatial+free pairs concatenated)')
    for sources, target in pairs:
        log(f'  {" + ".join(sources)} -> {target}')
    log(f'ignored {len(ignored)} training-state buffers: {", ".join(ignored)}')
    log(f'created {len(created)} BatchNorm counters (zeros) that detectron2 '
        "FrozenBN has no tensor for")
    return OrderedDict((k, dst[k]) for k in model_state)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='AdelaiDet EmbedMask checkpoint (.pth/.pkl)')
    parser.add_argument('dst', help='output mmdet checkpoint (.pth)')
    parser.add_argument('--config', help='embedmask-mmdet config of the '
                        'model (default: reference-exact R-50/R-101 by depth)')
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    import embedmask_mmdet  # noqa: F401  (registers the modules)
    try:
        src = load_adelaidet(args.src)
        config = args.config
        if config is None:
            depth = resnet_depth(src)
            if depth not in CONFIGS:
                raise ConversionError(
                    f'{args.src}: ResNet depth not recognised (res4 blocks); '
                    'pass --config')
            config = CONFIGS[depth]
        print(f'config: {config}')
        state = convert(src, build_model_state(config))
    except (ConversionError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    torch.save({'state_dict': state,
                'meta': {'converted_from': osp.abspath(args.src),
                         'config': config}}, args.dst)
    print(f'wrote {args.dst} ({len(state)} tensors)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
