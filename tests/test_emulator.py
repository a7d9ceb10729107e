"""aarch64 artifacts proven under QEMU: numerics vs eager, the CLI, timings, and the TVM RPC loopback.

The first test to need the emulator builds it when missing (minutes; CI runs `make emulator` first).
"""
from __future__ import annotations

import json
import os
import socket
from importlib.metadata import version

import numpy as np
import pytest

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import EdgekitError
from edgekit.runtimes import emulator, emulator_system, rpc

pytestmark = pytest.mark.emulator

# jetson-orin's TVM artifact carries sm_87 device code: it needs the GPU, not an emulated CPU
CASES = [("android-arm64", "executorch"), ("android-arm64", "tvm"), ("android-arm64", "onnxruntime"),
         ("jetson-orin", "executorch"), ("jetson-orin", "onnxruntime")]


@pytest.fixture(scope="module")
def sysroot(emulator_sysroot):
    return emulator_sysroot


@pytest.fixture(scope="module")
def spine_model():
    torch = pytest.importorskip("torch")
    from edgekit.zoo import conv_attention

    module, inputs = conv_attention()
    with torch.no_grad():
        expected = module(*inputs).numpy()
    return module, inputs, expected


@pytest.fixture(scope="module")
def artifacts(sysroot, spine_model, tmp_path_factory):
    """Compiled on first use; compile's own verify step already runs each one in the emulator."""
    module, inputs, _ = spine_model
    built = {}

    def get(target: str, backend: str):
        if (target, backend) not in built:
            out = tmp_path_factory.mktemp("art") / f"{target}-{backend}"
            built[target, backend] = edgekit.compile_model(module, inputs, target=target, backend=backend, output=out)
        return built[target, backend]

    return get


@pytest.mark.parametrize("target,backend", CASES)
def test_aarch64_artifact_matches_eager(artifacts, spine_model, target, backend):
    _, inputs, expected = spine_model
    model = edgekit.load(artifacts(target, backend))
    assert model.manifest.arch == "aarch64"
    assert model.manifest.verify["where"].startswith("emulator")
    (got,) = model.run([inputs[0].numpy()])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def test_tvm_payload_is_an_aarch64_elf(artifacts):
    so = artifacts("android-arm64", "tvm") / "model.so"
    header = so.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 0xB7  # EM_AARCH64


@pytest.mark.parametrize("backend", ["executorch", "onnxruntime"])  # C++ runner; Python runtimes
def test_benchmark_is_timed_inside_the_emulator(artifacts, backend):
    stats = edgekit.load(artifacts("android-arm64", backend)).benchmark(warmup=1, iters=4)
    assert stats["iters"] == 4
    assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"]


def test_cli_run_on_aarch64_artifact(artifacts, spine_model, tmp_path):
    _, inputs, expected = spine_model
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    code = cli(["run", str(artifacts("android-arm64", "onnxruntime")), "--input", str(tmp_path / "x.npy"),
                "--output", str(tmp_path / "out.npz")])
    assert code == 0
    with np.load(tmp_path / "out.npz") as out:
        assert np.abs(out["output0"] - expected).max() < 1e-4


def test_tvm_rpc_loopback(artifacts, spine_model):
    _, inputs, expected = spine_model
    art = artifacts("android-arm64", "tvm")
    model = edgekit.load(art)
    with emulator.rpc_server(_free_port()) as url:
        (got,), stats = rpc.run_remote(url, art, model.manifest, [inputs[0].numpy()],
                                       benchmark={"warmup": 1, "iters": 3})
    assert np.abs(got - expected).max() < 1e-4
    assert stats["iters"] == 3 and stats["min_ms"] > 0


def test_setup_again_reuses_the_sysroot(sysroot):
    marker = (sysroot / "etc/debian_version").stat()
    emulator_system.setup()
    assert (sysroot / "etc/debian_version").stat().st_ino == marker.st_ino
    assert emulator_system.status()["up_to_date"]


def test_cli_status_reports_the_pinned_runtimes(sysroot, capsys):
    assert cli(["device", "emulator", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["up_to_date"] and status["binfmt_registered"]
    assert status["built_for"]["wheels"]["apache-tvm"] == version("apache-tvm")


def test_missing_emulator_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_EMULATOR_DIR", str(tmp_path))
    with pytest.raises(EdgekitError, match="edgekit device emulator setup"):
        emulator_system.require_sysroot()


def test_stale_emulator_asks_for_a_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_EMULATOR_DIR", str(tmp_path))
    (tmp_path / "sysroot").mkdir()
    (tmp_path / "stamp.json").write_text('{"base": {}, "payload": {"wheels": {"numpy": "1.0"}}}')
    with pytest.raises(EdgekitError, match="other runtime versions"):
        emulator_system.require_sysroot()


def test_symlinked_sysroot_is_refused(tmp_path, monkeypatch, sysroot):
    """Even one pointing at a good sysroot: artifacts run in it as root, so it must be the user's own directory."""
    monkeypatch.setenv("EDGEKIT_EMULATOR_DIR", str(tmp_path))
    (tmp_path / "sysroot").symlink_to(sysroot)
    (tmp_path / "stamp.json").write_text(json.dumps(emulator_system.wanted()))
    with pytest.raises(EdgekitError, match=r"(?s)sysroot .*/sysroot: it is a symlink.*edgekit device emulator setup"):
        emulator_system.require_sysroot()
    with pytest.raises(EdgekitError, match="is a symlink"):  # and the running side asks the same check
        emulator.call_functions([])


def test_sysroot_of_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_EMULATOR_DIR", str(tmp_path))
    (tmp_path / "sysroot").mkdir()
    (tmp_path / "stamp.json").write_text(json.dumps(emulator_system.wanted()))
    assert emulator_system.require_sysroot() == tmp_path / "sysroot"  # the user's own, up to date: accepted
    me = os.geteuid()
    monkeypatch.setattr(emulator_system.os, "geteuid", lambda: me + 1)
    with pytest.raises(EdgekitError, match=rf"(?s)owned by uid {me}, not by the current user.*EDGEKIT_EMULATOR_DIR"):
        emulator_system.require_sysroot()


def test_setup_creates_a_private_emulator_dir(tmp_path, monkeypatch):
    where = tmp_path / "cache" / "emulator"
    monkeypatch.setenv("EDGEKIT_EMULATOR_DIR", str(where))
    monkeypatch.setattr(emulator_system, "_check_host", lambda: None)
    monkeypatch.setattr(emulator_system, "_setup_locked", lambda force: 0.0)  # the build itself: not here
    old_umask = os.umask(0o022)
    try:
        emulator_system.setup()
    finally:
        os.umask(old_umask)
    assert where.is_dir() and (where.stat().st_mode & 0o777) == 0o700


def test_binfmt_not_permitted_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(emulator_system, "BINFMT", tmp_path / "no-binfmt_misc")  # mount point missing: mount fails
    with pytest.raises(EdgekitError, match="binfmt_misc is not permitted"):
        emulator_system.ensure_binfmt()


def test_rpc_url_is_checked():
    with pytest.raises(EdgekitError, match="rpc://HOST:PORT"):
        rpc.parse_url("adb://emulator-5554")


def test_adb_without_an_android_runner_says_how_to_get_one(artifacts, monkeypatch):
    monkeypatch.delenv("EDGEKIT_ADB_RUNNER", raising=False)
    with pytest.raises(EdgekitError, match="EDGEKIT_ADB_RUNNER"):
        rpc.bench_remote(artifacts("android-arm64", "executorch"), "adb://emulator-5554")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
