"""Hostile inputs never crash or leak a traceback; one model serves many threads; racing compiles never leave a
half-written artifact. `make fuzz` runs the fuzz tests with 10,000 cases each (EDGEKIT_FUZZ_EXAMPLES)."""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgekit
from conftest import MODEL_SPEC, REPO
from edgekit.artifact import Manifest, load_verified, read_manifest
from edgekit.errors import EdgekitError
from edgekit.runtimes.model import check_inputs

FUZZ = settings(max_examples=int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20)


def _valid_manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_fields(host_artifacts, data):
    """Any value in any manifest field: a Manifest or an EdgekitError, never another exception."""
    manifest = _valid_manifest(host_artifacts["onnxruntime"])
    key = data.draw(st.sampled_from(sorted(manifest) + ["extra_field"]))
    manifest[key] = data.draw(json_values)
    try:
        Manifest.from_dict(manifest, "fuzz/manifest.json")
    except EdgekitError as exc:
        assert "fuzz/manifest.json" in str(exc)


@FUZZ
@given(blob=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_manifest_bytes(tmp_path_factory, blob):
    art = tmp_path_factory.mktemp("fuzz")
    (art / "manifest.json").write_bytes(blob)
    with pytest.raises(EdgekitError):
        load_verified(art)


@FUZZ
@given(shape=st.lists(st.integers(0, 4), max_size=5),
       dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "float16"]),
       count=st.integers(0, 3))
def test_fuzz_input_validation(shape, dtype, count):
    spec = read_manifest_spec()
    inputs = [np.zeros(shape, dtype=dtype) for _ in range(count)]
    try:
        checked = check_inputs(spec, inputs)
        assert [list(x.shape) for x in checked] == [s.shape for s in spec]
    except EdgekitError as exc:
        assert "expect" in str(exc)


def read_manifest_spec():
    from edgekit.artifact import TensorSpec

    return [TensorSpec("input0", [1, 3, 2, 2], "float32")]


def test_one_model_many_threads_matches_sequential(host_artifacts):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    for backend in ("onnxruntime", "tvm", "executorch"):
        model = edgekit.load(host_artifacts[backend])
        sequential = [model.run([x])[0] for x in xs]
        results = [None] * len(xs)

        def work(i):
            results[i] = model.run([xs[i]])[0]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seq, par in zip(sequential, results):
            np.testing.assert_array_equal(seq, par)


def test_racing_compiles_never_leave_a_half_written_artifact(tmp_path):
    out = tmp_path / "same"
    cmd = [sys.executable, "-m", "edgekit.cli", "compile", "--model", MODEL_SPEC, "--backend", "onnxruntime",
           "--output", str(out)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "output directory" in loser and "Traceback" not in loser
    load_verified(out)  # complete, every checksum right
    assert [p.name for p in tmp_path.iterdir()] == ["same"], "staging directories left behind"


def test_interrupted_compile_leaves_nothing(tmp_path, monkeypatch):
    from edgekit.compile import pipeline

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "reference_outputs", boom)
    from edgekit.zoo import conv_attention

    module, inputs = conv_attention()
    with pytest.raises(KeyboardInterrupt):
        edgekit.compile_model(module, inputs, backend="onnxruntime", output=tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_weights_are_loaded_without_pickle_code_execution(tmp_path):
    """App weights go through torch.load(weights_only=True): a pickle that runs code is refused."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, path)
    from edgekit.apps.superres.model import from_pretrained

    with pytest.raises(EdgekitError):
        from_pretrained(path, scale=4)
    assert not (tmp_path / "pwned").exists()
