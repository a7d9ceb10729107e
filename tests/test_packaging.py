"""Packaging: the torch-free runtime (core + one runtime extra), extras that match the backend registry, exact pins in
constraints.txt within pyproject's ranges, `edgekit --version` / `python -m edgekit`, licence files, no setuptools
warnings at install, and (emulator, slow) the built wheel installed with pip on this host and inside the arm64
sysroot, running a compiled artifact there."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from edgekit import backends

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HEAVY = ("torch", "tvm", "executorch", "cv2", "onnx", "scipy", "PIL", "av", "matplotlib")

# Refuses to import any installed package that `edgekit[onnxruntime]` does not bring (the list comes in
# EDGEKIT_TEST_BLOCKED), as in a device's venv; what a probe imported anyway is reported.
BLOCKER = """
import importlib.abc, json, os, sys
BLOCKED = set(json.loads(os.environ["EDGEKIT_TEST_BLOCKED"]))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in edgekit[onnxruntime])", name=name)
sys.meta_path.insert(0, Blocker())
"""

# Runs a command of the edgekit CLI in-process (so sys.modules can be inspected afterwards), then prints one JSON
# line: its exit code and which heavy modules it imported.
CLI_PROBE = BLOCKER + """
from edgekit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)

API_PROBE = BLOCKER + """
import numpy as np
import edgekit
model = edgekit.load(sys.argv[1])
y, = model.run([np.load(sys.argv[2])])
model.benchmark(warmup=1, iters=2)
print(json.dumps({"y": y.tolist(), "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _extras() -> dict[str, list[str]]:
    return PYPROJECT["project"]["optional-dependencies"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    return pins


def _closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions these requirements bring, transitively (extras as markers ask)."""
    from importlib.metadata import PackageNotFoundError, requires

    found, todo = set(), [(Requirement(r), extras) for r in requirements]
    while todo:
        req, asked = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in asked or ("",)):
            continue
        name = _name(req.name)
        if name in found:
            continue
        found.add(name)
        try:
            todo += [(Requirement(r), tuple(req.extras)) for r in requires(name) or ()]
        except PackageNotFoundError:
            pass  # not installed here: nothing of it can be imported either
    return found


def _not_in_runtime_install() -> list[str]:
    """Top-level import names of installed distributions outside `edgekit[onnxruntime]`."""
    from importlib.metadata import packages_distributions

    project = PYPROJECT["project"]
    keep = _closure(project["dependencies"] + _extras()["onnxruntime"]) | {"edgekit", "setuptools", "pip"}
    return sorted(top for top, dists in packages_distributions().items()
                  if not {_name(d) for d in dists} & keep and top.isidentifier())


def _python(code: str, *args, cwd: Path) -> dict:
    # cwd outside the checkout: `python -c` puts the working directory first on sys.path
    env = {**os.environ, "EDGEKIT_TEST_BLOCKED": json.dumps(_not_in_runtime_install())}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory):
    """A MatMul + Relu ONNX model compiled here with onnxruntime, its input and the numpy reference."""
    import importlib.util

    import edgekit

    spec = importlib.util.spec_from_file_location("wheel_check", REPO / "tools" / "wheel_check.py")
    wheel_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheel_check)  # the same MatMul + Relu model the wheel check runs on the device side
    root = tmp_path_factory.mktemp("packaging")
    w = wheel_check.WEIGHT
    wheel_check.onnx_model(root / "tiny.onnx")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.save(root / "x.npy", x)
    art = edgekit.compile_model(str(root / "tiny.onnx"), target="host", backend="onnxruntime", output=root / "art")
    return {"root": root, "artifact": Path(art), "x": root / "x.npy", "ref": np.maximum(x @ w, 0)}


def test_load_and_run_never_import_torch(ort_artifact):
    result = _python(API_PROBE, ort_artifact["artifact"], ort_artifact["x"], cwd=ort_artifact["root"])
    np.testing.assert_allclose(np.array(result["y"], np.float32), ort_artifact["ref"], rtol=1e-5, atol=1e-6)
    assert result["imported"] == [], f"edgekit.load/run imported {result['imported']}"


@pytest.mark.parametrize("command", ["run", "info", "bench"])
def test_cli_runtime_commands_never_import_torch(ort_artifact, command):
    root, art = ort_artifact["root"], ort_artifact["artifact"]
    argv = {"run": ["run", art, "-i", ort_artifact["x"], "-o", root / "y.npz"], "info": ["info", art],
            "bench": ["bench", art, "--iters", "2", "--warmup", "1"]}[command]
    result = _python(CLI_PROBE, *argv, cwd=root)
    assert result == {"code": 0, "imported": []}
    if command == "run":
        with np.load(root / "y.npz") as f:
            np.testing.assert_allclose(f["output0"], ort_artifact["ref"], rtol=1e-5, atol=1e-6)


def test_python_dash_m_edgekit_runs_the_cli(ort_artifact, tmp_path):
    out = tmp_path / "y.npz"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "run", ort_artifact["artifact"], "-i", ort_artifact["x"],
                           "-o", out], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        np.testing.assert_allclose(f["output0"], ort_artifact["ref"], rtol=1e-5, atol=1e-6)
    bare = subprocess.run([sys.executable, "-m", "edgekit"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bare.returncode == 2 and "usage: edgekit" in bare.stdout and "Traceback" not in bare.stderr


def test_version_flag_prints_the_installed_version(tmp_path):
    from importlib.metadata import version

    import edgekit

    proc = subprocess.run([sys.executable, "-m", "edgekit", "--version"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgekit {edgekit.__version__}"
    assert version("edgekit") == edgekit.__version__


def test_app_subcommands_are_built_only_when_named(tmp_path):
    # the parser of every command, apps included, without importing any app's heavy modules
    result = _python("import json, sys\nfrom edgekit.cli import build_parser\nhelp = build_parser().format_help()\n"
                     f"print(json.dumps({{'imported': [m for m in {HEAVY!r} if m in sys.modules]}}))", cwd=tmp_path)
    assert result["imported"] == []
    # an app's own parser, with the options of every command, once its name is given
    proc = subprocess.run([sys.executable, "-m", "edgekit", "asr", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "transcribe" in proc.stdout and "--threads" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "edgekit", "asr", "no-such-command"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def test_each_backend_extra_brings_its_device_runtime():
    extras = _extras()
    for backend in backends.REGISTRY.values():
        assert backend.name in extras, f"no edgekit[{backend.name}] extra"
        names = {_name(r) for r in extras[backend.name]} | {_name(r) for r in PYPROJECT["project"]["dependencies"]}
        missing = {_name(w) for w in backend.device_wheels} - names
        assert not missing, f"edgekit[{backend.name}] lacks {missing} (Backend.device_wheels)"


def test_core_is_small():
    assert {_name(r) for r in PYPROJECT["project"]["dependencies"]} == {"numpy", "platformdirs", "psutil"}


def test_constraints_pin_every_dependency_within_its_range():
    pins = _pins()
    requirements = list(PYPROJECT["project"]["dependencies"])
    for extra in _extras().values():
        requirements += [r for r in extra if _name(r) != "edgekit"]
    for text in requirements:
        req = Requirement(text)
        name = _name(text)
        assert name in pins, f"{name}: no exact pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
    unused = set(pins) - {_name(r) for r in requirements}
    assert not unused, f"constraints.txt pins what no extra asks for: {unused}"


def test_make_and_ci_install_the_pinned_set():
    makefile = (REPO / "Makefile").read_text()
    stamp = re.search(r"^\$\(VENV\)/\.installed:(.*)$", makefile, re.M)
    assert stamp and {"pyproject.toml", "constraints.txt"} <= set(stamp.group(1).split())
    assert "pip install -q -c constraints.txt -e '.[all,test]'" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_licence_and_third_party_notice():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    notice = (REPO / "THIRD_PARTY.md").read_text()
    shipped = sorted(p.relative_to(REPO) for p in REPO.glob("apps/*/weights/*") if p.is_file())
    assert shipped, "no shipped weights found"
    for path in shipped:
        assert path.name in notice and path.parent.parent.name in notice, f"THIRD_PARTY.md does not name {path}"
    assert (REPO / "edgekit" / "py.typed").is_file()


@pytest.mark.slow
def test_editable_install_prints_no_warning(tmp_path):
    """`pip install --no-deps -e .` into a scratch venv (pip's --python: no pip inside it needed)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
                           "-e", REPO], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    # pip's own notes about this machine's index configuration are not edgekit's packaging
    ours = [line for line in output.splitlines() if "warn" in line.lower() and "Location 'file://" not in line]
    assert not ours, "\n".join(ours)


@pytest.mark.slow
@pytest.mark.emulator
def test_wheel_installs_and_runs_on_host_and_in_the_arm64_sysroot(emulator_sysroot, tmp_path):
    """tools/wheel_check.py: the built wheel, `edgekit[onnxruntime]` installed with pip (inside the sysroot: offline,
    from aarch64 wheels fetched beforehand) runs an artifact compiled here through edgekit.load and
    `python -m edgekit run`, without torch."""
    report = tmp_path / "wheel-check.json"
    proc = subprocess.run([sys.executable, REPO / "tools" / "wheel_check.py", "--extras", "onnxruntime",
                           "--where", "host,emulator", "--json", report], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["where"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"host", "emulator"}
    for row in rows.values():
        assert row["ok"] and not row["torch_imported"] and row["api_max_err"] < 1e-4 and row["cli_max_err"] < 1e-4
        assert row["installed_mb"] > 0
    assert rows["emulator"]["runtime_from"].startswith("/tmp/edgekit-wheelcheck-")  # the venv's, not the sysroot's
    assert rows["emulator"]["installed_mb"] <= 150, rows["emulator"]
