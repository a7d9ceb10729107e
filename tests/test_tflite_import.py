"""The TFLite importer against the TFLite runtime (ai-edge-litert) on MediaPipe's BlazePose models."""

import copy
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from edgekit.compile.tflite_import import load_tflite
from edgekit.errors import EdgekitError

SHARED = Path(__file__).parents[1] / "../shared"
WEIGHTS = SHARED / "weights/mediapipe"
IMAGE = SHARED / "data/pose/messi5.jpg"
MODELS = {"pose_detection": (-1.0, 1.0), "pose_landmark_full": (0.0, 1.0)}  # file stem: input value range
# Per output, max |actual - litert| <= ATOL + RTOL * max |litert|: float32 summation order moves every element of
# an output by about 1e-6 of that output's scale (box offsets and landmark coordinates reach ~700 input pixels),
# small elements included, so the relative part is taken against the output's largest value.
ATOL, RTOL = 1e-3, 1e-5
# The segmentation logits reach ~1.6e3 and move by ~0.1-0.2 with the summation order (LiteRT's XNNPACK and builtin
# kernels disagree by 0.1 on the same input); they are read as mask probabilities, so compared as those.
SEGMENTATION = ("pose_landmark_full", 2)

def photo_input(shape: tuple[int, ...], value_range: tuple[float, float]) -> np.ndarray:
    """A real photo resized to the model input, scaled to its value range (activations like in use)."""
    cv2 = pytest.importorskip("cv2")
    image = cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB)
    low, high = value_range
    resized = cv2.resize(image, (shape[2], shape[1]), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (resized / 255 * (high - low) + low)[None]


def litert_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def assert_matches(name: str, label: str, expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert [e.shape for e in expected] == [a.shape for a in actual]
    print(name, label, "raw max abs errors", [f"{np.abs(e - a).max():.2g}" for e, a in zip(expected, actual)])
    for index, (e, a) in enumerate(zip(expected, actual)):
        if (name, index) == SEGMENTATION:
            e, a = (0.5 * (1 + np.tanh(y.astype(np.float64) / 2)) for y in (e, a))  # sigmoid, no overflow
        error, scale = float(np.abs(a - e).max()), float(np.abs(e).max())
        assert error <= ATOL + RTOL * scale, f"{name} {label} output {index}: max abs err {error:.3g}, scale {scale:.3g}"


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request):
    path = WEIGHTS / f"{request.param}.tflite"
    if not (path.is_file() and IMAGE.is_file()):
        pytest.skip(f"MediaPipe weights or test photo not found under {SHARED}")
    module, examples = load_tflite(path)
    x = photo_input(tuple(examples[0].shape), MODELS[request.param])
    return request.param, module, examples, x, litert_outputs(path, x)


def test_eager_matches_litert(imported):
    name, module, _, x, expected = imported
    with torch.no_grad():
        actual = [y.numpy() for y in module(torch.from_numpy(x))]
    assert_matches(name, "eager", expected, actual)


def test_float64_import_agrees_with_litert_as_closely_as_litert_with_itself(imported):
    """The importer is exact: run in float64 (no rounding of its own) it is as close to LiteRT's XNNPACK kernels
    as LiteRT's builtin kernels are (within 2x, per output). What is left between a float32 backend and LiteRT
    is float32 summation order on both sides, not a wrong op, padding or weight conversion (those move outputs
    by orders of magnitude more)."""
    from ai_edge_litert.interpreter import OpResolverType

    name, module, _, x, expected = imported
    path = WEIGHTS / f"{name}.tflite"
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    builtin = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        actual = [y.numpy() for y in exact(torch.from_numpy(x).double())]
    for index, (e, b, a) in enumerate(zip(expected, builtin, actual)):
        litert_spread = float(np.abs(b.astype(np.float64) - e).max())
        error = float(np.abs(a - e).max())
        assert error <= 2 * litert_spread + 1e-6, f"{name} output {index}: {error:.3g} vs LiteRT's {litert_spread:.3g}"


def test_exports_with_the_same_outputs(imported):
    _, module, examples, x, _ = imported
    exported = torch.export.export(module, examples).module()
    with torch.no_grad():
        for a, b in zip(exported(torch.from_numpy(x)), module(torch.from_numpy(x))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["executorch", "onnxruntime", "tvm"])
def test_compiled_matches_litert(imported, backend, tmp_path):
    import edgekit

    name, module, examples, x, expected = imported
    artifact = edgekit.compile_model(module, examples, target="host", backend=backend, output=tmp_path / name,
                                     name=name, check=False)  # checked below on a photo, not zeros
    assert_matches(name, backend, expected, edgekit.load(artifact).run([x]))


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("backend", ["executorch", "onnxruntime", "tvm"])
def test_arm64_artifact_matches_litert_under_the_emulator(imported, backend, emulator_sysroot, tmp_path):
    import edgekit

    name, module, examples, x, expected = imported
    if name != "pose_landmark_full":
        pytest.skip("the landmark model stands for both on aarch64 (same ops, the larger graph)")
    artifact = edgekit.compile_model(module, examples, target="android-arm64", backend=backend,
                                     output=tmp_path / name, name=name, check=False)
    assert_matches(name, f"android-arm64 {backend}", expected, edgekit.load(artifact).run([x]))


def tiny_model(op: int, path: Path) -> Path:
    """A one-op float model (1x4x4x2 -> same shape) written with the TFLite schema's object API."""
    tensors = []
    for name in (b"x", b"y"):
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, [1, 4, 4, 2], schema.TensorType.FLOAT32, 0
        tensors.append(tensor)
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, [0], [1]
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [1], [operator]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = op
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def test_logistic_model_built_here_matches_litert(tmp_path):
    path = tiny_model(schema.BuiltinOperator.LOGISTIC, tmp_path / "logistic.tflite")
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32) * 4
    module, _ = load_tflite(path)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x))[0].numpy(), litert_outputs(path, x)[0], atol=1e-6)


def test_unsupported_op_is_named(tmp_path):
    path = tiny_model(schema.BuiltinOperator.TANH, tmp_path / "tanh.tflite")
    with pytest.raises(EdgekitError, match="TANH is not supported"):
        load_tflite(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(EdgekitError, match="not found"):
        load_tflite(tmp_path / "absent.tflite")
