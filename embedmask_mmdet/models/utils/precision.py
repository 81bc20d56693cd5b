"""Float32 islands under autocast: the layers whose outputs are the
embeddings and margins, which p = exp(-Σ s (x - q)^2) turns into mask
pixels. A bf16 output there is rounded to 3 significant digits, enough to
move mask boundaries of a sharp-margin detection by pixels; the convs are
a small share of the model's work."""
import torch
import torch.nn as nn
from torch import Tensor

from .torch_compat import autocast_enabled


def autocast_off(like: Tensor):
    """A context with autocast disabled on ``like``'s device.

    Args:
        like (Tensor): Any tensor on the device (type) concerned.

    Returns:
        torch.autocast: A context manager, ``torch.autocast(device_type,
        enabled=False)`` for ``like.device.type``.
    """
    return torch.autocast(like.device.type, enabled=False)


class Float32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in float32 even under autocast (same
    parameters and state-dict keys)."""

    def forward(self, x: Tensor) -> Tensor:
        if autocast_enabled(x.device.type):
            with autocast_off(x):
                return super().forward(x.float())
        return super().forward(x)
