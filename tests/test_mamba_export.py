"""Issue 6 acceptance 3 through the compile pipeline: a two-layer Mamba model whose scans are edgekit's kernel op
compiles for host with every backend (ExecuTorch/ONNX Runtime get the chunked decomposition, TVM the TensorIR
kernel) and matches eager within 1e-4."""
import numpy as np
import pytest
import torch

import edgekit
from edgekit import backends
from edgekit.errors import EdgekitError
from edgekit.kernels.scan.mamba_block import TinyMamba
from edgekit.kernels.scan.torch_op import selective_scan_op


@pytest.fixture(scope="module")
def mamba():
    torch.manual_seed(0)
    model = TinyMamba(d_model=32, n_layers=2, scan=selective_scan_op).eval()
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        return model, (x,), model(x).numpy()


@pytest.mark.parametrize("backend", backends.names())
def test_two_layer_mamba_on_every_backend(mamba, backend, tmp_path):
    model, inputs, expected = mamba
    art = edgekit.compile_model(model, inputs, backend=backend, output=tmp_path / backend)
    (got,) = edgekit.load(art).run([inputs[0].numpy()])
    assert np.abs(got - expected).max() <= 1e-4


def test_tvm_artifact_runs_the_scan_kernel(mamba, tmp_path):
    """The TVM artifact calls the TensorIR scan, not a decomposition of it."""
    model, inputs, _ = mamba
    art = edgekit.compile_model(model, inputs, backend="tvm", output=tmp_path / "t")
    assert b"edgekit_selective_scan" in (art / "model.so").read_bytes()


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_dynamic_sequence_length(mamba, backend, tmp_path):
    """Issue #23: one artifact for every length in 8..128 (TVM: the TensorIR scan over a symbolic length)."""
    model, inputs, _ = mamba
    art = edgekit.compile_model(model, inputs, backend=backend, output=tmp_path / backend,
                                dynamic_shapes="hidden:1=L:8..128")
    compiled = edgekit.load(art)
    for length in (8, 37, 128):
        x = torch.randn(2, length, 32, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = compiled.run([x.numpy()])
        assert np.abs(got - expected).max() <= 1e-4, length


def test_dynamic_length_executorch_says_why_not(mamba, tmp_path):
    """XNNPACK takes one dynamic dim per reshape and the chunked scan reshapes L into (chunks, chunk): a clear
    refusal that names the sizes and the other backends, nothing written."""
    model, inputs, _ = mamba
    with pytest.raises(EdgekitError, match=r"executorch failed to lower .* with dynamic sizes \(L 8\.\.128\)"):
        edgekit.compile_model(model, inputs, backend="executorch", output=tmp_path / "et",
                              dynamic_shapes="hidden:1=L:8..128")
    assert not (tmp_path / "et").exists()
