"""fold_weight_arithmetic: a conv weight computed from a weight (as
``log_margin_conv`` divides its first conv's weight by
``margin_reduce_factor``) leaves the exported graph as a plain initializer,
with the same values, so that INT8 quantizers recognise the conv."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnxscript import ir

from embedmask_mmdet.deploy.export import fold_weight_arithmetic


class DividedWeightConv(torch.nn.Module):
    """The R-50 box head's margin branch in small: a 1x1 conv over 256
    channels (256 x 128 = 32768 weights, above the exporter's own
    8192-element folding limit) whose weight is divided at run time."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(256, 128, 1)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight / 32., self.conv.bias)


def _computed_conv_weights(model: onnx.ModelProto):
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == 'Conv' and n.input[1] not in weights]


@pytest.mark.slow  # an export
def test_divided_conv_weight_becomes_an_initializer(tmp_path):
    torch.manual_seed(0)
    module = DividedWeightConv().eval()
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        program = torch.onnx.export(module, (x, ), dynamo=True,
                                    input_names=['x'], verbose=False)
    before = ir.serde.serialize_model(program.model)
    # the exporter alone leaves the division in the graph
    assert _computed_conv_weights(before), 'nothing to fold: test is moot'
    fold_weight_arithmetic(program.model)
    path = str(tmp_path / 'folded.onnx')
    program.save(path)
    folded = onnx.load(path)
    assert not _computed_conv_weights(folded)
    assert not any(n.op_type == 'Div' for n in folded.graph.node)
    # the same function: float32 division either way
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'x': x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
