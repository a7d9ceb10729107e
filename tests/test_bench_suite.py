"""The bench suite's model rows: every backend and precision gets a row, a failed compile a row that says why,
and the report (JSON, Markdown, plots) is written from the same rows."""
import json
import sys
from pathlib import Path

from edgekit import backends
from edgekit.apps.spec import ModelCase, QuantRecipe
from edgekit.bench.report import write_report
from edgekit.bench.suite import bench_model

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fragile  # noqa: E402


def test_rows_ratios_and_a_failed_int8_compile(tmp_path):
    module, inputs = fragile.build()
    # an int8 budget of zero drop, without fallback, fails the accuracy gate on every backend
    case = ModelCase("fragile", module, inputs, int8=QuantRecipe(fragile.calibration(), max_drop=0.0))
    rows = bench_model(case, tmp_path / "artifacts", iters=3, progress=lambda msg: None)
    by = {(r["impl"], r["precision"]): r for r in rows}
    assert {("eager", "fp32"), ("executorch", "fp32"), ("onnxruntime", "fp32"), ("tvm", "fp32")} <= set(by)
    for backend in backends.for_target("host"):
        failed = by[(backend, "int8")]
        assert failed["p50_ms"] is None and "accuracy gate failed" in failed["error"]
        ok = by[(backend, "fp32")]
        assert ok["peer"] == "eager fp32" and ok["payload_bytes"] > 0
        assert abs(ok["ratio_to_best_peer"] - ok["p50_ms"] / by[("eager", "fp32")]["p50_ms"]) < 1e-9
    report = {"machine": {"cpu": "test", "cores": 2, "threads": 2, "versions": {}, "date": "now"}, "limits": {},
              "seconds": {"fragile": 1.0}, "rows": rows}
    write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"] == json.loads(json.dumps(rows))
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "| fragile | tvm | int8 |" in md and "failed: int8 accuracy gate failed" in md
    assert (tmp_path / "out" / "latency_per_backend.png").stat().st_size > 0


def _row(case, impl, p50, precision="fp32", suite="models", error=None):
    return {"suite": suite, "case": case, "impl": impl, "precision": precision, "shape": [[1]], "p50_ms": p50,
            "p90_ms": p50, "min_ms": p50, "payload_bytes": None, "peer": "eager fp32", "ratio_to_best_peer": 1.0,
            **({"error": error} if error else {})}


def test_per_model_summary_names_the_fastest_backend_and_each_ratio(tmp_path):
    from edgekit.bench.report import summarize

    rows = [_row("m1", "eager", 10.0), _row("m1", "executorch", 4.0), _row("m1", "onnxruntime", 2.0),
            _row("m1", "tvm", 6.0), _row("m1", "tvm", None, "int8", error="int8 accuracy gate failed"),
            _row("m1", "onnxruntime", 3.0, "int8"), _row("m2", "eager", 1.0), _row("m2", "tvm", 0.5),
            _row("m2", "onnxruntime", None, error="lowering failed"),
            _row("k", "edgekit", 1.0, suite="kernel:scan")]  # kernels are not model cases
    summary = {(s["case"], s["precision"]): s for s in summarize(rows)}
    assert set(summary) == {("m1", "fp32"), ("m1", "int8"), ("m2", "fp32")}
    m1 = summary[("m1", "fp32")]
    assert m1["best"] == "onnxruntime" and m1["best_p50_ms"] == 2.0
    assert m1["ratio"] == {"eager": 5.0, "executorch": 2.0, "onnxruntime": 1.0, "tvm": 3.0}
    assert summary[("m1", "int8")]["best"] == "onnxruntime" and summary[("m1", "int8")]["failed"] == {
        "tvm": "int8 accuracy gate failed"}
    m2 = summary[("m2", "fp32")]
    assert m2["best"] == "tvm" and m2["ratio"] == {"eager": 2.0, "tvm": 1.0}
    assert m2["failed"] == {"onnxruntime": "lowering failed"}

    report = {"machine": {"cpu": "test", "cores": 2, "threads": 2, "versions": {}, "date": "now"}, "limits": {},
              "seconds": {}, "rows": rows}
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["summary"] == json.loads(json.dumps(
        summarize(rows)))
    md = (tmp_path / "bench.md").read_text()
    assert "| m1 | fp32 | onnxruntime | 2 | 2.00 | 3.00 | 1.00 | eager 5.00 |" in md
    assert "| m2 | fp32 | tvm | 0.5 |  | 1.00 | failed | eager 2.00 |" in md


def test_dynamic_rows_time_one_artifact_beside_a_static_one_per_size(tmp_path, monkeypatch):
    """Issue #23: "BACKEND dynamic" and "BACKEND static" rows per size; the ratio is dynamic p50 / static p50."""
    from edgekit.apps.spec import DynamicBench
    from edgekit.bench import suite

    monkeypatch.setattr(suite, "compiled_backends", lambda: ("onnxruntime",))
    module, inputs = fragile.build()
    case = ModelCase("fragile", module, inputs, dynamic=DynamicBench("input0:0=n:1..16", ({"n": 3}, {"n": 11})))
    rows = suite.bench_dynamic(case, tmp_path / "artifacts", iters=3, progress=lambda msg: None)
    assert [(r["impl"], r["shape"]) for r in rows] == [
        ("onnxruntime dynamic", [[3, 16]]), ("onnxruntime static", [[3, 16]]),
        ("onnxruntime dynamic", [[11, 16]]), ("onnxruntime static", [[11, 16]])]
    for dyn, static in zip(rows[::2], rows[1::2]):
        assert dyn["suite"] == static["suite"] == "dynamic" and dyn["peer"] == "onnxruntime static"
        assert dyn["ratio_to_best_peer"] == dyn["p50_ms"] / static["p50_ms"] and static["p50_ms"] > 0
    entries = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if p.is_dir())
    assert len(entries) == 3, entries  # one dynamic artifact for both sizes, a static one per size
