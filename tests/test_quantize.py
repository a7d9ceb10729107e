"""int8 PTQ with an accuracy gate (issue 4): the fragile fixture trips --max-drop naming its layer, and
--auto-fallback keeps that layer in float until the drop fits; weight-only configs; clear errors."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgekit
from edgekit.compile.quantize import Int4WeightOnly, Int8WeightOnly, quantize_
from edgekit.errors import EdgekitError

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fragile  # noqa: E402


@pytest.mark.parametrize("backend", ["executorch", "onnxruntime"])
def test_fragile_layer_trips_the_gate_and_auto_fallback_fixes_it(backend, tmp_path):
    module, inputs = fragile.build()
    with pytest.raises(EdgekitError) as exc:
        edgekit.compile_model(module, inputs, backend=backend, output=tmp_path / "a", quantize="int8",
                              calibration=fragile.calibration(), max_drop=0.01)
    report = str(exc.value)
    assert "accuracy gate failed" in report
    worst = report.split("worst first:\n")[1].splitlines()[0].split()
    assert worst[0] == "fc1" and float(worst[1]) > 0.01
    assert not (tmp_path / "a").exists()

    art = edgekit.compile_model(module, inputs, backend=backend, output=tmp_path / "a", quantize="int8",
                                calibration=fragile.calibration(), max_drop=0.01, auto_fallback=True)
    manifest = edgekit.load(art).manifest
    q = manifest.quantization
    assert manifest.precision == "int8" and q["float_layers"] == ["fc1"]
    assert q["accuracy"]["metric"] == "cosine" and q["accuracy"]["drop"] <= 0.01
    assert q["held_out_samples"] == 3 and q["calibration_samples"] == 9


def test_int8_onnxruntime_artifact_holds_int8_ops(tmp_path, zoo_model):
    module, inputs, expected = zoo_model
    calib = [(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    art = edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "q", quantize="int8",
                                calibration=calib)
    ops = {n.op_type for n in onnx.load(str(art / "model.onnx")).graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
    model = edgekit.load(art)
    acc = model.manifest.quantization["accuracy"]
    assert acc["cosine"] > 0.99 and acc["snr_db"] > 15  # int8 of a healthy model stays close to fp32
    (got,) = model.run([inputs[0].numpy()])
    assert got.shape == expected.shape


class _SharedSkip(torch.nn.Module):
    """CFSR's tail in small: a float op and an unquantized add both read an int8 layer's output, and the add
    feeds another int8 layer."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 1)
        self.last = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        shallow = self.first(x)
        return self.last(self.body(torch.sigmoid(shallow) * shallow) + shallow)


def test_int8_executorch_lowers_a_skip_shared_by_float_ops(tmp_path):
    module = _SharedSkip().eval()
    calib = [(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    # before: XNNPACK's partition for the add took the shared dequantize: "found dependency cycles"
    art = edgekit.compile_model(module, calib[0], backend="executorch", output=tmp_path / "q", quantize="int8",
                                calibration=calib)
    model = edgekit.load(art)
    assert model.manifest.quantization["float_layers"] == []
    assert model.manifest.quantization["accuracy"]["cosine"] > 0.99


@pytest.mark.parametrize("config, tol", [(Int8WeightOnly(), 0.02), (Int4WeightOnly(group_size=16), 0.2)])
def test_weight_only_linear(config, tol):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    x = torch.randn(5, 64)
    expected = model(x)
    replaced = quantize_(model, config)
    assert replaced == ["0", "2"]
    assert model[0].qweight.dtype == torch.int8
    assert model[0].qweight.abs().max() <= (127 if isinstance(config, Int8WeightOnly) else 8)
    err = (model(x) - expected).abs().max() / expected.abs().max()
    assert 0 < err < tol


def test_weight_only_compiles_with_a_measured_figure(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    art = edgekit.compile_model(model, (torch.randn(2, 64),), backend="executorch", output=tmp_path / "w",
                                quantize="int8-weight-only")
    q = edgekit.load(art).manifest.quantization
    assert q["scheme"] == "int8-weight-only" and q["accuracy"]["cosine"] > 0.999


@pytest.mark.parametrize("scheme, bits, max_fraction", [("int8-weight-only", 8, 0.30), ("int4-weight-only", 4, 0.18)])
def test_weight_only_onnxruntime_stores_packed_integers(tmp_path, scheme, bits, max_fraction):
    """Read from the payload, not the manifest: every Linear becomes MatMulNBits with `bits`-bit weights packed in
    uint8, no float copy of those weights is left, and model.onnx shrinks to the integer size."""
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).eval()
    x = (torch.randn(1, 6, 256),)
    fp32 = edgekit.compile_model(model, x, backend="onnxruntime", output=tmp_path / "f")
    art = edgekit.compile_model(model, x, backend="onnxruntime", output=tmp_path / "q", quantize=scheme)
    graph = onnx.load(str(art / "model.onnx"))
    packed = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert len(packed) == 2 and all(a.i == bits for n in packed for a in n.attribute if a.name == "bits")
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    assert all(weights[n.input[1]].dtype == np.uint8 for n in packed)
    assert not [w for w in weights.values() if w.dtype == np.float32 and w.size >= 256 * 256]  # no float weights
    fraction = (art / "model.onnx").stat().st_size / (fp32 / "model.onnx").stat().st_size
    assert fraction <= max_fraction, fraction
    manifest = edgekit.load(art).manifest
    assert "MatMulNBits" in manifest.quantization["compute"]
    y = edgekit.load(art).run([x[0].numpy()])[0]
    assert np.abs(y - model(x[0]).detach().numpy()).max() < (0.02 if bits == 8 else 0.2)


@pytest.mark.parametrize("backend", ["executorch", "onnxruntime"])
@pytest.mark.parametrize("scheme, max_fraction", [("int8-dynamic", 0.30), ("int4-dynamic", 0.18)])
def test_dynamic_int8_stores_integer_weights_and_runs_integer_kernels(tmp_path, backend, scheme, max_fraction):
    """int8 activations at run time, 8- or 4-bit weights in the payload (read from the file): on ExecuTorch the
    XNNPACK delegate holds the packed weights (the .pte shrinks), on ONNX Runtime MatMulNBits at accuracy level 4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).eval()
    x = (torch.randn(1, 6, 256),)
    fp32 = edgekit.compile_model(model, x, backend=backend, output=tmp_path / "f")
    art = edgekit.compile_model(model, x, backend=backend, output=tmp_path / "q", quantize=scheme)
    entry = edgekit.load(art).manifest.entry
    fraction = (art / entry).stat().st_size / (fp32 / entry).stat().st_size
    assert fraction <= max_fraction, fraction
    if backend == "onnxruntime":
        import onnx

        nodes = onnx.load(str(art / entry)).graph.node
        levels = [a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"]
        assert levels == [4, 4]
    manifest = edgekit.load(art).manifest
    assert manifest.quantization["scheme"] == scheme and "int8 activations" in manifest.quantization["compute"]
    y = edgekit.load(art).run([x[0].numpy()])[0]
    expected = model(x[0]).detach().numpy()
    assert 0 < np.abs(y - expected).max() < (0.05 if scheme == "int8-dynamic" else 0.3)


def test_dynamic_int8_is_refused_where_no_backend_kernel_exists(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(16, 16)).eval()
    with pytest.raises(EdgekitError, match="int8-dynamic is not available for backend 'tvm'"):
        edgekit.compile_model(model, (torch.randn(1, 16),), backend="tvm", output=tmp_path / "t",
                              quantize="int8-dynamic")
    assert not (tmp_path / "t").exists()


def test_quantization_errors(tmp_path, zoo_model):
    module, inputs, _ = zoo_model
    with pytest.raises(EdgekitError, match="needs calibration data"):
        edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "a", quantize="int8")
    with pytest.raises(EdgekitError, match="--no-verify cannot be combined with --quantize"):
        edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "a", quantize="int8",
                              calibration=[inputs, inputs], check=False)
    with pytest.raises(EdgekitError, match=r"calibration sample 0 has inputs \[\(\[1, 3, 8, 8\]"):
        edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "a", quantize="int8",
                              calibration=[(torch.zeros(1, 3, 8, 8),)] * 2)
    with pytest.raises(EdgekitError, match="unknown quantization 'int2'"):
        edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "a", quantize="int2")
    with pytest.raises(EdgekitError, match="apply to quantization"):
        edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "a", max_drop=0.1)
    with pytest.raises(EdgekitError, match="group size 48 does not divide in_features 64"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(64, 4)), Int4WeightOnly(group_size=48))
    with pytest.raises(EdgekitError, match="pass the module that holds the Linear"):
        quantize_(torch.nn.Linear(64, 4), Int8WeightOnly())
    assert not (tmp_path / "a").exists()


def test_calibration_directory_via_cli(cli, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, (x,) in enumerate(fragile.calibration(8)):
        np.save(calib / f"{i:03d}.npy", x.numpy())
    spec = f"{Path(fragile.__file__)}:build"
    code, out, err = cli("compile", "--model", spec, "--backend", "onnxruntime", "--output", tmp_path / "o",
                         "--quantize", "int8", "--calibration", calib, "--max-drop", "0.01", "--auto-fallback")
    assert code == 0, err
    assert "float layers: fc1" in out
    code, _, err = cli("compile", "--model", spec, "--backend", "onnxruntime", "--output", tmp_path / "p",
                       "--quantize", "int8", "--calibration", tmp_path / "nowhere")
    assert code == 2 and "calibration directory not found" in err


class _Chain(torch.nn.Module):
    """fc1 and fc3 each have an output channel ~1000x the rest (fragile alone); fc2 and fc4 are healthy."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 32)
        self.fc3, self.fc4 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight[0] *= 1000.0
            self.fc3.weight[5] *= 1000.0

    def forward(self, x):
        return self.fc4(torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))))


def test_fallback_returns_exactly_the_fragile_layers_to_float():
    from edgekit.compile.quantize import Int8Static, QuantPlan
    from edgekit.compile.quantize.choose import choose_float_layers, simulated_score
    from edgekit.compile.source import from_module

    torch.manual_seed(0)
    source = from_module(_Chain().eval(), (torch.randn(4, 16),), "chain")
    samples = [[x.numpy() for x in s] for s in fragile.calibration(16)]
    plan = QuantPlan(Int8Static(), samples[:12], samples[12:], max_drop=0.01, auto_fallback=True)
    assert simulated_score(source, plan).drop > 0.01
    for layer in ("fc1", "fc3"):   # either fragile layer alone in int8 breaks the budget
        assert simulated_score(source, plan, only=frozenset([layer])).drop > 0.01
    chosen = choose_float_layers(source, plan)
    assert chosen == {"fc1", "fc3"}
    assert simulated_score(source, plan, skip=chosen).drop <= 0.01


def test_functionally_called_linears_are_not_int8_candidates():
    from edgekit.compile.quantize.fakequant import candidate_layers

    class WithAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.proj(self.attn(x, x, x, need_weights=False)[0])

    # MultiheadAttention reads out_proj's weights inside a functional call: wrapping it would break the model
    assert candidate_layers(WithAttention().eval(), (torch.randn(1, 5, 8),)) == ["proj"]


def test_task_metric_reuses_the_outputs_of_one_run_per_sample():
    from edgekit.compile.quantize.gate import score

    calls = {"fp32": 0, "int8": 0}

    def runner(kind, gain):
        def run(inputs):
            calls[kind] += 1
            return [inputs[0] * gain]
        return run

    def mean_output(run, samples):
        return float(np.mean([run(s)[0].mean() for s in samples]))

    held = [[np.full((2, 2), float(i + 1), np.float32)] for i in range(3)]
    result = score(runner("fp32", 1.0), runner("int8", 0.5), held, mean_output)
    assert calls == {"fp32": 3, "int8": 3}
    assert result.fp32 == pytest.approx(2.0) and result.quantized == pytest.approx(1.0) and result.drop > 0


def test_artifact_over_budget_is_rebuilt_with_more_float_layers(tmp_path, monkeypatch):
    """The simulation that picks float layers can be optimistic about a backend's kernels: with --auto-fallback
    the artifact's own figure decides, and the compile rebuilds with the next most sensitive layers in float."""
    from edgekit.compile.quantize import choose

    monkeypatch.setattr(choose, "_CHOSEN", {})
    monkeypatch.setattr(choose, "_choose", lambda source, plan: frozenset())  # a simulation that sees no loss
    module, inputs = fragile.build()
    art = edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "a", quantize="int8",
                                calibration=fragile.calibration(), max_drop=0.01, auto_fallback=True)
    q = edgekit.load(art).manifest.quantization
    assert q["float_layers"] == ["fc1"] and q["accuracy"]["drop"] <= 0.01
    with pytest.raises(EdgekitError, match="accuracy gate failed"):   # without --auto-fallback: no rebuild
        edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "b", quantize="int8",
                              calibration=fragile.calibration(), max_drop=0.01)
    assert not (tmp_path / "b").exists()
