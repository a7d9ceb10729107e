"""`--backend auto`: every candidate is compiled, verified and timed; the fastest verified one ships, and the manifest
records each candidate's p50 (or why it dropped out). The candidates here are test backends (torch.export archives
run by torch, tests/fixtures/fake_backend.py) whose runtimes are made slow or wrong on purpose, so the choice can
only come from the measurement."""
import json
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import MODEL_SPEC
from edgekit import backends
from edgekit.errors import EdgekitError

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fake_backend  # noqa: E402

DELAY_S: dict[str, float] = {}   # per test backend: sleep added to every run
WRONG: set[str] = set()          # test backends whose outputs are off by one (verify must fail)


def _runtime(name: str) -> types.ModuleType:
    """A test backend's runtime whose cost is its sleep alone: the model runs once per input (torch, for the
    verification), later runs on the same input return the remembered outputs, so load on the machine barely moves
    the timings."""
    def run(handle, inputs):
        time.sleep(DELAY_S.get(name, 0.0))
        key = (id(handle), *(x.tobytes() for x in inputs))
        if key not in seen:
            seen[key] = fake_backend.run(handle, inputs)
        return [y + 1.0 for y in seen[key]] if name in WRONG else seen[key]

    seen: dict = {}

    module = types.ModuleType(f"auto_test_runtime_{name}")
    module.load, module.run = fake_backend.load, run
    return module


@pytest.fixture
def candidates(monkeypatch):
    """The registry holds only three test backends for host: `a`, `b` and `wrong`."""
    monkeypatch.setattr(backends, "REGISTRY", {})
    DELAY_S.clear()
    WRONG.clear()
    for name in ("a", "b", "wrong"):
        runtime = _runtime(name)
        monkeypatch.setitem(sys.modules, runtime.__name__, runtime)
        backends.register(backends.Backend(name, lowerer="fake_backend", runtime=runtime.__name__,
                                           entry="model.pt2", toolchain=("torch",), targets=("host",)))
    WRONG.add("wrong")
    return backends.REGISTRY


def _selection(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["selection"]


def test_the_fastest_verified_candidate_ships_and_every_candidate_is_recorded(candidates, cli, tmp_path):
    DELAY_S["a"] = 0.02  # `a` is made slow: `b` must win; `wrong` is fastest but fails verification
    out = tmp_path / "auto"
    code, stdout, err = cli("compile", "--model", MODEL_SPEC, "--backend", "auto", "--output", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    sel = manifest["selection"]
    assert manifest["backend"] == "b" and sel["chosen"] == "b" and sel["measured_on"] == "host"
    assert set(sel["candidates"]) == {"a", "b", "wrong"}
    a, b, wrong = (sel["candidates"][k] for k in ("a", "b", "wrong"))
    assert a["status"] == b["status"] == "measured" and a["verify"] == b["verify"] == "pass"
    assert a["p50_ms"] >= 20 and b["p50_ms"] < a["p50_ms"]
    assert wrong["status"] == "failed" and "verify" in wrong["reason"]
    assert "shipped b" in stdout and "verify: pass" in stdout
    code, _, err = cli("info", out)  # the shipped artifact (selection included) passes every load-time check
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto"]  # no candidate or staging folder left behind


def test_the_choice_follows_the_measurement(candidates, tmp_path):
    from edgekit.compile.auto import compile_auto

    for slow, fast in (("a", "b"), ("b", "a")):
        DELAY_S.clear()
        DELAY_S[slow] = 0.02
        out = compile_auto(MODEL_SPEC, output=tmp_path / f"slow-{slow}", warmup=1, iters=5)
        sel = _selection(out)
        assert sel["chosen"] == fast, sel
        assert sel["candidates"][slow]["p50_ms"] > sel["candidates"][fast]["p50_ms"]


def test_nothing_is_written_when_no_candidate_verifies(candidates, cli, tmp_path):
    WRONG.update({"a", "b"})
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "auto", "--output", tmp_path / "none")
    assert code == 2
    assert "no candidate compiled, verified and ran" in err and "a: verify" in err and "wrong: verify" in err
    assert list(tmp_path.iterdir()) == []


def test_a_target_that_does_not_run_here_needs_a_device(cli, tmp_path):
    before = dict(fake_backend.CALLS)
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "auto", "--target", "android-arm64",
                       "--output", tmp_path / "phone")
    assert code == 2 and "--device rpc://HOST:PORT" in err and "android-arm64" in err
    assert "Traceback" not in err and not (tmp_path / "phone").exists()
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "auto", "--target", "android-arm64",
                       "--device", "ssh://phone", "--output", tmp_path / "phone")
    assert code == 2 and "expected rpc://HOST:PORT" in err
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "tvm", "--device", "rpc://127.0.0.1:9090",
                       "--output", tmp_path / "one")
    assert code == 2 and "edgekit bench ARTIFACT --device" in err
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "auto", "--no-verify",
                       "--output", tmp_path / "nv")
    assert code == 2 and "--no-verify" in err
    assert fake_backend.CALLS == before and list(tmp_path.iterdir()) == []


def test_with_a_device_candidates_are_timed_there(candidates, monkeypatch, tmp_path):
    """rpc:// runs only some backends' artifacts: the others are recorded as not measured, and the device's timings
    decide (the device is simulated: the RPC runner reports its own timings)."""
    from edgekit.compile.auto import compile_auto
    from edgekit.runtimes import rpc

    def run_remote(url, artifact_dir, manifest, inputs, *, benchmark=None):
        if manifest.backend != "a":
            raise EdgekitError(f"rpc:// devices run a's artifacts; this one is {manifest.backend}.")
        return [], {"p50_ms": 7.0, "p90_ms": 8.0, "min_ms": 6.0, "mean_ms": 7.0, "iters": benchmark["iters"]}

    monkeypatch.setattr(rpc, "run_remote", run_remote)
    DELAY_S["a"] = 0.02  # slow here, but only the device's timing counts
    out = compile_auto(MODEL_SPEC, output=tmp_path / "dev", device="rpc://127.0.0.1:9090", iters=4)
    sel = _selection(out)
    assert sel["chosen"] == "a" and sel["measured_on"] == "rpc://127.0.0.1:9090"
    assert sel["candidates"]["a"]["p50_ms"] == 7.0
    assert sel["candidates"]["b"]["status"] == "not-measured" and "rpc://" in sel["candidates"]["b"]["reason"]
