"""Issue #23: dynamic shapes. `--dynamic` / torch.export Dims make named axes symbolic with bounds on every backend;
one artifact is verified at the smallest, an odd and the largest size, records each range in its manifest, runs any
size in range and refuses one outside with a message naming the axis and the range."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgekit
from edgekit import backends
from edgekit.compile import dynamic
from edgekit.errors import EdgekitError

from conftest import MODEL_SPEC

LOW, HIGH = 16, 96
DYNAMIC = f"input0:2={LOW}..{HIGH},3={LOW}..{HIGH}"


def _clean_error(result, *needles):
    """result: the cli fixture's (exit code, stdout, stderr)."""
    code, _, err = result
    assert code == 2, err
    assert "edgekit: error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"


# ---------------------------------------------------------------- the --dynamic grammar and torch Dims

def test_parse_names_axes_and_shared_sizes():
    dims = dynamic.normalize(["image:2=h:64..1024,3=64..512", "mask:2=h:64..1024"], ["image", "mask"])
    assert dims[0][2] == dynamic.Dim("h", 64, 1024) and dims[1][2] == dynamic.Dim("h", 64, 1024)
    assert dims[0][3] == dynamic.Dim("input0_3", 64, 512)  # unnamed: named after its input and axis
    assert dynamic.normalize("input1:0=1..8", ["a", "b"]) == {1: {0: dynamic.Dim("input1_0", 1, 8)}}


@pytest.mark.parametrize("text,needle", [
    ("2=64..1024", "expected INPUT:AXIS=MIN..MAX"),
    ("input0:2=64-1024", "cannot read '2=64-1024'"),
    ("input0:2=1024..64", "range 1024..64 is empty"),
    ("input0:2=0..8", "starts below 1"),
    ("input0:2=1..8,2=1..9", "axis 2 is given twice"),
    ("nope:2=1..8", "'nope', not an input of the model; its inputs are x"),
])
def test_bad_dynamic_text_says_what_and_how(text, needle):
    with pytest.raises(EdgekitError) as info:
        dynamic.normalize(text, ["x"])
    assert needle in str(info.value)


def test_one_name_takes_one_range():
    with pytest.raises(EdgekitError, match="size 'h' is 1..8 at a axis 0 but 1..9 at b axis 0"):
        dynamic.normalize("a:0=h:1..8;b:0=h:1..9", ["a", "b"])


def test_torch_dims_need_an_upper_bound():
    from torch.export import Dim

    h = Dim("h", min=16, max=96)
    assert dynamic.normalize({"x": {2: h, 3: h}}, ["x"]) == {0: {2: dynamic.Dim("h", 16, 96), 3: dynamic.Dim("h", 16, 96)}}
    with pytest.raises(EdgekitError, match=r"no upper bound; give torch.export.Dim\('n', min=..., max=...\)"):
        dynamic.normalize({"x": {0: Dim("n")}}, ["x"])
    with pytest.raises(EdgekitError, match="names y, not an input"):
        dynamic.normalize({"y": {0: h}}, ["x"])


def test_verification_sizes_are_the_ends_and_an_odd_size_between():
    dims = dynamic.normalize("x:2=64..1024,3=64..1024", ["x"])
    low, mid, high = dynamic.sizes(dims)
    assert low == {"input0_2": 64, "input0_3": 64} and high == {"input0_2": 1024, "input0_3": 1024}
    assert all(n % 2 and 64 < n < 1024 for n in mid.values())
    assert mid["input0_2"] != mid["input0_3"]  # not a square: H and W are not swapped unseen
    assert dynamic.sizes(dynamic.normalize("x:0=5..5", ["x"])) == [{"input0_0": 5}]  # one size, verified once


# ---------------------------------------------------------------- one artifact, every backend

@pytest.fixture(scope="module")
def dynamic_artifacts(tmp_path_factory):
    """The bundled conv+attention model with a dynamic H and W, compiled for host by every backend via the CLI."""
    from edgekit.cli import main

    root = tmp_path_factory.mktemp("dynamic")
    arts = {}
    for backend in backends.for_target("host"):
        out = root / backend
        assert main(["compile", "--model", MODEL_SPEC, "--backend", backend, "--dynamic", DYNAMIC,
                     "--output", str(out)]) == 0
        arts[backend] = out
    return arts


def _eager(x: np.ndarray) -> np.ndarray:
    import torch

    from edgekit.zoo import conv_attention

    module, _ = conv_attention()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("backend", backends.for_target("host"))
def test_manifest_records_ranges_and_verification_at_three_sizes(dynamic_artifacts, backend):
    manifest = json.loads((dynamic_artifacts[backend] / "manifest.json").read_text())
    (spec,) = manifest["inputs"]
    assert spec["dynamic"] == {"2": {"name": "input0_2", "min": LOW, "max": HIGH},
                               "3": {"name": "input0_3", "min": LOW, "max": HIGH}}
    verified = manifest["verify"]
    assert verified["status"] == "pass"
    shapes = [s["input_shapes"][0][2:] for s in verified["sizes"]]
    assert [LOW, LOW] in shapes and [HIGH, HIGH] in shapes
    assert any(h % 2 and w % 2 and h != w and LOW < h < HIGH for h, w in shapes), shapes
    if backend == "executorch":
        assert "upper bound" in manifest["backend_info"]["memory_plan"]
    if backend == "onnxruntime":
        assert manifest["backend_info"]["symbolic_dims"]


@pytest.mark.parametrize("backend", backends.for_target("host"))
@pytest.mark.parametrize("h,w", [(LOW, HIGH), (41, 77)])
def test_any_size_in_range_runs_and_matches_eager(dynamic_artifacts, backend, h, w):
    x = np.random.default_rng(h * w).standard_normal((1, 3, h, w), dtype=np.float32)
    (got,) = edgekit.load(dynamic_artifacts[backend]).run([x])
    expected = _eager(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", backends.for_target("host"))
def test_out_of_range_and_wrong_rank_are_refused_by_load_run(dynamic_artifacts, backend):
    model = edgekit.load(dynamic_artifacts[backend])
    with pytest.raises(EdgekitError) as info:
        model.run([np.zeros((1, 3, HIGH + 1, 32), np.float32)])
    for needle in ("axis 2", str(HIGH + 1), f"{LOW}..{HIGH}", "--dynamic"):
        assert needle in str(info.value).lower(), str(info.value)
    with pytest.raises(EdgekitError, match="rank"):
        model.run([np.zeros((3, 32, 32), np.float32)])
    with pytest.raises(EdgekitError, match="(?i)axis 1"):  # a static axis: names it and how to make it dynamic
        model.run([np.zeros((1, 4, 32, 32), np.float32)])


def test_cli_run_out_of_range_exits_2(cli, dynamic_artifacts, tmp_path):
    art = dynamic_artifacts["onnxruntime"]
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((1, 3, LOW - 1, 32), np.float32))
    _clean_error(cli("run", art, "--input", small, "--output", tmp_path / "out.npz"), "axis 2", str(LOW - 1), f"{LOW}..{HIGH}")
    assert not (tmp_path / "out.npz").exists()
    rank = tmp_path / "rank.npy"
    np.save(rank, np.zeros((3, 32, 32), np.float32))
    _clean_error(cli("run", art, "--input", rank, "--output", tmp_path / "out.npz"), "rank")
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((1, 3, 23, 61), np.float32))
    assert cli("run", art, "--input", ok, "--output", tmp_path / "out.npz")[0] == 0
    assert np.load(tmp_path / "out.npz")["output0"].shape == (1, 12 * 31, 32)  # a token per stride-2 conv pixel


def test_manifest_spec_describes_the_ranges(dynamic_artifacts):
    spec = edgekit.load(dynamic_artifacts["tvm"]).manifest.inputs[0]
    assert f"{LOW}..{HIGH}" in spec.describe()
    assert spec.max_shape() == [1, 3, HIGH, HIGH]


def test_bad_dynamic_flag_exits_2_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "a"
    _clean_error(cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--dynamic", "input0:2=64-128",
                      "-o", out), "cannot read '2=64-128'", "expected INPUT:AXIS=MIN..MAX")
    _clean_error(cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--dynamic", "input0:7=1..8",
                      "-o", out), "has 4 axes")
    assert not out.exists()


def test_quantize_with_dynamic_is_refused(cli, tmp_path):
    _clean_error(cli("compile", "--model", MODEL_SPEC, "--backend", "executorch", "--dynamic", DYNAMIC,
                      "--quantize", "int8-dynamic", "-o", tmp_path / "q"), "--dynamic")


def test_torch_dims_through_compile_model(tmp_path):
    """compile_model takes torch.export's own Dim objects, by forward()'s parameter name."""
    from torch.export import Dim

    from edgekit.compile import compile_model
    from edgekit.zoo import conv_attention

    module, inputs = conv_attention()
    h, w = Dim("h", min=LOW, max=HIGH), Dim("w", min=LOW, max=HIGH)
    art = compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "ort",
                        dynamic_shapes={"x": {2: h, 3: w}})
    model = edgekit.load(art)
    assert {d["name"] for d in model.manifest.inputs[0].dynamic.values()} == {"h", "w"}
    x = np.random.default_rng(3).standard_normal((1, 3, 31, 53), dtype=np.float32)
    np.testing.assert_allclose(model.run([x])[0], _eager(x), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- ONNX models with symbolic dimensions

@pytest.fixture
def symbolic_onnx(tmp_path):
    """y = Relu(x) * 2 over x: [1, 3, H, W] with H and W symbolic ("height", "width")."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper

    two = helper.make_tensor("two", T.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, "height", "width"])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [1, 3, "height", "width"])], [two])
    path = tmp_path / "sym.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_symbolic_onnx_without_ranges_says_how(cli, symbolic_onnx, tmp_path):
    _clean_error(cli("compile", "--model", symbolic_onnx, "--backend", "onnxruntime", "-o", tmp_path / "a"),
                 "height", "--dynamic")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_symbolic_onnx_compiles_with_ranges(cli, symbolic_onnx, tmp_path, backend):
    out = tmp_path / backend
    code, _, err = cli("compile", "--model", symbolic_onnx, "--backend", backend,
                       "--dynamic", "x:2=8..64,3=8..64", "-o", out)
    assert code == 0, err
    spec = edgekit.load(out).manifest.inputs[0]
    assert {d["name"] for d in spec.dynamic.values()} == {"height", "width"}  # the graph's own names
    x = np.random.default_rng(0).standard_normal((1, 3, 29, 13), dtype=np.float32)
    (y,) = edgekit.load(out).run([x])
    np.testing.assert_allclose(y, np.maximum(x, 0) * 2, rtol=1e-6)


# ---------------------------------------------------------------- android-arm64 under the emulator

@pytest.mark.emulator
@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.for_target("android-arm64"))
def test_dynamic_artifact_for_android_arm64(cli, emulator_sysroot, tmp_path, backend):
    """Compiled for the phone target: verified under the emulator at the three sizes, then run at another one."""
    out = tmp_path / backend
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--target", "android-arm64", "--backend", backend,
                       "--dynamic", DYNAMIC, "-o", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    verified = manifest["verify"]
    assert verified["status"] == "pass" and len(verified["sizes"]) == 4, verified  # the example, then 3 sizes
    from edgekit.runtimes import emulator

    x = np.random.default_rng(5).standard_normal((1, 3, 19, 88), dtype=np.float32)
    (got,), _ = emulator.run_artifact(out, None, [x])
    np.testing.assert_allclose(got, _eager(x), atol=1e-4, rtol=1e-4)
