"""What a user meets on the command line: help texts, the options every command has (--threads, -v, -q), flags named
in error messages that exist, outputs checked before work starts, thread counts reaching every library."""
from __future__ import annotations

import ast
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from edgekit import options
from edgekit.apps import registry
from edgekit.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edgekit", "compile", "runtimes", "apps", "kernels")


def every_parser():
    """(command words, parser) for the CLI and each app's own parser (built lazily by the CLI)."""
    trees = [build_parser()]
    for app in registry.apps():
        tree = app.app_parser()
        options.add_common(tree)
        trees.append(tree)
    for tree in trees:
        yield from options.parsers(tree)


@pytest.fixture(autouse=True)
def thread_environment(monkeypatch):
    """Commands set the thread variables of this process: restore them after each test."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "OPENCV_FOR_THREADS_NUM", "OMP_WAIT_POLICY", "TVM_THREAD_POOL_SPIN_COUNT"):
        monkeypatch.setenv(name, os.environ.get(name, "")) if name in os.environ else monkeypatch.delenv(
            name, raising=False)
    yield
    logging.getLogger("edgekit").setLevel(logging.NOTSET)


def test_help_never_shows_none_and_every_flag_has_help():
    seen = 0
    for parser in every_parser():
        text = parser.format_help()
        assert "(default: None)" not in text and "default: []" not in text, parser.prog
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{parser.prog} {'/'.join(action.option_strings)} has no help text"
                seen += 1
    assert seen > 100  # the apps' parsers were walked too


def test_every_command_takes_threads_verbose_and_quiet():
    for parser in every_parser():
        if "-" not in parser.prefix_chars:
            continue
        for flag in ("--threads", "-v", "-q"):
            assert flag in parser._option_string_actions, f"{parser.prog} lacks {flag}"
        assert parser._option_string_actions["--threads"].dest == "threads"


def _flags_outside_backticks(text: str) -> set[str]:
    text = re.sub(r"`[^`]*`", "", text)  # a quoted command line is another program's (or another edgekit command's)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def test_error_messages_name_flags_that_exist():
    flags = set()
    for parser in every_parser():
        flags |= set(parser._option_string_actions)
    missing = []
    for package in PACKAGES:
        for file in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                        and getattr(node.exc.func, "id", None) == "EdgekitError"):
                    continue
                text = "".join(c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant)
                               and isinstance(c.value, str))
                missing += [f"{file.relative_to(REPO)}:{node.lineno} {f}" for f in _flags_outside_backticks(text)
                            if f not in flags]
    assert not missing, missing


def test_missing_weights_in_compile_names_no_flag_compile_lacks(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_WEIGHTS", str(tmp_path / "empty"))
    code, out, err = cli("compile", "--model", "superres.x4", "--backend", "onnxruntime", "-o", tmp_path / "a")
    compile_flags = set(next(p for p in every_parser() if p.prog.endswith(" compile"))._option_string_actions)
    assert code == 2 and "weights" in err
    assert _flags_outside_backticks(err) <= compile_flags, err


def test_an_unwritable_output_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    import edgekit.compile as compiling

    monkeypatch.setattr(compiling, "compile_model", lambda *a, **k: pytest.fail("compiled before checking -o"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = cli("compile", "--model", "examples/conv_attention.py:build", "--backend", "onnxruntime",
                         "-o", blocker / "art")
    assert code == 2 and "--output" in err and "not a folder" in err and "Traceback" not in err
    code, out, err = cli("run", tmp_path / "missing-artifact", "-o", blocker / "y.npz")
    assert code == 2 and "--output" in err and "not a folder" in err
    monkeypatch.setattr(options.os, "access", lambda path, mode: False)  # as a non-root user in a read-only folder
    code, out, err = cli("run", tmp_path / "missing-artifact", "-o", tmp_path / "y.npz")
    assert code == 2 and "may not write" in err


def test_threads_reach_the_environment_torch_and_onnxruntime(cli, host_artifacts, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        code, out, err = cli("info", host_artifacts["onnxruntime"], "--threads", "1")
        assert code == 0
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["TVM_NUM_THREADS"] == "1"
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and torch.get_num_threads() == 1
        from edgekit.artifact import read_verified
        from edgekit.runtimes import executorch as et_runtime
        from edgekit.runtimes import onnxruntime as ort_runtime

        artifact = read_verified(host_artifacts["onnxruntime"])
        session, _ = ort_runtime.load(artifact.path, artifact.manifest, artifact.payload)
        assert session.get_session_options().intra_op_num_threads == 1
        from executorch.extension.pybindings import portable_lib

        artifact = read_verified(host_artifacts["executorch"])
        et_runtime.load(artifact.path, artifact.manifest, artifact.payload)
        assert portable_lib._threadpool_get_thread_count() == 1
    finally:
        torch.set_num_threads(before)


def test_default_threads_are_the_physical_cores(monkeypatch):
    import psutil

    from edgekit import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = min(psutil.cpu_count(logical=False) or os.cpu_count(), len(os.sched_getaffinity(0)))
    assert threads.default_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


@pytest.mark.parametrize("flags,shown", [((), {"INFO"}), (("-q",), set()), (("-v",), {"INFO", "DEBUG"})])
def test_verbosity_flags_set_edgekit_logging(flags, shown, cli, capsys):
    code, _, _ = cli("targets", "--json", *flags)
    assert code == 0
    logger = logging.getLogger("edgekit.test")
    logger.debug("DEBUG")
    logger.info("INFO")
    err = capsys.readouterr().err
    assert {word for word in ("INFO", "DEBUG") if word in err} == shown


def test_quiet_by_default_filters_library_noise(cli, capsys):
    import warnings

    code, _, _ = cli("targets", "--json")
    assert code == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        from edgekit import log

        log.silence_third_party()
        warnings.warn_explicit("deprecated inside torch", FutureWarning, "torch/x.py", 1, module="torch.x")
        warnings.warn_explicit("an edgekit warning", UserWarning, "edgekit/x.py", 1, module="edgekit.x")
    assert [str(w.message) for w in caught] == ["an edgekit warning"]
    logging.getLogger("torchao").warning("Failed to load x.so")
    assert "Failed to load" not in capsys.readouterr().err


def test_no_third_party_noise_when_running_an_artifact(host_artifacts, tmp_path):
    import subprocess

    import numpy as np

    x = tmp_path / "x.npy"
    from edgekit.zoo import conv_attention

    np.save(x, conv_attention()[1][0].numpy())
    for backend, art in host_artifacts.items():
        proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", str(art), "-i", str(x), "-o",
                               str(tmp_path / f"{backend}.npz")], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "default"})  # DeprecationWarnings too
        assert proc.returncode == 0, proc.stderr
        noise = [w for w in ("FutureWarning", "DeprecationWarning", "Failed to load", "cpuinfo") if w in proc.stderr]
        assert not noise, (backend, proc.stderr)
