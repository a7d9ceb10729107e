"""`edgekit tune` (compile/tune.py): MetaSchedule tunes a tiny model with real measured trials into a tuning folder,
`compile --backend tvm` applies the database (recorded in the manifest) and still verifies, and the compiled-model
cache key follows the database. Needs apache-tvm-ffi 0.1.14 (0.1.15 segfaults in MetaSchedule's serialisation)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm")

from edgekit.compile import cache, compile_model  # noqa: E402
from edgekit.compile.lower import tvm_schedule  # noqa: E402
from edgekit.compile.tune import summary, tune_model  # noqa: E402


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_tune_then_compile_applies_database(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TUNING_DIR", str(tmp_path / "tuning"))
    torch.manual_seed(0)
    model, inputs = Tiny().eval(), (torch.randn(1, 4, 12, 12),)
    key_before = cache.key(model, inputs, backend="tvm", target="host")

    folder = tune_model(model, inputs, target="host", trials=6, trials_per_iter=3, name="tiny")
    assert folder == tmp_path / "tuning" / "host" / "tiny"
    s = summary(folder)
    assert s["records"] >= 1 and s["best_total_s"] > 0  # real builds, real measured latencies

    out = compile_model(model, inputs, target="host", backend="tvm", output=tmp_path / "art", name="tiny")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verify"]["status"] == "pass"
    info = manifest["backend_info"]
    assert info["tuning"]["sha256"] == tvm_schedule.database_digest(folder) == s["sha256"]
    assert "MetaSchedule database" in info["pipeline"] and " 0 tuned kernels" not in info["pipeline"]

    assert cache.key(model, inputs, backend="tvm", target="host") != key_before
    assert cache.key(model, inputs, backend="onnxruntime", target="host") == cache.key(
        model, inputs, backend="onnxruntime", target="host")


def test_untuned_model_has_no_database(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TUNING_DIR", str(tmp_path))
    assert tvm_schedule.find_database("host", "nothing") is None
