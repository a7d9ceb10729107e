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
