"""Shared fixtures: the repo's paths, the read-only shared data, and the bundled model compiled once per backend."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import backends

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", REPO.parent / "shared"))
MODEL_SPEC = f"{REPO / 'examples' / 'conv_attention.py'}:build"


@pytest.fixture(scope="session", autouse=True)
def artifact_cache(tmp_path_factory) -> Path:
    """The compiled-model cache of this test session: hermetic (no artifact from an earlier run or another checkout
    is reused) and shared by the session's tests. EDGEKIT_ARTIFACT_CACHE set by the caller wins."""
    path = Path(os.environ.setdefault("EDGEKIT_ARTIFACT_CACHE", str(tmp_path_factory.mktemp("artifact-cache"))))
    return path


@pytest.fixture(scope="session", autouse=True)
def paths_config(tmp_path_factory) -> Path:
    """edgekit's paths config file for this session (absent until a test writes it): the user's own file (`make setup`
    records the shared data there) never decides a test; data and weights come from EDGEKIT_DATA / EDGEKIT_WEIGHTS."""
    path = tmp_path_factory.mktemp("config") / "paths.json"
    os.environ["EDGEKIT_CONFIG"] = str(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Eager torch on one thread for a module's tests, as the CLI runs it with --threads 1: OpenMP threads spin-wait
    when the CPU is oversubscribed (shared CI boxes), 10-30x slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set EDGEKIT_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def emulator_sysroot() -> Path:
    """The aarch64 emulator, built on first use when missing (minutes; CI runs `make emulator` first)."""
    from edgekit.runtimes import emulator_system

    if not emulator_system.is_ready():
        emulator_system.setup()
    return emulator_system.sysroot()


@pytest.fixture(scope="session")
def zoo_model():
    from edgekit.zoo import conv_attention

    module, inputs = conv_attention()
    return module, inputs, module(*inputs).detach().numpy()


@pytest.fixture(scope="session")
def host_artifacts(tmp_path_factory, zoo_model) -> dict[str, Path]:
    """The bundled model compiled for host by every backend, through the CLI as a user would."""
    from edgekit.cli import main

    root = tmp_path_factory.mktemp("host")
    arts = {}
    for backend in backends.for_target("host"):
        out = root / backend
        assert main(["compile", "--model", MODEL_SPEC, "--backend", backend, "--output", str(out)]) == 0
        arts[backend] = out
    return arts


@pytest.fixture
def artifact_copy(tmp_path, host_artifacts):
    """A private copy of the onnxruntime artifact that a test may damage."""
    def make(backend: str = "onnxruntime") -> Path:
        dst = tmp_path / f"copy-{backend}"
        shutil.copytree(host_artifacts[backend], dst)
        return dst
    return make


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from edgekit.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def example_input(zoo_model) -> np.ndarray:
    return zoo_model[1][0].numpy()
