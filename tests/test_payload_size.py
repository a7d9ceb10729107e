"""Artifacts no larger than their weights: a tied weight (used as W and as W.T, e.g. a token embedding and the logits
projection) is stored once, read from the payload itself."""
import numpy as np
import pytest
import onnx
import torch
from onnx import numpy_helper

import edgekit


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(3000, 64)

    def forward(self, token):
        return (self.embed(token) @ self.embed.weight.T).flatten(1)


def test_onnxruntime_stores_a_tied_embedding_once(tmp_path):
    torch.manual_seed(0)
    model = TiedLM().eval()
    token = torch.tensor([[7]])
    art = edgekit.compile_model(model, (token,), backend="onnxruntime", output=tmp_path / "a")
    graph = onnx.load(str(art / "model.onnx")).graph
    big = [numpy_helper.to_array(t) for t in graph.initializer if np.prod(t.dims) >= 3000 * 64]
    assert len(big) == 1, [t.name for t in graph.initializer]
    weights = 3000 * 64 * 4
    assert (art / "model.onnx").stat().st_size <= 1.15 * weights
    loaded = edgekit.load(art)
    assert loaded.manifest.backend_info["shared_transposed_weights"]
    sizes = loaded.manifest.sizes  # the manifest's figures: the embedding once, and the payload beside it
    assert sizes["weight_bytes"] == weights and sizes["payload_bytes"] == (art / "model.onnx").stat().st_size
    assert sizes["payload_per_weight_byte"] <= 1.15
    for t in (7, 2999):
        y = loaded.run([np.array([[t]])])[0]
        np.testing.assert_allclose(y, model(torch.tensor([[t]])).detach().numpy(), rtol=1e-5, atol=1e-5)


class TiedDecoder(torch.nn.Module):
    """An embedding, a Linear block and the tied logits projection: the shape of a transformer decoder step."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4096, 128)
        self.block = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128))

    def forward(self, token):
        x = self.embed(token)
        return ((x + self.block(x)) @ self.embed.weight.T).flatten(1)


@pytest.mark.parametrize("scheme, max_fraction", [("int8-dynamic", 0.30), ("int4-dynamic", 0.18)])
def test_onnxruntime_packs_a_tied_embedding_once(tmp_path, scheme, max_fraction):
    """Quantized, the table and the projection share one packed uint8 tensor (GatherBlockQuantized + MatMulNBits):
    no float copy of the table is left in the payload."""
    torch.manual_seed(0)
    model = TiedDecoder().eval()
    token = torch.tensor([[11]])
    fp32 = edgekit.compile_model(model, (token,), backend="onnxruntime", output=tmp_path / "f")
    art = edgekit.compile_model(model, (token,), backend="onnxruntime", output=tmp_path / "q", quantize=scheme)
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "GatherBlockQuantized" in ops and ops.count("MatMulNBits") == 3, ops
    floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 4096]
    assert all("scales" in n for n in floats), floats
    fraction = (art / "model.onnx").stat().st_size / (fp32 / "model.onnx").stat().st_size
    assert fraction <= max_fraction, fraction
    loaded = edgekit.load(art)
    for t in (11, 4095):
        expected = model(torch.tensor([[t]])).detach().numpy()
        y = loaded.run([np.array([[t]])])[0]
        assert np.corrcoef(y.ravel(), expected.ravel())[0, 1] > (0.999 if scheme == "int8-dynamic" else 0.98)


def test_blazepose_detector_artifact_is_the_size_of_its_weights(tmp_path, shared):
    """MediaPipe's detector (fp16, partly sparse in the .tflite; dense fp32 once imported): the ONNX Runtime artifact
    holds those weights and little else."""
    model = shared / "weights" / "mediapipe" / "pose_detection.tflite"
    art = edgekit.compile_model(str(model), None, backend="onnxruntime", output=tmp_path / "d")
    sizes = edgekit.load(art).manifest.sizes
    assert sizes["weight_bytes"] > 10_000_000
    assert 1.0 <= sizes["payload_per_weight_byte"] <= 1.15, sizes
