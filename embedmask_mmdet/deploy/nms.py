"""Class-wise NMS as one op that runs eagerly (mmcv) and exports to ONNX's
standard ``NonMaxSuppression`` (no custom op in the graph).

``torch.export`` cannot trace a data-dependent number of kept boxes through
mmcv's extension op, so the graph calls ``torch.ops.embedmask.multiclass_nms``:
a registered custom op with a fake implementation (an unbacked output size)
that the ONNX translation table maps onto ``NonMaxSuppression``.
"""
import torch
from torch import Tensor

from ..models.utils.torch_compat import custom_op

__all__ = ['multiclass_nms', 'onnx_translation_table']


# a plain function on torch < 2.4 (export refuses that torch; eager is the same)
@custom_op('embedmask::multiclass_nms', mutates_args=())
def multiclass_nms(boxes: Tensor, scores: Tensor, max_per_class: int,
                   iou_thr: float, score_thr: float) -> Tensor:
    """ONNX ``NonMaxSuppression`` semantics for one image.

    Args:
        boxes (Tensor): (1, K, 4) x1, y1, x2, y2.
        scores (Tensor): (1, C, K); a box takes part in class c's NMS when
            its score there is above ``score_thr``.
        max_per_class (int): Boxes kept per class at most.
        iou_thr (float): A box is suppressed by a higher-scoring one of its
            class when their IoU is above this.
        score_thr (float): Scores at or below this are ignored.

    Returns:
        Tensor: (S, 3) int64 rows (batch index 0, class, box index), each
        class's rows by descending score.
    """
    from mmcv.ops import nms
    rows = []
    for c in range(scores.size(1)):
        valid = (scores[0, c] > score_thr).nonzero()[:, 0]
        if len(valid) == 0:
            continue
        _, keep = nms(boxes[0, valid], scores[0, c, valid], iou_thr)
        keep = valid[keep[:max_per_class]]
        rows.append(torch.stack([torch.zeros_like(keep),
                                 torch.full_like(keep, c), keep], dim=1))
    if not rows:
        return boxes.new_zeros((0, 3), dtype=torch.int64)
    return torch.cat(rows)


@multiclass_nms.register_fake
def _multiclass_nms_fake(boxes, scores, max_per_class, iou_thr, score_thr):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept, 3), dtype=torch.int64)


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    from onnxscript import opset18 as op

    def nms_to_onnx(boxes, scores, max_per_class: int, iou_thr: float,
                    score_thr: float):
        return op.NonMaxSuppression(
            boxes, scores, op.Constant(value_ints=[max_per_class]),
            op.Constant(value_floats=[iou_thr]),
            op.Constant(value_floats=[score_thr]))

    return {torch.ops.embedmask.multiclass_nms.default: nms_to_onnx}
