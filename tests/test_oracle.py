"""Verification against a float64 oracle (issue 25): the rule, the manifest record, the fixed-tolerance override
and fallback, the MediaPipe pose models passing with default flags, and a broken lowering failing them."""
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgekit
from edgekit.compile import layers, oracle
from edgekit.compile.source import from_module
from edgekit.errors import EdgekitError

WEIGHTS = Path(os.environ.get("EDGEKIT_WEIGHTS", Path(__file__).resolve().parents[2] / "shared" / "weights"))
POSE = [WEIGHTS / "mediapipe" / f"{name}.tflite" for name in ("pose_landmark_full", "pose_detection")]


def tiny():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    return module, (torch.rand(1, 3, 8, 8),)


def perturb_second_conv(module):
    """A wrong lowering: one weight of the second convolution off by 0.5."""
    with torch.no_grad():
        dict(module.named_parameters())["2.weight"][0, 0, 0, 0] += 0.5


def test_rule_passes_rounding_and_fails_a_real_error():
    rng = np.random.default_rng(0)
    ref64 = rng.standard_normal(1000) * 100
    ref32 = ref64.astype(np.float32)
    ref_err = np.abs(ref32 - ref64).max()
    within = (ref64 + rng.choice([-1, 1], 1000) * 4 * ref_err).astype(np.float64)
    row = oracle.judge(within, ref32, ref64)
    assert row["ok"] and row["reference_err_vs_float64"] == pytest.approx(ref_err)
    assert row["bound"] == pytest.approx(oracle.FACTOR * ref_err + oracle.ULPS * oracle.EPS32 * np.abs(ref64).max())
    wrong = ref64.copy()
    wrong[17] += 1e-3  # far below any fixed 1e-4-relative tolerance on values of ~300, far above rounding
    assert not oracle.judge(wrong, ref32, ref64)["ok"]


def test_rule_is_on_the_scale_of_one_for_tiny_outputs():
    """A probability of 4e-9 flushed to 0 by a kernel is float rounding on the scale of 1."""
    ref64 = np.array([[4.4e-9]])
    assert oracle.judge(np.zeros((1, 1), np.float32), ref64.astype(np.float32), ref64)["ok"]


def test_float64_torch_and_onnx(tmp_path):
    module, inputs = tiny()
    out, why = oracle.float64_outputs(from_module(module, inputs), [inputs[0].numpy()])
    assert why is None and out[0].dtype == np.float64
    np.testing.assert_allclose(out[0], module(*inputs).detach().numpy(), atol=1e-5)
    w = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Sigmoid", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(2).random((2, 4), dtype=np.float32)
    from edgekit.compile.source import from_spec

    (z,), why = oracle.float64_outputs(from_spec(str(path)), [x])
    assert why is None and z.dtype == np.float64
    np.testing.assert_allclose(z, 1 / (1 + np.exp(-(x.astype(np.float64) @ w.astype(np.float64)))), rtol=1e-12)


def test_manifest_records_the_rule_and_both_errors(tmp_path):
    module, inputs = tiny()
    art = edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "a")
    v = edgekit.load(art, trust=False).manifest.verify
    assert v["status"] == "pass" and v["rule"] == "float64" and v["factor"] == oracle.FACTOR
    (row,) = v["outputs"]
    assert row["ok"] and 0 <= row["err_vs_float64"] <= row["bound"]
    assert row["reference_err_vs_float64"] > 0 and "max_abs_err" in row


def test_atol_rtol_are_an_explicit_override(tmp_path):
    module, inputs = tiny()
    art = edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "a", atol=1e-3)
    v = edgekit.load(art, trust=False).manifest.verify
    assert v["rule"] == "fixed" and v["atol"] == 1e-3 and v["why"] == "--atol/--rtol given"
    assert "err_vs_float64" not in v["outputs"][0]


class NoDouble(nn.Module):
    """A model with an op that has no float64 path (stands for custom kernels)."""

    def forward(self, x):
        if x.dtype == torch.float64:
            raise RuntimeError("kernel only for float32")
        return torch.relu(x) * 2


def test_models_without_float64_fall_back_to_the_fixed_tolerance(tmp_path):
    art = edgekit.compile_model(NoDouble(), (torch.rand(2, 5),), backend="onnxruntime", output=tmp_path / "a")
    v = edgekit.load(art, trust=False).manifest.verify
    assert v["status"] == "pass" and v["rule"] == "fixed" and v["atol"] == 1e-4
    assert v["why"].startswith("fallback: the reference cannot run in float64") and "kernel only" in v["why"]


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("tvm", marks=pytest.mark.slow),
                                     pytest.param("executorch", marks=pytest.mark.slow)])
def test_broken_lowering_fails_verification_with_default_flags(backend, tmp_path):
    module, inputs = tiny()
    with layers.lowering_hook(perturb_second_conv), pytest.raises(EdgekitError) as exc:
        edgekit.compile_model(module, inputs, backend=backend, output=tmp_path / "a")
    text = str(exc.value)
    assert "further from the float64 evaluation" in text and "edgekit inspect" in text
    assert not (tmp_path / "a").exists()


def test_cli_broken_lowering_exits_2_without_traceback(tmp_path, capsys):
    from edgekit.cli import main

    spec = f"{Path(__file__).resolve().parents[1] / 'examples' / 'conv_attention.py'}:build"

    def perturb(module):
        with torch.no_grad():
            dict(module.named_parameters())["mlp.0.weight"][3, 1] += 0.1

    with layers.lowering_hook(perturb):
        code = main(["compile", "--model", spec, "--backend", "onnxruntime", "--output", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "float64" in err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm", "executorch"])
@pytest.mark.parametrize("model", POSE, ids=lambda p: p.stem)
def test_mediapipe_pose_models_pass_with_default_flags(model, backend, tmp_path):
    if not model.is_file():
        pytest.skip(f"{model} not found (set EDGEKIT_WEIGHTS)")
    art = edgekit.compile_model(str(model), backend=backend, output=tmp_path / "a")
    v = json.loads((art / "manifest.json").read_text())["verify"]
    assert v["status"] == "pass" and v["rule"] == "float64" and v["model"] == str(model.absolute())
    assert all(o["err_vs_float64"] <= o["bound"] for o in v["outputs"])
