"""Issue 6 acceptance 3 through the compile pipeline: a two-layer Mamba model whose scans are edgekit's kernel op
compiles for host with every backend (ExecuTorch the native fused kernel it ships, ONNX Runtime the chunked
decomposition, TVM the TensorIR kernel) and matches eager within 1e-4."""
import json

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


@pytest.fixture(scope="module")
def compiled(mamba, tmp_path_factory):
    """The model's static artifact per backend, compiled once for the module."""
    model, inputs, _ = mamba
    built = {}

    def get(backend: str):
        if backend not in built:
            built[backend] = edgekit.compile_model(model, inputs, backend=backend,
                                                   output=tmp_path_factory.mktemp("mamba") / backend)
        return built[backend]

    return get


@pytest.mark.parametrize("backend", backends.names())
def test_two_layer_mamba_on_every_backend(mamba, compiled, backend):
    _, inputs, expected = mamba
    (got,) = edgekit.load(compiled(backend)).run([inputs[0].numpy()])
    assert np.abs(got - expected).max() <= 1e-4


def test_tvm_artifact_runs_the_scan_kernel(compiled):
    """The TVM artifact calls the TensorIR scan, not a decomposition of it."""
    assert b"edgekit_selective_scan" in (compiled("tvm") / "model.so").read_bytes()


def test_executorch_artifact_runs_the_native_kernel(compiled):
    """Issue #28: the ExecuTorch program calls edgekit::selective_scan (no chunked decomposition) and the payload
    carries the kernel library it registers, listed in the manifest with its sha256."""
    art = compiled("executorch")
    manifest = json.loads((art / "manifest.json").read_text())
    info = manifest["backend_info"]
    assert info["scan"] == "edgekit fused kernel"
    (lib,) = info["kernel_libraries"]
    assert lib["ops"] == ["edgekit::selective_scan.out"] and lib["file"] in manifest["files"]
    assert (art / lib["file"]).read_bytes()[:4] == b"\x7fELF"
    assert b"edgekit::selective_scan" in (art / "model.pte").read_bytes()
    assert "aten_cumsum_default" not in info["non_delegated_op_types"]


def test_kernel_library_outside_the_payload_is_refused(compiled):
    """A manifest naming a kernel library it does not checksum: a clear refusal, nothing loaded."""
    from edgekit.artifact import read_manifest
    from edgekit.runtimes import executorch_runner

    manifest = read_manifest(compiled("executorch"))
    assert executorch_runner.kernel_files(manifest) == ["scan_kernel.so"]
    manifest.backend_info["kernel_libraries"][0]["file"] = "elsewhere.so"
    with pytest.raises(EdgekitError, match="'elsewhere.so', which is not one of its payload files"):
        executorch_runner.kernel_files(manifest)


def test_executorch_without_a_compiler_falls_back_to_the_decomposition(mamba, tmp_path, monkeypatch):
    """No C++ compiler for the target: a warning that says so and how to fix it, and an artifact that still
    matches eager through the chunked decomposition (recorded in the manifest)."""
    from edgekit.compile.lower import executorch as lower_et

    model, inputs, expected = mamba
    monkeypatch.setattr(lower_et, "_native_compiler", lambda target: ("no-such-c++", []))
    with pytest.warns(UserWarning, match="no-such-c\\+\\+.*not found.*Install the compiler"):
        art = edgekit.compile_model(model, inputs, backend="executorch", output=tmp_path / "et")
    info = json.loads((art / "manifest.json").read_text())["backend_info"]
    assert info["scan"].startswith("chunked decomposition") and "kernel_libraries" not in info
    assert "aten_cumsum_default" in info["non_delegated_op_types"]
    (got,) = edgekit.load(art).run([inputs[0].numpy()])
    assert np.abs(got - expected).max() <= 1e-4
    # the decomposition cannot take a dynamic length (XNNPACK: one dynamic dim per reshape, and it reshapes L into
    # chunks): a clear refusal naming the sizes and the other backends, nothing written
    with pytest.warns(UserWarning), pytest.raises(
            EdgekitError, match=r"executorch failed to lower .* with dynamic sizes \(L 8\.\.128\)"):
        edgekit.compile_model(model, inputs, backend="executorch", output=tmp_path / "dyn",
                              dynamic_shapes="hidden:1=L:8..128")
    assert not (tmp_path / "dyn").exists()


@pytest.mark.parametrize("backend", backends.names())
def test_dynamic_sequence_length(mamba, backend, tmp_path):
    """Issue #23: one artifact for every length in 8..128 (TVM: the TensorIR scan over a symbolic length;
    ExecuTorch: the native kernel, which takes any length)."""
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
