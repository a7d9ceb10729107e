"""Spine acceptance 3: device artifacts built on this x86_64 machine are what the device needs."""
import json
import struct

import pytest

from conftest import MODEL_SPEC
from edgekit.runtimes.model import has_cuda

EM_AARCH64, EM_CUDA = 183, 190


def elf_header(data: bytes) -> tuple[int, int]:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack_from("<H", data, 18)[0], struct.unpack_from("<I", data, 48)[0]


def cubin_sm(e_flags: int, abi_version: int) -> int:
    # CUDA ELF ABI v8 (CUDA 12.8+) keeps the SM number in bits 8-15; older ABIs in bits 0-7
    return (e_flags >> 8) & 0xFF if abi_version >= 8 else e_flags & 0xFF


@pytest.fixture(scope="module")
def jetson_tvm(tmp_path_factory):
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("jetson") / "tvm"
    assert main(["compile", "--model", MODEL_SPEC, "--target", "jetson-orin", "--backend", "tvm",
                 "--output", str(out)]) == 0
    return out


def test_jetson_tvm_is_an_aarch64_library_with_sm87_device_code(jetson_tvm):
    manifest = json.loads((jetson_tvm / "manifest.json").read_text())
    assert manifest["arch"] == "aarch64"
    machine, _ = elf_header((jetson_tvm / manifest["entry"]).read_bytes())
    assert machine == EM_AARCH64
    device = manifest["backend_info"]["device_code"]
    cubin = (jetson_tvm / device["cubin"]).read_bytes()
    machine, flags = elf_header(cubin)
    assert machine == EM_CUDA and cubin_sm(flags, cubin[8]) == 87
    # no GPU here: the manifest says so instead of claiming a check that did not run
    assert manifest["verify"]["status"] == "not-run" and "CUDA GPU" in manifest["verify"]["reason"]


def test_jetson_artifact_refuses_to_run_without_a_gpu(jetson_tvm):
    import edgekit
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="CUDA GPU.*sm_87"):
        edgekit.load(jetson_tvm)


def test_android_executorch_is_an_xnnpack_delegated_pte(tmp_path, cli):
    out = tmp_path / "phone"
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--target", "android-arm64", "--backend", "executorch",
                       "--output", out, "--no-verify")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    pte = (out / manifest["entry"]).read_bytes()
    assert pte[4:8] == b"ET12", "not an ExecuTorch program flatbuffer"
    assert b"XnnpackBackend" in pte
    assert manifest["backend_info"]["delegated_ops"] > 0
    assert manifest["target"] == "android-arm64" and manifest["arch"] == "aarch64"


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU (run on a GPU machine: pytest -m gpu)")
def test_cuda_artifact_runs_on_the_gpu_and_matches_eager(tmp_path, zoo_model):
    """cuda-sm90 (x86_64 host + H100): the cubin built at compile time is what runs."""
    import numpy as np

    import edgekit

    module, inputs, expected = zoo_model
    art = edgekit.compile_model(module, inputs, target="cuda-sm90", backend="tvm", output=tmp_path / "gpu")
    (got,) = edgekit.load(art).run([inputs[0].numpy()])
    assert np.abs(got - expected).max() <= 1e-4
