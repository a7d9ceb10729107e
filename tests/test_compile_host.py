"""Spine acceptance 2: the bundled Conv2d + LayerNorm + MultiheadAttention + GELU model, compiled for host by
each backend through the CLI, loaded with edgekit.load and run, matches eager fp32 within 1e-4."""
import hashlib
import json

import numpy as np
import pytest

import edgekit
from edgekit import backends
from edgekit.artifact import SCHEMA_VERSION

BACKENDS = backends.for_target("host")


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_artifact_matches_eager(backend, host_artifacts, zoo_model):
    _, inputs, expected = zoo_model
    model = edgekit.load(host_artifacts[backend])
    (got,) = model.run([inputs[0].numpy()])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_manifest_records_what_a_user_needs(backend, host_artifacts):
    d = host_artifacts[backend]
    m = json.loads((d / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert (m["backend"], m["target"], m["precision"]) == (backend, "host", "fp32")
    assert m["inputs"] == [{"name": "input0", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "output0", "shape": [1, 256, 32], "dtype": "float32"}]
    assert "torch" in m["toolchain"]
    for name, digest in m["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest
    assert m["verify"]["status"] == "pass" and m["verify"]["where"] == "host"
    assert 0 <= m["verify"]["max_abs_err"] <= 1e-4


def test_executorch_manifest_counts_delegated_ops(host_artifacts):
    info = edgekit.load(host_artifacts["executorch"]).manifest.backend_info
    assert info["delegate"] == "XnnpackBackend"
    assert info["delegated_ops"] > 0 and info["non_delegated_ops"] >= 0


def test_run_and_bench_commands(cli, host_artifacts, zoo_model, tmp_path):
    _, inputs, expected = zoo_model
    x = tmp_path / "x.npy"
    np.save(x, inputs[0].numpy())
    out = tmp_path / "out.npz"
    code, stdout, _ = cli("run", host_artifacts["tvm"], "--input", x, "--output", out)
    assert code == 0 and "output0 float32[1, 256, 32]" in stdout
    assert np.abs(np.load(out)["output0"] - expected).max() <= 1e-4
    code, stdout, _ = cli("bench", host_artifacts["onnxruntime"], "--iters", "5", "--json")
    stats = json.loads(stdout)
    assert code == 0 and stats["backend"] == "onnxruntime" and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"]
    code, stdout, _ = cli("info", host_artifacts["executorch"])
    assert code == 0 and json.loads(stdout)["backend"] == "executorch"


def test_python_api_compiles_a_module(tmp_path, zoo_model):
    module, inputs, expected = zoo_model
    art = edgekit.compile_model(module, inputs, target="host", backend="onnxruntime", output=tmp_path / "m")
    (got,) = edgekit.load(art).run([inputs[0].numpy()])
    assert np.abs(got - expected).max() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directories left behind"


def test_onnx_file_compiles_with_tvm_and_onnxruntime(tmp_path, zoo_model):
    import torch

    module, inputs, expected = zoo_model
    onnx_file = tmp_path / "model.onnx"
    torch.onnx.export(module, inputs, dynamo=True).save(str(onnx_file))
    for backend in ("tvm", "onnxruntime"):
        art = edgekit.compile_model(str(onnx_file), target="host", backend=backend, output=tmp_path / backend)
        manifest = edgekit.load(art).manifest
        assert manifest.verify["status"] == "pass"
        (got,) = edgekit.load(art).run([inputs[0].numpy()])
        assert np.abs(got - expected).max() <= 1e-4


def test_onnx_with_ops_tvm_cannot_import_gets_a_clear_error(tmp_path, host_artifacts):
    """ORT's optimised graph holds com.microsoft fused ops that only ONNX Runtime knows."""
    from edgekit.errors import EdgekitError

    onnx_file = tmp_path / "fused.onnx"
    onnx_file.write_bytes((host_artifacts["onnxruntime"] / "model.onnx").read_bytes())
    with pytest.raises(EdgekitError, match="TVM's onnx importer cannot read this model.*--backend onnxruntime"):
        edgekit.compile_model(str(onnx_file), backend="tvm", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tvm_artifact_uses_the_fused_attention_kernel(host_artifacts):
    """nn.MultiheadAttention reaches edgekit's attention kernel instead of TVM's default lowering."""
    assert b"edgekit_attention" in (host_artifacts["tvm"] / "model.so").read_bytes()


def test_executorch_host_artifact_uses_the_fused_sdpa_kernel(host_artifacts):
    """On host, ExecuTorch runs attention with its custom_sdpa kernel (faster than XNNPACK's decomposition)."""
    info = edgekit.load(host_artifacts["executorch"]).manifest.backend_info
    assert info["attention"] == "llama.custom_sdpa"
    assert "llama_custom_sdpa_default" in info["non_delegated_op_types"]


def test_executorch_sdpa_forms_the_fused_kernel_cannot_take_stay_exact(tmp_path):
    """A float mask, grouped-query heads and more keys than queries (cross-attention, a KV cache) get the math
    decomposition; causal and plain self-attention get the kernel."""
    import torch
    import torch.nn.functional as F

    class Mixed(torch.nn.Module):
        def forward(self, q, k, v, kv, memory):
            mask = torch.linspace(-1.0, 0.0, q.shape[-2] * k.shape[-2]).reshape(q.shape[-2], k.shape[-2])
            return (F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    + F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    + F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
                    + F.scaled_dot_product_attention(q, memory, memory))

    gen = torch.Generator().manual_seed(0)
    inputs = (*(torch.randn(1, 4, 9, 16, generator=gen) for _ in range(3)), torch.randn(1, 2, 9, 16, generator=gen),
              torch.randn(1, 4, 23, 16, generator=gen))
    art = edgekit.compile_model(Mixed(), inputs, target="host", backend="executorch", output=tmp_path / "m")
    out, = edgekit.load(art).run([t.numpy() for t in inputs])
    np.testing.assert_allclose(out, Mixed()(*inputs).numpy(), atol=1e-5)
    assert edgekit.load(art).manifest.backend_info["attention"] == "llama.custom_sdpa"


def test_tvm_negative_select_index(tmp_path):
    """x[:, -1] exports as select(x, 1, -1), which TVM 0.27's importer reads out of bounds unless edgekit wraps it."""
    import torch

    class LastFrame(torch.nn.Module):
        def forward(self, clip):
            return clip[:, -1] * 2.0

    clip = torch.randn(1, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    art = edgekit.compile_model(LastFrame().eval(), (clip,), backend="tvm", output=tmp_path / "last")
    (got,) = edgekit.load(art).run([clip.numpy()])
    np.testing.assert_allclose(got, clip[:, -1].numpy() * 2.0, rtol=0, atol=0)
