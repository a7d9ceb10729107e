"""`edgekit inspect` (issue 25): the first op beyond float rounding on a broken lowering, per backend; none on a
correct artifact; per-layer SQNR for quantized artifacts; JSON rows; bad input."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import inspect
from edgekit.cli import main
from edgekit.compile import layers
from edgekit.errors import EdgekitError

sys.path.insert(0, str(Path(__file__).parent))
from test_oracle import perturb_second_conv, tiny  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fragile  # noqa: E402

ERROR_FIELDS = {"max_err_vs_float64", "mean_err_vs_float64", "max_err_vs_fp32", "mean_err_vs_fp32", "bound",
                "within_rounding"}


def broken_and_correct(backend, root, target="host"):
    module, inputs = tiny()
    good = edgekit.compile_model(module, inputs, backend=backend, target=target, output=root / "good")
    with layers.lowering_hook(perturb_second_conv):
        bad = edgekit.compile_model(module, inputs, backend=backend, target=target, output=root / "bad", check=False)
        broken = inspect.inspect_artifact(bad, (module, inputs))
    return broken, inspect.inspect_artifact(good, (module, inputs))


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("tvm", marks=pytest.mark.slow),
                                     pytest.param("executorch", marks=pytest.mark.slow)])
def test_inspect_names_the_perturbed_op_first(backend, tmp_path):
    broken, correct = broken_and_correct(backend, tmp_path)
    assert [r["op"] for r in broken["rows"]] == ["conv2d", "relu", "conv2d", "relu", "linear"]
    assert broken["first_divergent"] == "conv2d_1"
    row = broken["rows"][2]
    assert row["module"] == "2 (Conv2d)" and not row["within_rounding"]
    assert row["max_err_vs_float64"] > 100 * row["bound"]
    assert all(r["within_rounding"] for r in broken["rows"][:2])
    assert correct["first_divergent"] is None and all(r["within_rounding"] for r in correct["rows"])
    assert "<- first beyond float rounding" in inspect.format_table(broken)
    assert "no op beyond float rounding" in inspect.summary(correct)


@pytest.mark.emulator
def test_inspect_under_the_emulator(tmp_path, emulator_sysroot):
    broken, correct = broken_and_correct("onnxruntime", tmp_path, target="android-arm64")
    assert broken["first_divergent"] == "conv2d_1" and correct["first_divergent"] is None


def test_cli_json_one_row_per_op_and_plot(tmp_path, capsys):
    spec = f"{Path(__file__).resolve().parents[1] / 'examples' / 'conv_attention.py'}:build"
    out = tmp_path / "a"
    assert main(["compile", "--model", spec, "--backend", "onnxruntime", "--output", str(out)]) == 0
    capsys.readouterr()
    # the model is found from the manifest's record of what was compiled
    assert main(["inspect", str(out), "--json", "--plot", str(tmp_path / "p.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    ops = [r["op"] for r in report["rows"]]
    assert "conv2d" in ops and "scaled_dot_product_attention" in ops and "layer_norm" in ops
    assert len(set(r["name"] for r in report["rows"])) == len(ops)
    assert all(ERROR_FIELDS <= set(r) for r in report["rows"])
    assert report["first_divergent"] is None
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quantized_artifact_lists_sqnr_per_layer(tmp_path):
    module, inputs = fragile.build()
    art = edgekit.compile_model(module, inputs, backend="executorch", output=tmp_path / "q", quantize="int8",
                                calibration=fragile.calibration(), max_drop=0.01, auto_fallback=True)
    assert edgekit.load(art, trust=False).manifest.quantization["float_layers"] == ["fc1"]
    report = inspect.inspect_artifact(art, (module, inputs), calibration=fragile.calibration())
    assert report["precision"] == "int8"
    sqnr = {r["name"]: r["sqnr_db"] for r in report["rows"] if r["op"] == "Linear"}
    assert set(sqnr) == {"fc1", "fc2"}
    # the debug build keeps the artifact's float layer in float: fc1 at float rounding, fc2 at int8 noise
    assert sqnr["fc1"] > 100 and np.isfinite(sqnr["fc2"]) and sqnr["fc2"] < 80
    assert "SQNR dB" in inspect.format_table(report)


def test_bad_input(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an edgekit artifact" in err and "Traceback" not in err
    module, inputs = tiny()
    art = edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "a")
    assert main(["inspect", str(art)]) == 2
    assert "pass --model" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    spec = f"{Path(__file__).resolve().parents[1] / 'examples' / 'conv_attention.py'}:build"
    assert main(["inspect", str(art), "--model", spec, "--input", str(tmp_path / "x.npy")]) == 2
    assert "--input #0" in capsys.readouterr().err


def test_gate_failure_shows_the_inspect_table_of_the_worst_layers(tmp_path):
    module, inputs = fragile.build()
    with pytest.raises(EdgekitError) as exc:
        edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "a", quantize="int8",
                              calibration=fragile.calibration(), max_drop=0.01)
    report = str(exc.value)
    table = report.split("Worst layers (edgekit inspect")[1].splitlines()
    assert "SQNR dB" in table[1]
    rows = {line.split()[1]: float(line.split()[-1]) for line in table[2:] if line.strip()}
    assert set(rows) == {"fc1", "fc2"} and all(v < 30 for v in rows.values())  # far below int8's ~40 dB
