"""The one compiled-model cache (edgekit.compile.cache) that every app compiles through (edgekit.apps.runners): one
compile per key, a new entry when the weights change, one compile for concurrent callers; and the stale-cache bug it
fixes: BlazePose's .tflite networks used to be cached as "pose_detection-onnxruntime" with no fingerprint, so a
changed .tflite silently ran the old artifact."""
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.compile import cache, pipeline

SHARED = Path(__file__).resolve().parents[2] / "../shared"
MEDIAPIPE = SHARED / "weights" / "mediapipe"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def tiny():
    torch.manual_seed(0)
    return Tiny().eval(), (torch.randn(2, 4),)


@pytest.fixture
def compiles(monkeypatch):
    """The compile_model calls the cache makes (each still compiles)."""
    calls = []
    real = pipeline.compile_model

    def counted(*args, **kwargs):
        calls.append(kwargs["output"])
        time.sleep(0.3)  # widen the window in which a second caller could start its own compile
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compile_model", counted)
    return calls


def entries(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir()}


def test_same_module_compiles_once_changed_weights_compile_again(tmp_path, compiles):
    module, inputs = tiny()
    start = time.perf_counter()
    first = cache.compiled(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = cache.compiled(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path)
    warm = time.perf_counter() - start
    assert again == first and compiles == [first] and warm < cold

    with torch.no_grad():
        module.fc.bias.add_(0.5)  # the same code and shapes, other weights
    changed = cache.compiled(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path)
    assert changed != first and compiles == [first, changed]
    assert entries(tmp_path) == {first, changed}


def test_concurrent_threads_compile_once(tmp_path, compiles):
    module, inputs = tiny()
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        cache.compiled(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and len(compiles) == 1


WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch

    from edgekit.compile import cache, pipeline

    real = pipeline.compile_model

    def counted(*args, **kwargs):
        with open(sys.argv[2], "a") as log:
            log.write("compile\\n")
        return real(*args, **kwargs)

    pipeline.compile_model = counted
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    print(cache.compiled(module, (torch.randn(2, 4),), name="tiny", backend="onnxruntime", cache_dir=sys.argv[1]))
''')


def test_concurrent_processes_compile_once(tmp_path):
    script, log, root = tmp_path / "worker.py", tmp_path / "compiles.log", tmp_path / "cache"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), str(root), str(log)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in results]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1 and log.read_text().splitlines() == ["compile"]
    assert entries(root) == {Path(paths.pop())}


def perturb_largest_float_constant(path: Path, factor: float = 1.5) -> None:
    """Scale the .tflite's largest float constant in place (its bytes in the flatbuffer): the file still parses,
    the network computes something else."""
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(path.read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    tensor = max((t for t in tensors if t.Type() in dtypes), key=lambda t: model.Buffers(t.Buffer()).DataLength())
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()  # a view into `data`
    values = raw.view(dtypes[tensor.Type()])
    values *= factor
    path.write_bytes(bytes(data))


@pytest.mark.skipif(not (MEDIAPIPE / "pose_detection.tflite").is_file(), reason=f"no BlazePose weights in {MEDIAPIPE}")
def test_changed_pose_tflite_misses_the_cache_and_unchanged_hits(tmp_path):
    from edgekit.apps.pose.model import DETECTOR_FILE, LANDMARK_FILE, BlazePose, runners

    weights, artifacts = tmp_path / "mediapipe", tmp_path / "artifacts"
    weights.mkdir()
    for name in (DETECTOR_FILE, LANDMARK_FILE):
        shutil.copyfile(MEDIAPIPE / name, weights / name)  # copyfile: writable, unlike the shared read-only file
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)

    detector, _ = runners(BlazePose.from_pretrained(weights), "onnxruntime", artifacts)
    built = entries(artifacts)
    assert len(built) == 2
    stamps = {p: (p / "manifest.json").stat().st_mtime_ns for p in built}
    before = detector(x)

    # unchanged files: both networks hit the cache (nothing recompiled, the same outputs)
    detector, _ = runners(BlazePose.from_pretrained(weights), "onnxruntime", artifacts)
    assert entries(artifacts) == built
    assert {p: (p / "manifest.json").stat().st_mtime_ns for p in built} == stamps
    for got, want in zip(detector(x), before):
        np.testing.assert_array_equal(got, want)

    # the detector's .tflite changed: a new detector artifact (the landmark network still hits), other outputs
    perturb_largest_float_constant(weights / DETECTOR_FILE)
    detector, _ = runners(BlazePose.from_pretrained(weights), "onnxruntime", artifacts)
    after = entries(artifacts)
    assert len(after) == 3 and built < after, "a changed .tflite reused the stale artifact"
    assert {p: (p / "manifest.json").stat().st_mtime_ns for p in built} == stamps
    assert any(not np.allclose(got, want, atol=1e-3) for got, want in zip(detector(x), before))


def test_key_covers_options_by_content():
    """Calibration tensors, task metrics and compile options that are not plain JSON change the key by content."""
    from edgekit.compile.cache import key
    from edgekit.zoo import conv_attention

    module, inputs = conv_attention()
    base = dict(backend="onnxruntime", target="host")
    calib = [(torch.ones(1, 3, 32, 32),)]

    def metric(run, samples):
        return 0.0

    k0 = key(module, inputs, **base, options={"quantize": "int8", "calibration": calib, "task_metric": metric})
    same = key(module, inputs, **base, options={"quantize": "int8", "calibration": [(torch.ones(1, 3, 32, 32),)],
                                                "task_metric": metric})
    other_data = key(module, inputs, **base, options={"quantize": "int8", "calibration": [(torch.zeros(1, 3, 32, 32),)],
                                                      "task_metric": metric})
    other_metric = key(module, inputs, **base, options={"quantize": "int8", "calibration": calib, "task_metric": len})
    assert k0 == same
    assert len({k0, other_data, other_metric}) == 3
    assert key(module, inputs, **base, options={"atol": 1e-3}) != key(module, inputs, **base, options={"atol": 1e-4})
    assert key(module, inputs, backend="tvm", target="host") != key(module, inputs, **base)


def test_cache_hit_hashes_each_file_once(tmp_path, monkeypatch):
    """A cache hit checks the entry's checksums under its lock and loads those verified bytes: one read_verified per
    load (it used to verify in the lookup and again in edgekit.load)."""
    from edgekit import artifact

    module, inputs = tiny()
    cache.load(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path)  # the miss compiles
    reads = []
    real = artifact.read_verified
    monkeypatch.setattr(artifact, "read_verified", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    model = cache.load(module, inputs, name="tiny", backend="onnxruntime", cache_dir=tmp_path)
    assert len(reads) == 1, reads
    assert np.allclose(model.run([inputs[0].numpy()])[0], module(inputs[0]).detach().numpy(), atol=1e-5)
