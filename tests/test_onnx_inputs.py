"""Issue #29: ONNX models as users bring them. Inputs that set shapes are never guessed (--example-inputs or
--const-inputs), zero-size outputs verify, importer failures name the node and op, and `edgekit coverage` runs
ONNX's own node tests."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import edgekit
from edgekit.errors import EdgekitError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper  # noqa: E402

X = np.arange(12, dtype=np.float32).reshape(2, 6)
SHAPE = np.array([3, 4], np.int64)


def _save(path, nodes, inputs, outputs, opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.fixture
def reshape_model(tmp_path):
    """y = Reshape(x, s): the integer input s sets the output's shape."""
    return _save(tmp_path / "reshape.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"], name="r0")],
                 [helper.make_tensor_value_info("x", T.FLOAT, [2, 6]), helper.make_tensor_value_info("s", T.INT64, [2])],
                 [helper.make_tensor_value_info("y", T.FLOAT, [3, 4])])


@pytest.fixture
def inputs_npz(tmp_path):
    path = tmp_path / "inputs.npz"
    np.savez(path, x=X, s=SHAPE)
    return path


def _clean_error(code, err, *needles):
    assert code == 2, err
    assert "edgekit: error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_shape_input_without_example_inputs_is_refused(cli, reshape_model, tmp_path):
    for backend in ("onnxruntime", "tvm"):
        code, _, err = cli("compile", "--model", reshape_model, "--backend", backend, "--output", tmp_path / "o")
        _clean_error(code, err, "input 's'", "'shape' operand of Reshape node 'r0'", "--example-inputs FILE.npz",
                     "--const-inputs s=FILE.npy")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_shape_input_with_example_inputs_compiles_and_verifies(cli, reshape_model, inputs_npz, tmp_path, backend):
    out = tmp_path / backend
    code, _, err = cli("compile", "--model", reshape_model, "--backend", backend, "--output", out,
                       "--example-inputs", inputs_npz)
    assert code == 0, err
    model = edgekit.load(out, trust=False)
    m = model.manifest
    assert m.verify["status"] == "pass" and m.verify["where"] == "host"
    assert m.example_inputs["source"] == "user"
    assert m.example_inputs["sha256"] == hashlib.sha256(inputs_npz.read_bytes()).hexdigest()
    if backend == "tvm":  # static shapes: the shape input is folded with its example value, and recorded
        assert list(m.const_inputs) == ["s"] and "Reshape node 'r0'" in m.const_inputs["s"]["reason"]
        (y,) = model.run([X])
    else:
        assert m.const_inputs is None
        (y,) = model.run([X, SHAPE])
    np.testing.assert_array_equal(y, X.reshape(3, 4))


def test_const_inputs_fold_the_input(cli, reshape_model, tmp_path):
    np.save(tmp_path / "s.npy", SHAPE)
    out = tmp_path / "o"
    code, _, err = cli("compile", "--model", reshape_model, "--backend", "onnxruntime", "--output", out,
                       "--const-inputs", f"s={tmp_path / 's.npy'}")
    assert code == 0, err
    model = edgekit.load(out, trust=False)
    assert [s.shape for s in model.manifest.inputs] == [[2, 6]]  # one input fewer
    assert model.manifest.const_inputs["s"]["shape"] == [2] and model.manifest.const_inputs["s"]["sha256"]
    np.testing.assert_array_equal(model.run([X])[0], X.reshape(3, 4))
    code, _, err = cli("compile", "--model", reshape_model, "--backend", "onnxruntime", "--output", tmp_path / "p",
                       "--const-inputs", f"nope={tmp_path / 's.npy'}")
    _clean_error(code, err, "has no input 'nope'", "x, s")


def test_python_api_takes_example_inputs_for_a_file(reshape_model, tmp_path):
    out = edgekit.compile_model(reshape_model, {"x": X, "s": SHAPE}, backend="onnxruntime", output=tmp_path / "a")
    assert edgekit.load(out, trust=False).manifest.example_inputs["names"] == ["x", "s"]
    out = edgekit.compile_model(str(reshape_model), [X, SHAPE], backend="onnxruntime", output=tmp_path / "b")
    assert edgekit.load(out, trust=False).manifest.verify["status"] == "pass"
    with pytest.raises(EdgekitError, match="example input 's' is int64\\[3\\]; the model's input is int64\\[2\\]"):
        edgekit.compile_model(reshape_model, [X, np.zeros(3, np.int64)], backend="onnxruntime", output=tmp_path / "c")


def test_zero_size_output_verifies(tmp_path):
    """Split into parts of 2 and 0 elements: the second output is empty."""
    path = _save(tmp_path / "split.onnx",
                 [helper.make_node("Split", ["x", "split"], ["a", "b"], name="sp", axis=0)],
                 [helper.make_tensor_value_info("x", T.FLOAT, [2]), helper.make_tensor_value_info("split", T.INT64, [2])],
                 [helper.make_tensor_value_info("a", T.FLOAT, [2]), helper.make_tensor_value_info("b", T.FLOAT, [0])])
    x = np.array([1.0, 2.0], np.float32)
    for backend in ("onnxruntime", "tvm"):
        out = edgekit.compile_model(path, {"x": x, "split": np.array([2, 0], np.int64)}, backend=backend,
                                    output=tmp_path / backend)
        m = edgekit.load(out, trust=False).manifest
        assert m.verify["status"] == "pass" and [o.shape for o in m.outputs] == [[2], [0]]


def test_float64_is_refused_before_lowering(cli, tmp_path):
    path = _save(tmp_path / "f64.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
                 [helper.make_tensor_value_info("x", T.DOUBLE, [3])], [helper.make_tensor_value_info("y", T.DOUBLE, [3])])
    code, _, err = cli("compile", "--model", path, "--backend", "tvm", "--output", tmp_path / "o")
    _clean_error(code, err, "input 'x' (read by Relu node 'relu' (#0)) has dtype float64", "float32")


def test_tvm_importer_failure_names_the_node_and_op(cli, tmp_path):
    """TVM reads ONNX's standard Attention (opset 23) as Microsoft's contrib op and fails (KeyError 'num_heads'):
    the message names the node, the op and the way out."""
    q = [helper.make_tensor_value_info(n, T.FLOAT, [1, 2, 4]) for n in ("q", "k", "v")]
    path = _save(tmp_path / "attn.onnx", [helper.make_node("Relu", ["q"], ["rq"], name="first"),
                                          helper.make_node("Attention", ["rq", "k", "v"], ["y"], name="att",
                                                           q_num_heads=1, kv_num_heads=1)],
                 q, [helper.make_tensor_value_info("y", T.FLOAT, [1, 2, 4])], 23)
    code, _, err = cli("compile", "--model", path, "--backend", "tvm", "--output", tmp_path / "o")
    _clean_error(code, err, "TVM's ONNX importer fails on Attention node 'att' (#1)", "--backend onnxruntime")
    code, _, err = cli("compile", "--model", path, "--backend", "onnxruntime", "--output", tmp_path / "o")
    assert code == 0, err


def test_tvm_computes_layernorm_statistics(tmp_path):
    """TVM's importer returns zeros for LayerNormalization's Mean/InvStdDev outputs; edgekit writes such a node
    out as its ONNX function, so they verify."""
    path = _save(tmp_path / "ln.onnx",
                 [helper.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "inv"], name="ln", axis=-1)],
                 [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in (("x", [2, 4]), ("w", [4]), ("b", [4]))],
                 [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in (("y", [2, 4]), ("mean", [2, 1]),
                                                                            ("inv", [2, 1]))], 17)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = edgekit.compile_model(path, [x, np.ones(4, np.float32), np.zeros(4, np.float32)], backend="tvm",
                                output=tmp_path / "o")
    y, mean, inv = edgekit.load(out, trust=False).run([x, np.ones(4, np.float32), np.zeros(4, np.float32)])
    np.testing.assert_allclose(mean[:, 0], x.mean(1), atol=1e-5)
    np.testing.assert_allclose(inv[:, 0], 1 / np.sqrt(x.var(1) + 1e-5), rtol=1e-4)


def test_executorch_refuses_onnx_before_importing(cli, reshape_model, tmp_path):
    code, _, err = cli("compile", "--model", reshape_model, "--backend", "executorch", "--output", tmp_path / "o")
    _clean_error(code, err, "backend 'executorch' compiles PyTorch models", "--backend tvm or onnxruntime")


def test_reference_failure_names_the_node(cli, tmp_path):
    """A Reshape to a shape whose element count is wrong: ONNX Runtime's failure becomes a message naming it."""
    path = _save(tmp_path / "bad.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"], name="r0")],
                 [helper.make_tensor_value_info("x", T.FLOAT, [2, 6]), helper.make_tensor_value_info("s", T.INT64, [2])],
                 [helper.make_tensor_value_info("y", T.FLOAT, [5, 5])])
    np.savez(tmp_path / "in.npz", x=X, s=np.array([5, 5], np.int64))
    code, _, err = cli("compile", "--model", path, "--backend", "onnxruntime", "--output", tmp_path / "o",
                       "--example-inputs", tmp_path / "in.npz")
    _clean_error(code, err, "Reshape node 'r0' (#0)")


def test_coverage_on_a_sample_of_node_tests(cli, tmp_path):
    pattern = r"^test_(abs|relu|add|reshape_negative_dim|slice|expand_dim_changed|gather_0|resize_downsample_scales_nearest|split_zero_size_splits_opset18|reduce_sum_keepdims_example|tile|top_k)$"
    code, out, err = cli("coverage", "--backend", "onnxruntime", "--filter", pattern, "--report-dir", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "coverage-onnxruntime.json").read_text())
    assert report["totals"]["cases"] >= 10 and len(report["ops"]) >= 10
    assert report["totals"]["crashed"] == 0
    assert report["totals"]["correct"] == report["totals"]["cases"], [c for c in report["cases"]
                                                                      if c["status"] != "correct"]
    assert (tmp_path / "coverage-onnxruntime.md").read_text().startswith("# ONNX node-test coverage")


@pytest.mark.emulator
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_shape_input_on_android_arm64(emulator_sysroot, reshape_model, inputs_npz, tmp_path, backend):
    out = edgekit.compile_model(reshape_model, str(inputs_npz), target="android-arm64", backend=backend,
                                output=tmp_path / backend)
    model = edgekit.load(out, trust=False)
    assert model.manifest.arch == "aarch64" and model.manifest.verify["where"].startswith("emulator")
    (y,) = model.run([X] if backend == "tvm" else [X, SHAPE])
    np.testing.assert_array_equal(y, X.reshape(3, 4))


TINY = '''
import torch
class Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2
def build():
    return Tiny(), (torch.zeros(2, 3),)
'''


def test_example_inputs_for_a_torch_model_file(cli, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY)
    x = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    code, _, err = cli("compile", "--model", f"{tmp_path / 'tiny.py'}:build", "--backend", "onnxruntime",
                       "--output", tmp_path / "o", "--example-inputs", tmp_path / "in.npz")
    assert code == 0, err
    m = edgekit.load(tmp_path / "o", trust=False).manifest
    assert m.example_inputs["names"] == ["x"]
    assert m.example_inputs["sha256"] == hashlib.sha256((tmp_path / "in.npz").read_bytes()).hexdigest()
    np.savez(tmp_path / "bad.npz", y=x)
    code, _, err = cli("compile", "--model", f"{tmp_path / 'tiny.py'}:build", "--backend", "onnxruntime",
                       "--output", tmp_path / "p", "--example-inputs", tmp_path / "bad.npz")
    _clean_error(code, err, "no array for input 'x'")
