"""The backend registry is the one place that knows the backends: a new backend is one file plus one registration,
and the CLI, the compile pipeline, edgekit.load and `edgekit targets` pick it up with no other edit."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MODEL_SPEC, example_input
from edgekit import backends
from edgekit.errors import EdgekitError
from edgekit.targets import get_target

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fake_backend  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(backends, "REGISTRY", dict(backends.REGISTRY))  # the registration ends with the test
    return backends.register(backends.Backend(
        "fake", lowerer="fake_backend", runtime="fake_backend", entry="model.pt2", toolchain=("torch",),
        targets=("host",), description="test backend: torch.export archive run by torch"))


def test_a_new_backend_compiles_verifies_and_loads_through_the_cli(fake, cli, tmp_path, zoo_model):
    before = dict(fake_backend.CALLS)
    out = tmp_path / "fake-art"
    code, stdout, err = cli("compile", "--model", MODEL_SPEC, "--backend", "fake", "--output", out)
    assert code == 0, err
    assert "verify: pass" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "fake" and manifest["entry"] == "model.pt2" and "model.pt2" in manifest["files"]
    assert manifest["backend_info"] == {"format": "torch.export archive", "target_arch": get_target("host").arch}
    assert set(manifest["toolchain"]) == {"torch"}

    import edgekit

    got = edgekit.load(out).run([example_input(zoo_model)])[0]
    np.testing.assert_allclose(got, zoo_model[2], atol=1e-5)
    assert fake_backend.CALLS["lower"] == before["lower"] + 1
    assert fake_backend.CALLS["load"] >= before["load"] + 2  # verify at compile time, then edgekit.load
    code, stdout, _ = cli("targets", "--json")
    host = next(row for row in json.loads(stdout) if row["name"] == "host")
    assert "fake" in host["backends"].split(",")


def test_a_backend_refuses_targets_it_does_not_list(fake, cli, tmp_path):
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "fake", "--target", "android-arm64",
                       "--output", tmp_path / "x")
    assert code == 2
    assert "'fake' is not supported for target 'android-arm64'" in err
    assert not (tmp_path / "x").exists()


def test_unknown_backend_names_the_registered_ones():
    with pytest.raises(EdgekitError, match=r"unknown backend 'tflite'. Valid backends: executorch, tvm, onnxruntime"):
        backends.get("tflite")


def test_every_registered_backend_has_its_modules_and_targets():
    import importlib.util

    for b in backends.REGISTRY.values():
        assert importlib.util.find_spec(b.lowerer) and importlib.util.find_spec(b.runtime), b.name
        assert b.name in backends.for_target("host") or b.targets is not None
        for name in b.targets or ():
            get_target(name)  # every listed target exists
    assert backends.for_target("cuda-sm90") == ("tvm", "onnxruntime")
    assert backends.for_target("jetson-orin") == ("executorch", "tvm", "onnxruntime")


def test_native_means_this_cpu_without_gpu_code():
    assert backends.is_native(get_target("host"))
    assert not backends.is_native(get_target("android-arm64"))
    assert not backends.is_native(get_target("cuda-sm90"))
