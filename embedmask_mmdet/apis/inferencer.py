"""mmdet's ``DetInferencer`` with the fast CPU inference switches."""
from contextlib import nullcontext

import torch
from mmdet.apis import DetInferencer


def amp_dtype(device_type: str) -> torch.dtype:
    """Autocast dtype of ``--amp``: bf16 on a CPU, fp16 on a GPU (mmengine's
    ``autocast`` defaults, which ``tools/test.py --amp`` uses)."""
    return torch.bfloat16 if device_type == 'cpu' else torch.float16


def use_channels_last(model: torch.nn.Module) -> None:
    """Switch an EmbedMask detector to NHWC (images and conv weights)."""
    if not hasattr(model, 'channels_last'):
        raise ValueError(f'channels_last: {type(model).__name__} has no '
                         'channels_last switch (EmbedMask models only)')
    model.channels_last = True
    model.to(memory_format=torch.channels_last)


class EmbedMaskInferencer(DetInferencer):
    """``DetInferencer`` plus mixed precision and NHWC layout.

    Args:
        *args, **kwargs: As :class:`mmdet.apis.DetInferencer`.
        amp (bool): Run the model under autocast (bf16 on a CPU, fp16 on a
            GPU). Mask probabilities and thresholds stay float32
            (``mask_probability``), so masks agree with fp32 (IoU >= 0.98
            per detection, tested).
        channels_last (bool): NHWC images and conv weights (EmbedMask
            models); the same results, faster oneDNN convolutions.
    """

    def __init__(self, *args, amp: bool = False, channels_last: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.amp = amp
        if channels_last:
            use_channels_last(self.model)

    def forward(self, inputs, **kwargs):
        device = next(self.model.parameters()).device.type
        context = torch.autocast(device, dtype=amp_dtype(device)) \
            if self.amp else nullcontext()
        with context:
            return super().forward(inputs, **kwargs)
