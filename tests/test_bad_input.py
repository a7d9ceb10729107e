"""Spine acceptance 4: every bad input ends in one readable message, a non-zero exit and nothing written."""
import json
import shutil

import numpy as np
import pytest

import edgekit
from conftest import MODEL_SPEC
from edgekit.errors import EdgekitError

BAD_MODEL = '''
import torch
class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1
def build():
    return Branchy(), (torch.randn(4),)
'''


def assert_clean_error(code, err, *needles):
    assert code == 2
    assert err.startswith("edgekit: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_unknown_target(cli, tmp_path):
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--target", "pixel9", "--backend", "tvm",
                       "--output", tmp_path / "o")
    assert_clean_error(code, err, "unknown target 'pixel9'", "android-arm64")
    assert not (tmp_path / "o").exists()


def test_unknown_backend(cli, tmp_path):
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "tensorrt", "--output", tmp_path / "o")
    assert_clean_error(code, err, "unknown backend 'tensorrt'", "executorch, tvm, onnxruntime")


def test_backend_not_supported_by_target(cli, tmp_path):
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--target", "cuda-sm90", "--backend", "executorch",
                       "--output", tmp_path / "o")
    assert_clean_error(code, err, "not supported for target 'cuda-sm90'", "tvm, onnxruntime")


def test_model_that_fails_export_names_the_line(cli, tmp_path):
    model = tmp_path / "branchy.py"
    model.write_text(BAD_MODEL)
    code, _, err = cli("compile", "--model", f"{model}:build", "--backend", "onnxruntime", "--output", tmp_path / "o")
    assert_clean_error(code, err, "cannot be exported", f"{model}:5", "if x.sum() > 0", "fix:", "torch.cond")
    assert list(tmp_path.iterdir()) == [model], "a failed compile left files behind"


def test_bad_model_spec(cli, tmp_path):
    code, _, err = cli("compile", "--model", "resnet", "--backend", "tvm", "--output", tmp_path / "o")
    assert_clean_error(code, err, "no such app or file", "FILE.py:FUNC")
    code, _, err = cli("compile", "--model", "net.py", "--backend", "tvm", "--output", tmp_path / "o")
    assert_clean_error(code, err, "expected FILE.py:FUNC")
    code, _, err = cli("compile", "--model", f"{tmp_path}/nope.py:build", "--backend", "tvm", "--output", tmp_path / "o")
    assert_clean_error(code, err, "nope.py: model file not found")


def test_output_dir_exists_needs_force(cli, tmp_path, host_artifacts):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", out)
    assert_clean_error(code, err, "output directory exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only an edgekit artifact: a folder of the user's files is refused and left as it was
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", out, "--force")
    assert_clean_error(code, err, "not an edgekit artifact", "keep.txt", "nothing was changed")
    assert (out / "keep.txt").read_text() == "mine"
    art = tmp_path / "art"
    shutil.copytree(host_artifacts["onnxruntime"], art)
    code, _, err = cli("compile", "--model", MODEL_SPEC, "--backend", "onnxruntime", "--output", art, "--force")
    assert code == 0, err
    assert (art / "manifest.json").exists()


@pytest.mark.parametrize("inputs, needle", [
    ([], "got 0 input(s); this model expects 1: input0: float32[1, 3, 32, 32]"),
    ([np.zeros((1, 3, 32, 32), np.float32)] * 2, "got 2 input(s)"),
    ([np.zeros((1, 3, 16, 16), np.float32)], "is float32[1, 3, 16, 16]; expected input0: float32[1, 3, 32, 32]"),
    ([np.zeros((1, 3, 32, 32), np.float64)], "is float64[1, 3, 32, 32]; expected input0: float32[1, 3, 32, 32]"),
    ([[0.0] * 3], "is a list; expected a numpy array"),
])
def test_wrong_inputs_state_the_expected_spec(host_artifacts, inputs, needle):
    model = edgekit.load(host_artifacts["onnxruntime"])
    with pytest.raises(EdgekitError) as exc:
        model.run(inputs)
    assert needle in str(exc.value)


def test_wrong_input_file_via_cli(cli, host_artifacts, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3, 32, 32), np.float32))
    code, _, err = cli("run", host_artifacts["tvm"], "--input", x, "--output", tmp_path / "o.npz")
    assert_clean_error(code, err, "expected input0: float32[1, 3, 32, 32]")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "checksum mismatch"),
    ("flip", "checksum mismatch"),
    ("delete", "payload file missing"),
])
def test_damaged_payload_is_refused_naming_the_file(cli, artifact_copy, damage, needle):
    art = artifact_copy("onnxruntime")
    payload = art / "model.onnx"
    data = payload.read_bytes()
    if damage == "truncate":
        payload.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        payload.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        payload.unlink()
    code, _, err = cli("bench", art, "--iters", "1")
    assert_clean_error(code, err, str(payload), needle)


def test_swapped_payload_is_refused(cli, artifact_copy):
    a, b = artifact_copy("onnxruntime"), artifact_copy("tvm")
    shutil.copy(b / "model.so", a / "model.onnx")
    code, _, err = cli("info", a)
    assert_clean_error(code, err, str(a / "model.onnx"), "checksum mismatch")


def test_extra_file_is_refused(cli, artifact_copy):
    art = artifact_copy("onnxruntime")
    (art / "evil.so").write_bytes(b"\x7fELF")
    code, _, err = cli("info", art)
    assert_clean_error(code, err, str(art / "evil.so"), "not listed in the manifest")


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(schema_version=99), "unknown manifest schema version 99"),
    (lambda m: m.pop("backend"), "malformed manifest"),
    (lambda m: m["inputs"][0].update(shape="big"), "bad tensor spec"),
    (lambda m: m.update(entry="../../etc/passwd"), "is not among its files"),
])
def test_bad_manifest_is_refused(cli, artifact_copy, edit, needle):
    art = artifact_copy("onnxruntime")
    path = art / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    code, _, err = cli("info", art)
    assert_clean_error(code, err, str(path), needle)


def test_not_json_manifest(cli, artifact_copy):
    art = artifact_copy("onnxruntime")
    (art / "manifest.json").write_text("{not json")
    code, _, err = cli("run", art, "--output", art.parent / "o.npz")
    assert_clean_error(code, err, "manifest.json: not valid JSON")


def test_not_an_artifact(cli, tmp_path):
    code, _, err = cli("info", tmp_path)
    assert_clean_error(code, err, "manifest.json: missing", "edgekit compile")


def test_app_model_names(cli, tmp_path):
    code, out, _ = cli("models")
    assert code == 0 and {"chimp.detector", "chimp.behavior", "pose.detector", "pose.landmark"} <= set(out.split())
    code, _, err = cli("compile", "--model", "chimp", "--backend", "tvm", "--output", tmp_path / "o")
    assert_clean_error(code, err, "choose one of chimp.detector, chimp.behavior")
    code, _, err = cli("compile", "--model", "dolphin", "--backend", "tvm", "--output", tmp_path / "o")
    assert_clean_error(code, err, "no such app or file", "superres, pose, asr, chimp")
