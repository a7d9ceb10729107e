"""Issue 6 acceptance 3 through the compile pipeline: a two-layer Mamba model whose scans are edgekit's kernel op
compiles for host with every backend (ExecuTorch/ONNX Runtime get the chunked decomposition, TVM the TensorIR
kernel) and matches eager within 1e-4."""
import numpy as np
import pytest
import torch

import edgekit
from edgekit import backends
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
