"""Issue #20 A: an artifact is code. Signatures (OpenSSF Model Signing, EC keys) and a trust policy checked before any
payload byte reaches a runtime; the runtime loads exactly the bytes that were hashed; containment of the artifact
tree; --force and output files that never destroy a user's data."""
import errno
import importlib
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import edgekit
from conftest import MODEL_SPEC, example_input
from edgekit import cli as edgekit_cli
from edgekit import trust
from edgekit.errors import EdgekitError

RUNTIMES = ("edgekit.runtimes.onnxruntime", "edgekit.runtimes.tvm", "edgekit.runtimes.executorch")


def assert_refused(code, err, *needles):
    assert code == 2, err
    assert err.startswith("edgekit: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return trust.generate_keys(root / "a"), trust.generate_keys(root / "b")


@pytest.fixture
def loads(monkeypatch):
    """Record every runtime load (and emulator run) instead of doing it: a refused artifact must record none."""
    calls = []
    for name in RUNTIMES:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "load", lambda *a, payload=None, _n=name, **k: calls.append(_n))
    from edgekit.runtimes import emulator

    monkeypatch.setattr(emulator, "run_artifact", lambda *a, **k: calls.append("emulator"))
    return calls


@pytest.fixture
def signed(artifact_copy, keys, cli):
    def make(backend="tvm"):
        art = artifact_copy(backend)
        code, out, err = cli("sign", art, "--key", keys[0][0])
        assert code == 0, err
        assert (art / "model.sig").is_file() and "manifest sha256" in out
        return art
    return make


def _constructor_library(tmp_path: Path, marker: Path) -> bytes:
    """A shared library whose constructor creates `marker`: it runs the moment anything dlopens it."""
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void ran(void) {\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n')
    lib = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", lib, src], check=True)
    return lib.read_bytes()


def _rewrite_payload(art: Path, name: str, data: bytes) -> None:
    """What an attacker with write access does: replace a payload and recompute its checksum in the manifest."""
    import hashlib

    (art / name).write_bytes(data)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


# ---------------------------------------------------------------- signing and the policy

def test_keys_are_ec_p256_and_private(keys):
    (private, public), _ = keys
    assert private.stat().st_mode & 0o777 == 0o600
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public.read_bytes())
    assert key.curve.name == "secp256r1"


def test_compile_sign_run_with_trust(cli, tmp_path, keys, zoo_model):
    (private, public), _ = keys
    art = tmp_path / "signed"
    code, out, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", art,
                         "--sign", private)
    assert code == 0, err
    digest = out.split("manifest sha256 ")[1].split()[0]
    assert (art / "model.sig").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    x = tmp_path / "x.npy"
    np.save(x, example_input(zoo_model))
    code, out, err = cli("run", art, "-i", x, "-o", tmp_path / "y.npz", "--trust", public, "--expect-digest", digest)
    assert code == 0, err
    assert np.abs(np.load(tmp_path / "y.npz")["output0"] - zoo_model[2]).max() <= 1e-4
    code, out, err = cli("info", art, "--trust", public)
    assert code == 0 and json.loads(out)["backend"] == "onnxruntime"
    assert f"manifest sha256 {digest} (signature verified" in err
    code, out, err = cli("bench", art, "--iters", "1", "--json", "--trust", public)
    assert code == 0, err
    model = edgekit.load(art, trust=public, expect_digest=f"sha256:{digest}")
    assert model.digest == digest


@pytest.mark.parametrize("name", ["manifest.json", "model.so", "model.sig"])
def test_one_byte_change_anywhere_is_refused_before_loading(cli, signed, keys, loads, name):
    art = signed("tvm")
    path = art / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = cli("run", art, "-o", art.parent / "y.npz", "--trust", keys[0][1])
    assert_refused(code, err)
    assert any(s in err for s in ("signature does not verify", "changed since it was signed", "checksum mismatch"))
    assert loads == [] and not (art.parent / "y.npz").exists()


def test_rewritten_library_never_runs_under_a_policy(cli, signed, keys, tmp_path, loads):
    """model.so swapped for a library with a constructor and its sha256 recomputed in manifest.json: the checksum
    alone is satisfied, the signature is not; the constructor never runs."""
    art = signed("tvm")
    digest = trust.manifest_digest((art / "manifest.json").read_bytes())
    marker = tmp_path / "constructor-ran"
    _rewrite_payload(art, "model.so", _constructor_library(tmp_path, marker))
    for flags in (["--trust", keys[0][1]], ["--expect-digest", digest]):
        code, _, err = cli("run", art, "-o", tmp_path / "y.npz", *flags)
        assert_refused(code, err, str(art / "manifest.json"))
    assert not marker.exists() and loads == []


def test_unsigned_artifact_is_refused_under_a_policy(cli, artifact_copy, keys, loads, tmp_path):
    art = artifact_copy("onnxruntime")
    code, _, err = cli("run", art, "-o", tmp_path / "y.npz", "--trust", keys[0][1])
    assert_refused(code, err, "not signed", "edgekit sign")
    assert loads == []


def test_wrong_key_is_refused(cli, signed, keys, loads, tmp_path):
    art = signed("onnxruntime")
    code, _, err = cli("info", art, "--trust", keys[1][1])
    assert_refused(code, err, "signature does not verify", str(keys[1][1]))
    assert loads == []


def test_expect_digest(cli, artifact_copy, tmp_path):
    art = artifact_copy("onnxruntime")
    digest = trust.manifest_digest((art / "manifest.json").read_bytes())
    code, out, err = cli("info", art, "--expect-digest", digest)
    assert code == 0 and f"manifest sha256 {digest}" in err
    code, out, err = cli("info", art, "--expect-digest", "0" * 64)
    assert_refused(code, err, "is not the expected", "0" * 64)
    assert out == ""
    code, _, err = cli("info", art, "--expect-digest", "abc")
    assert_refused(code, err, "64-hex-digit")


def test_edgekit_trust_env_is_the_default_policy(cli, artifact_copy, signed, keys, monkeypatch, loads, tmp_path):
    monkeypatch.setenv("EDGEKIT_TRUST", str(keys[0][1]))
    unsigned, good = artifact_copy("onnxruntime"), signed("tvm")
    code, _, err = cli("run", unsigned, "-o", tmp_path / "y.npz")
    assert_refused(code, err, "not signed", "EDGEKIT_TRUST")
    assert loads == []
    with pytest.raises(EdgekitError, match="not signed"):
        edgekit.load(unsigned)
    assert edgekit.load(good) is not None  # the recorder "loaded" it: the policy passed
    assert loads == ["edgekit.runtimes.tvm"]
    assert edgekit.load(unsigned, trust=False) is not None  # an explicit opt-out overrides the environment
    monkeypatch.setenv("EDGEKIT_TRUST", str(tmp_path / "missing.pub"))
    code, _, err = cli("info", good)
    assert_refused(code, err, "missing.pub", "not found")


def test_unsigned_native_code_warns_once(artifact_copy, monkeypatch, loads):
    monkeypatch.setattr(trust, "_warned", False)
    monkeypatch.delenv("EDGEKIT_TRUST", raising=False)
    tvm, ort = artifact_copy("tvm"), artifact_copy("onnxruntime")
    with pytest.warns(trust.UnsignedArtifactWarning, match="native code"):
        edgekit.load(tvm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edgekit.load(tvm)        # once per process
        edgekit.load(ort)


# ---------------------------------------------------------------- the runtime loads the bytes that were hashed

@pytest.mark.parametrize("backend", ["onnxruntime", "tvm", "executorch"])
def test_payload_swapped_after_hashing_is_not_what_runs(artifact_copy, monkeypatch, tmp_path, zoo_model, backend):
    """Swap the payload on disk after it was hashed (inside the runtime's load, the latest moment): the model still
    runs the hashed bytes, and a constructor library planted there never runs."""
    art = artifact_copy(backend)
    marker = tmp_path / "constructor-ran"
    evil = _constructor_library(tmp_path, marker)
    module = importlib.import_module(f"edgekit.runtimes.{backend}")
    real = module.load

    def swap_then_load(artifact_dir, manifest, payload=None):
        (Path(artifact_dir) / manifest.entry).write_bytes(evil)
        return real(artifact_dir, manifest, payload=payload)

    monkeypatch.setattr(module, "load", swap_then_load)
    (got,) = edgekit.load(art, trust=False).run([example_input(zoo_model)])
    assert np.abs(got - zoo_model[2]).max() <= 1e-4
    assert not marker.exists()


def test_runtime_without_payload_gets_a_private_copy(artifact_copy, monkeypatch):
    """A runtime written to the old protocol (load(artifact_dir, manifest)) is handed a private copy of the verified
    bytes, never the user's directory."""
    from edgekit.runtimes import onnxruntime as ort_runtime

    art = artifact_copy("onnxruntime")
    seen = {}

    real = ort_runtime.load

    def old_load(artifact_dir, manifest):
        seen["dir"] = Path(artifact_dir)
        seen["mode"] = Path(artifact_dir).stat().st_mode & 0o777
        return real(artifact_dir, manifest)  # reads by path: the private copy

    monkeypatch.setattr(ort_runtime, "load", old_load)
    edgekit.load(art, trust=False)
    assert seen["dir"] != art and seen["mode"] == 0o700 and not seen["dir"].exists()


# ---------------------------------------------------------------- containment

def _listed(art: Path, name: str, data: bytes) -> None:
    """List `name` in the manifest with the sha256 of `data` (as an attacker rewriting the manifest would)."""
    import hashlib

    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))


def test_symlinked_dir_is_not_a_checksum_oracle(cli, artifact_copy, tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"hunter2")
    art = artifact_copy("onnxruntime")
    (art / "link").symlink_to(secret.parent, target_is_directory=True)
    _listed(art, "link/secret.txt", b"hunter2")
    code, out, err = cli("info", art)
    assert_refused(code, err, "link", "symbolic link")
    assert out == ""


@pytest.mark.parametrize("make, needle", [
    (lambda art: (art / "dangling").symlink_to(art / "nowhere"), "symbolic link"),
    (lambda art: (art / "ln.onnx").symlink_to(art / "model.onnx"), "symbolic link"),
    (lambda art: os.mkfifo(art / "pipe"), "FIFO"),
    (lambda art: (art / "sub" / "deeper").mkdir(parents=True), "empty directory"),
    (lambda art: (art / "sub").mkdir() or (art / "sub" / "x.bin").write_bytes(b"x"), "not listed in the manifest"),
])
def test_unlisted_entries_are_refused(cli, artifact_copy, tmp_path, make, needle):
    art = artifact_copy("onnxruntime")
    make(art)
    code, out, err = cli("run", art, "-o", tmp_path / "y.npz")
    assert_refused(code, err, needle)
    assert out == "" and not (tmp_path / "y.npz").exists()


def test_payload_replaced_by_symlink_is_refused(cli, artifact_copy, tmp_path):
    art = artifact_copy("onnxruntime")
    real = tmp_path / "real.onnx"
    shutil.move(art / "model.onnx", real)
    (art / "model.onnx").symlink_to(real)
    code, _, err = cli("info", art)
    assert_refused(code, err, "symbolic link")


@pytest.mark.parametrize("name", ["../escape.bin", "sub/../../escape.bin", "/etc/passwd", "a\\b", "./model.onnx"])
def test_bad_listed_names_are_refused(cli, artifact_copy, name):
    art = artifact_copy("onnxruntime")
    _listed(art, name, b"x")
    code, out, err = cli("info", art)
    assert_refused(code, err)
    assert "not a plain relative path" in err or "must map file names" in err
    assert out == ""


def test_cuda_device_code_must_be_listed(cli, artifact_copy):
    art = artifact_copy("tvm")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["backend_info"]["device_code"] = {"cubin": "../outside.cubin", "arch": "sm_90", "source_sha256": "0"}
    (art / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("info", art)
    assert_refused(code, err)


# ---------------------------------------------------------------- never destroy data

def test_force_refuses_a_directory_that_is_not_an_artifact(cli, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    (out / "manifest.json").write_text("{}")  # not even a manifest edgekit reads
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", out, "--force")
    assert_refused(code, err, "not an edgekit artifact", "holiday.jpg", "nothing was changed")
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", afile, "--force")
    assert_refused(code, err, "is a file")
    assert afile.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_run_output_through_a_planted_symlink(cli, artifact_copy, tmp_path, zoo_model):
    art = artifact_copy("onnxruntime")
    x = tmp_path / "x.npy"
    np.save(x, example_input(zoo_model))
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "y.npz"
    (tmp_path / "y.npz.partial.npz").symlink_to(victim)  # the old fixed temp name
    code, _, err = cli("run", art, "-i", x, "-o", out)
    assert code == 0, err
    assert victim.read_text() == "do not touch" and not out.is_symlink()
    out.unlink()
    out.symlink_to(victim)  # the output name itself: the link is replaced, its target never written
    code, _, err = cli("run", art, "-i", x, "-o", out)
    assert code == 0, err
    assert victim.read_text() == "do not touch" and not out.is_symlink()
    assert np.load(out)["output0"].shape == zoo_model[2].shape


def test_disk_full_leaves_nothing_behind(cli, artifact_copy, tmp_path, zoo_model, monkeypatch):
    art = artifact_copy("onnxruntime")
    x = tmp_path / "x.npy"
    np.save(x, example_input(zoo_model))
    out = tmp_path / "y.npz"
    out.write_bytes(b"previous result")
    before = sorted(p.name for p in tmp_path.iterdir())

    def full(file, arrays):
        file.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(edgekit_cli, "_savez", full)  # the .npz writer of `edgekit run`
    code, _, err = cli("run", art, "-i", x, "-o", out)
    assert_refused(code, err, str(out), "No space left on device", "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert out.read_bytes() == b"previous result"


# ---------------------------------------------------------------- aarch64 artifacts under the emulator

@pytest.mark.emulator
def test_aarch64_signed_artifact_under_the_emulator(cli, tmp_path, keys, zoo_model, emulator_sysroot, monkeypatch):
    (private, public), _ = keys
    art = tmp_path / "arm"
    code, out, err = cli("compile", "--model", MODEL_SPEC, "--target", "android-arm64", "--backend", "onnxruntime",
                         "--output", art, "--sign", private)
    assert code == 0, err
    x = tmp_path / "x.npy"
    np.save(x, example_input(zoo_model))
    code, out, err = cli("run", art, "-i", x, "-o", tmp_path / "y.npz", "--trust", public)
    assert code == 0, err
    assert np.abs(np.load(tmp_path / "y.npz")["output0"] - zoo_model[2]).max() <= 1e-4

    from edgekit.runtimes import emulator

    runs = []
    monkeypatch.setattr(emulator, "require_sysroot", lambda: runs.append("emulator"))
    data = bytearray((art / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / "model.onnx").write_bytes(bytes(data))
    code, _, err = cli("run", art, "-i", x, "-o", tmp_path / "z.npz", "--trust", public)
    assert_refused(code, err, "checksum mismatch")
    assert runs == [] and not (tmp_path / "z.npz").exists()
