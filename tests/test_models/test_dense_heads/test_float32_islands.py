"""The float32 islands (models/utils/precision.py) are float32 under bf16
autocast, every design: each island layer's output equals the same layer
run with autocast off on the same input (float32 throughout; the heads'
forwards upcast to float32 themselves, so float64 is not available
there) to float32 accuracy. This is the
CPU-independent detector of a removed island; the bf16 accuracy tests
(tests/test_deploy/test_reduced_precision.py) only catch it sometimes."""
import copy

import pytest
import torch

from heads_common import DESIGNS, build_heads, pyramid  # noqa: E402

#: the island layers: every output that becomes a score, a box or one of
#: the terms of p = exp(-sum s (x - q)^2)
BBOX_ISLANDS = ('conv_cls', 'conv_reg', 'conv_centerness', 'embedding_head')
MASK_ISLANDS = ('pixel_branch.conv_pred', )


def tensors(out):
    return [out] if torch.is_tensor(out) else [
        t for t in out if torch.is_tensor(t)]


def record(head, names, seen):
    modules = dict(head.named_modules())
    handles = []
    for name in names:
        def hook(module, args, out, name=name):
            seen.append((name, module, args, out))
        handles.append(modules[name].register_forward_hook(hook))
    return handles


def float32_of(module, args):
    """The layer on the same (upcast) input with autocast off."""
    ref = copy.deepcopy(module).float()
    with torch.autocast('cpu', enabled=False):
        return ref(*[a.float() if torch.is_tensor(a) else a for a in args])


@pytest.mark.parametrize('design', sorted(DESIGNS))
def test_islands_are_float32_under_bf16_autocast(design):
    torch.manual_seed(0)
    bbox_head, mask_head = build_heads(design)
    x = pyramid(batch=1)
    seen = []
    handles = record(bbox_head, BBOX_ISLANDS, seen) + record(
        mask_head, MASK_ISLANDS, seen)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        bbox_head(x)
        mask_head(x)
    for h in handles:
        h.remove()
    names = {name for name, *_ in seen}
    assert names == set(BBOX_ISLANDS + MASK_ISLANDS), names
    for name, module, args, out in seen:
        with torch.no_grad():
            ref = tensors(float32_of(module, args))
        got = tensors(out)
        assert len(got) == len(ref) > 0, name
        for g, r in zip(got, ref):
            assert g.dtype == torch.float32, (design, name, g.dtype)
            # the same float32 kernels: equal up to summation order; a
            # bf16 output (8-bit mantissa) is ~4e-3 off
            scale = r.abs().max().item() + 1e-12
            err = (g.double() - r.double()).abs().max().item() / scale
            assert err < 1e-5, (design, name, err)


def test_a_bf16_layer_would_fail_this_check():
    """The check's power: the same comparison on a plain conv under bf16
    autocast is far outside the bound."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    x = torch.rand(1, 16, 16, 20)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x)
    with torch.no_grad():
        ref = float32_of(conv, (x, ))
    err = (out.double() - ref.double()).abs().max().item() / ref.abs().max().item()
    assert out.dtype == torch.bfloat16 and err > 1e-3, err
