"""The ExecuTorch C++ runner takes each input at its own shape: any size within a dynamic program's bounds.

Host-only tests cover the files the host writes and how a refusal becomes the user's error; the emulator tests run
a .pte exported with torch.export Dim bounds through the aarch64 runner at the smallest, the largest and an odd size.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.artifact import DTYPES, Manifest, StagingDir, TensorSpec
from edgekit.errors import EdgekitError
from edgekit.runtimes import adb, emulator, executorch_runner
from edgekit.runtimes.emulator_system import RUNNER_SOURCE

LOW, HIGH = 16, 96  # the dynamic H and W of the test program


def _manifest(inputs: list[TensorSpec]) -> Manifest:
    return Manifest(model="tiny-conv", backend="executorch", target="android-arm64", arch="aarch64", inputs=inputs,
                    outputs=[TensorSpec("y", [1, 4, 32, 32], "float32")], files={"model.pte": "0" * 64},
                    entry="model.pte")


def _refusal(work: Path, **fields) -> None:
    """error.json as executorch_runner.cpp writes it."""
    report = {"input": 0, "shape": [1, 3, 97, 40], "dtype": "float32", "bound": [1, 3, 96, 96],
              "bound_dtype": "float32", "reason": "dim 2 is 97, above the program's bound 96", **fields}
    (work / executorch_runner.ERROR_FILE).write_text(json.dumps(report))


# ---------------------------------------------------------------- host side, no emulator

def test_each_input_goes_with_its_dtype_and_shape(tmp_path):
    inputs = [np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5).transpose(0, 2, 1),  # not C-contiguous
              np.array(7, dtype=np.int64), np.ones((4,), dtype=bool)]
    paths = executorch_runner.write_inputs(tmp_path, inputs)
    assert sorted(p.name for p in paths) == sorted(f"in{i}.{kind}" for i in range(3) for kind in ("bin", "shape"))
    assert (tmp_path / "in0.shape").read_text() == "float32 2,5,3\n"
    assert (tmp_path / "in1.shape").read_text() == "int64 \n"  # a scalar: no dims
    assert (tmp_path / "in2.shape").read_text() == "bool 4\n"
    got = np.frombuffer((tmp_path / "in0.bin").read_bytes(), dtype=np.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(got, inputs[0])
    assert (tmp_path / "in1.bin").read_bytes() == np.int64(7).tobytes()


def test_runner_reads_the_manifest_dtypes():
    """The C++ runner's dtype table names exactly the manifest's dtypes (a new one must be added there too)."""
    names = re.findall(r'\{"(\w+)", ScalarType::\w+, \d\}', RUNNER_SOURCE.read_text())
    assert sorted(names) == sorted(DTYPES)


def test_refusal_names_the_input_its_shape_and_the_bound(tmp_path):
    _refusal(tmp_path)
    manifest = _manifest([TensorSpec("image", [1, 3, 32, 32], "float32")])
    with pytest.raises(EdgekitError) as info:
        executorch_runner.raise_refusal(tmp_path, manifest)
    message = str(info.value)
    for part in ("'image'", "[1, 3, 97, 40]", "[1, 3, 96, 96]", "dim 2 is 97", "--dynamic"):
        assert part in message, message


def test_no_refusal_file_is_not_a_refusal(tmp_path):
    assert executorch_runner.raise_refusal(tmp_path, _manifest([])) is None


def test_unreadable_refusal_says_so(tmp_path):
    (tmp_path / executorch_runner.ERROR_FILE).write_text('{"input": 0, "shape": ')
    with pytest.raises(EdgekitError, match="unreadable"):
        executorch_runner.raise_refusal(tmp_path, _manifest([]))


def test_emulator_turns_the_runners_refusal_into_the_users_error(tmp_path, monkeypatch):
    manifest = _manifest([TensorSpec("image", [1, 3, 32, 32], "float32")])

    def refuse(root, argv, **kw):
        assert (tmp_path / "in0.shape").read_text() == "float32 1,3,97,40\n"
        _refusal(tmp_path)
        raise EdgekitError("the aarch64 emulator failed running `executorch_runner ...` (exit 2)")

    monkeypatch.setattr(emulator, "_emulate", refuse)
    with pytest.raises(EdgekitError, match=r"input 'image' \(float32 \[1, 3, 97, 40\]\) does not fit"):
        emulator._run_executorch(tmp_path, tmp_path, "/tmp/edgekit-x", manifest,
                                 [np.zeros((1, 3, 97, 40), np.float32)], {})


def test_emulator_keeps_other_runner_failures(tmp_path, monkeypatch):
    def crash(root, argv, **kw):
        raise EdgekitError("the aarch64 emulator failed running `executorch_runner ...` (exit 1): forward failed")

    monkeypatch.setattr(emulator, "_emulate", crash)
    with pytest.raises(EdgekitError, match="forward failed"):
        emulator._run_executorch(tmp_path, tmp_path, "/tmp/edgekit-x", _manifest([]),
                                 [np.zeros((1, 3, 32, 32), np.float32)], {})


def test_adb_pushes_the_shape_files_and_pulls_a_refusal(tmp_path, monkeypatch):
    runner = tmp_path / "executorch_runner"
    runner.write_bytes(b"\x7fELF")
    (tmp_path / "model.pte").write_bytes(b"pte")
    monkeypatch.setenv("EDGEKIT_ADB_RUNNER", str(runner))
    monkeypatch.setattr(adb.shutil, "which", lambda name: f"/usr/bin/{name}")
    pushed = []

    def fake_adb(base, *args):
        if args[0] == "push":
            pushed.extend(Path(p).name for p in args[1:-1])
        elif args[0] == "shell" and "model.pte" in args[1]:
            raise EdgekitError("`adb shell ...` failed (exit 2)")
        elif args[0] == "pull":
            _refusal(Path(args[2]), input=1, shape=[2, 9], bound=[2, 8], reason="dim 1 is 9, above 8")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(adb, "_adb", fake_adb)
    manifest = _manifest([TensorSpec("a", [1], "float32"), TensorSpec("tokens", [2, 8], "float32")])
    with pytest.raises(EdgekitError, match=r"input 'tokens' \(float32 \[2, 9\]\).*dim 1 is 9"):
        adb.run_adb("adb://", tmp_path, manifest, [np.zeros(1, np.float32), np.zeros((2, 9), np.float32)])
    assert {"in0.bin", "in0.shape", "in1.bin", "in1.shape", "model.pte"} <= set(pushed)


# ---------------------------------------------------------------- the aarch64 runner under the emulator

@pytest.fixture(scope="module")
def tiny_conv():
    torch = pytest.importorskip("torch")

    class TinyConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)) * 2

    torch.manual_seed(0)
    return TinyConv().eval()


def _artifact(net, out: Path, dynamic: bool) -> Path:
    """An executorch artifact for aarch64 of `net`, exported at 1x3x32x32 with H and W in LOW..HIGH if `dynamic`."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim

    example = (torch.randn(1, 3, 32, 32),)
    dims = {"x": {2: Dim("h", min=LOW, max=HIGH), 3: Dim("w", min=LOW, max=HIGH)}} if dynamic else None
    program = to_edge_transform_and_lower(torch.export.export(net, example, dynamic_shapes=dims),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    ranges = {"2": {"name": "h", "min": LOW, "max": HIGH}, "3": {"name": "w", "min": LOW, "max": HIGH}}
    with StagingDir(out) as staging:
        (staging.path / "model.pte").write_bytes(program.buffer)
        manifest = _manifest([TensorSpec("x", [1, 3, 32, 32], "float32", ranges if dynamic else None)])
        manifest.outputs[0].dynamic = ranges if dynamic else None
        staging.seal(manifest)
        return staging.commit()


@pytest.fixture(scope="module")
def artifacts(emulator_sysroot, tiny_conv, tmp_path_factory):
    pytest.importorskip("executorch")
    out = tmp_path_factory.mktemp("et-runner")
    return {kind: _artifact(tiny_conv, out / kind, kind == "dynamic") for kind in ("dynamic", "static")}


def _eager(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.emulator
@pytest.mark.parametrize("h,w", [(LOW, LOW), (HIGH, HIGH), (37, 71)])
def test_dynamic_program_runs_at_each_size(artifacts, tiny_conv, h, w):
    x = np.random.default_rng(h * w).standard_normal((1, 3, h, w), dtype=np.float32)
    (got,), _ = emulator.run_artifact(artifacts["dynamic"], None, [x])
    expected = _eager(tiny_conv, x)
    assert got.shape == expected.shape == (1, 4, h, w)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.emulator
def test_input_above_the_bound_is_refused(artifacts):
    x = np.zeros((1, 3, HIGH + 1, 40), np.float32)
    with pytest.raises(EdgekitError) as info:
        emulator.run_artifact(artifacts["dynamic"], None, [x])
    message = str(info.value)
    for part in ("input 'x'", f"[1, 3, {HIGH + 1}, 40]", f"[1, 3, {HIGH}, {HIGH}]", f"dim 2 is {HIGH + 1}"):
        assert part in message, message


@pytest.mark.emulator
@pytest.mark.parametrize("shape,why", [((3, 32, 32), "rank 3"), ((1, 3, 32, 32, 1), "rank 5")])
def test_wrong_rank_is_refused(artifacts, shape, why):
    with pytest.raises(EdgekitError, match=rf"input 'x' .*{why}, the program takes rank 4"):
        emulator.run_artifact(artifacts["dynamic"], None, [np.zeros(shape, np.float32)])


@pytest.mark.emulator
def test_wrong_dtype_is_refused(artifacts):
    with pytest.raises(EdgekitError, match="dtype float64, the program takes float32"):
        emulator.run_artifact(artifacts["dynamic"], None, [np.zeros((1, 3, 32, 32), np.float64)])


@pytest.mark.emulator
def test_static_program_runs_at_its_shape_only(artifacts, tiny_conv):
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), dtype=np.float32)
    (got,), stats = emulator.run_artifact(artifacts["static"], None, [x], benchmark={"warmup": 0, "iters": 2})
    assert np.abs(got - _eager(tiny_conv, x)).max() < 1e-4
    assert stats["iters"] == 2
    with pytest.raises(EdgekitError, match=r"input 'x' \(float32 \[1, 3, 16, 16\]\) does not fit.*\[1, 3, 32, 32\]"):
        emulator.run_artifact(artifacts["static"], None, [np.zeros((1, 3, 16, 16), np.float32)])
