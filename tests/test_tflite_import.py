"""The TFLite importer against the TFLite runtime (ai-edge-litert) on MediaPipe's BlazePose models."""

import copy
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from edgekit import backends
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


# Per op, float64 vs LiteRT's float32 kernels: a convolution's element rounds its K products and K-1 sums, so its
# error scales with sum |w x| + |b| (measured on both models: at most 3.6 eps; an add 0.5 eps, a bilinear resize 1.7
# eps, pad/pool/reshape/concat/depth-to-space exact). A wrong op (padding side, layout, resize sampling, weight
# conversion) is off by ~1e-3 of the values or more, >1e4 eps.
OP_EPS = 8


def op_magnitude(layer: torch.nn.Module, inputs: list[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Per element, the scale float32 rounding of this op is relative to."""
    from edgekit.compile import tflite_ops as ops

    if isinstance(layer, ops.Conv):
        conv, x = layer.conv, inputs[0].abs()
        x = torch.nn.functional.pad(x, layer.pad) if any(layer.pad) else x
        bias = None if conv.bias is None else conv.bias.abs()
        return torch.nn.functional.conv2d(x, conv.weight.abs(), bias, conv.stride, 0, conv.dilation, conv.groups)
    if isinstance(layer, ops.Logistic):
        return torch.ones_like(output)  # absolute error of a value in (0, 1)
    return layer(*(x.abs() for x in inputs)).abs()  # add, resize: their terms' magnitudes; the rest: exact copies


def test_every_op_matches_litert_on_litert_own_inputs(imported):
    """Op by op, without the network's amplification: each imported layer, run in float64 on the float32 tensors
    LiteRT's builtin kernels gave that op (experimental_preserve_all_tensors), is within OP_EPS float32 roundings
    of LiteRT's output for that op. End to end the outputs differ more (landmarks ~1e-3 px, segmentation logits
    ~0.2) because the network amplifies float32 rounding: LiteRT's XNNPACK and builtin kernels differ as much."""
    from ai_edge_litert.interpreter import OpResolverType

    name, module, _, x, _ = imported
    interpreter = Interpreter(model_path=str(WEIGHTS / f"{name}.tflite"), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()

    def litert_tensor(index: int) -> torch.Tensor:  # NCHW inside the imported graph
        t = torch.from_numpy(interpreter.get_tensor(index).astype(np.float64))
        return t.permute(0, 3, 1, 2) if t.dim() == 4 else t

    exact = copy.deepcopy(module).double()
    eps = float(np.finfo(np.float32).eps)
    checked = 0
    with torch.no_grad():
        for layer, (sources, target) in zip(exact.layers, exact.wiring):
            inputs, expected = [litert_tensor(i) for i in sources], litert_tensor(target)
            actual = layer(*inputs)
            ratio = float(((actual - expected).abs() / (op_magnitude(layer, inputs, actual) + 1e-30)).max())
            assert ratio <= OP_EPS * eps, f"{name} op {checked} ({type(layer).__name__}): {ratio / eps:.3g} eps"
            checked += 1
    assert checked == len(exact.layers) > 100


def test_exports_with_the_same_outputs(imported):
    _, module, examples, x, _ = imported
    exported = torch.export.export(module, examples).module()
    with torch.no_grad():
        for a, b in zip(exported(torch.from_numpy(x)), module(torch.from_numpy(x))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.names())
def test_compiled_matches_litert(imported, backend, tmp_path):
    import edgekit

    name, module, examples, x, expected = imported
    artifact = edgekit.compile_model(module, examples, target="host", backend=backend, output=tmp_path / name,
                                     name=name, check=False)  # checked below on a photo, not zeros
    assert_matches(name, backend, expected, edgekit.load(artifact).run([x]))


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("backend", backends.names())
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
