"""Apps are found, not listed: a new folder with the sibling files (spec.py exposing SPEC: AppSpec) is an app for the
CLI (`edgekit models`, `compile --model`, its own subcommand), the bench suite and the soak driver, with no edit to
any central file. Here a tiny fake app lives in tmp_path and joins the discovery path (edgekit.apps.__path__)."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

import edgekit.apps
from edgekit.apps import registry
from edgekit.apps.spec import AppSpec, CompileSpec, ModelCase, ModelEntry
from edgekit.errors import EdgekitError

REPO = Path(__file__).resolve().parents[1]
REAL_APPS = ("superres", "pose", "asr", "chimp")

FAKE_APP = {
    "__init__.py": '"""A fake app for tests/test_app_registry.py."""\n',
    "spec.py": """
        from edgekit.apps.spec import AppSpec, SoakSpec

        SPEC = AppSpec(package=__package__, title="Fake app", default_model="tiny", soak=SoakSpec("video"))
        """,
    "model.py": """
        import torch

        from edgekit.apps.spec import CompileSpec, QuantRecipe, Tolerance


        def mean_output(run, samples) -> float:
            return float(sum(run(list(sample))[0].mean() for sample in samples))


        def compile_models() -> dict:
            def recipe(width: int) -> QuantRecipe:
                g = torch.Generator().manual_seed(1)
                calibration = [(torch.randn(1, width, generator=g).numpy(),) for _ in range(8)]
                return QuantRecipe(calibration, metric=mean_output, metric_name="fake_mean", max_drop=10.0)

            def build(width: int) -> CompileSpec:
                torch.manual_seed(0)
                net = torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.ReLU()).eval()
                return CompileSpec(net, (torch.randn(1, width),), Tolerance(atol=1e-4, rtol=1e-4),
                                   int8=lambda: recipe(width))

            return {"tiny": lambda: build(4), "other": lambda: build(6)}
        """,
    "app.py": """
        def run(x):
            return x
        """,
    "demo.py": """
        def register(subparsers) -> None:
            parser = subparsers.add_parser("fakeapp", help="a fake app")
            commands = parser.add_subparsers(dest="fakeapp_command", required=True)
            commands.add_parser("hello", help="say hello").set_defaults(func=lambda args: print("hello from fakeapp"))
        """,
    "eval.py": """
        def evaluate() -> dict:
            return {}
        """,
    "bench.py": """
        from edgekit.apps.spec import ModelCase

        from .model import compile_models


        def cases() -> list:
            return [ModelCase.from_spec(f"fakeapp_{name}", build()) for name, build in compile_models().items()]
        """,
    "info.json": json.dumps({"name": "fakeapp", "title": "Fake app", "task": "tests"}),
}


def _forget_fake_app():
    for name in [m for m in sys.modules if m == "edgekit.apps.fakeapp" or m.startswith("edgekit.apps.fakeapp.")]:
        del sys.modules[name]
    registry.clear_cache()


@pytest.fixture
def fake_app(tmp_path, monkeypatch):
    folder = tmp_path / "fakeapp"
    folder.mkdir()
    for name, text in FAKE_APP.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.setattr(edgekit.apps, "__path__", [*edgekit.apps.__path__, str(tmp_path)])
    _forget_fake_app()
    yield folder
    _forget_fake_app()


def test_fake_app_is_discovered_with_its_info(fake_app):
    assert registry.names()[:len(REAL_APPS)] == REAL_APPS and "fakeapp" in registry.names()
    spec = registry.get("fakeapp")
    assert isinstance(spec, AppSpec) and spec.name == "fakeapp" and spec.title == "Fake app"
    assert spec.info["task"] == "tests" and spec.directory == fake_app
    models = spec.models()
    assert list(models) == ["tiny", "other"] and all(isinstance(m, ModelEntry) for m in models.values())
    assert spec.default_model_name(models) == "tiny" and models["other"].qualified_name == "fakeapp.other"
    built = models["tiny"]()
    assert isinstance(built, CompileSpec) and built.example_inputs[0].shape == (1, 4)


def test_models_lists_the_fake_app(fake_app, cli):
    code, out, _ = cli("models")
    names = out.split()
    assert code == 0 and {"fakeapp.tiny", "fakeapp.other", "superres.x4", "chimp.behavior"} <= set(names)


def test_compile_the_fake_apps_default_model(fake_app, cli, tmp_path):
    from edgekit.artifact import read_manifest

    out = tmp_path / "fake-ort"
    code, stdout, err = cli("compile", "--model", "fakeapp", "--backend", "onnxruntime", "--output", out)
    assert code == 0, err
    assert "verify: pass" in stdout
    manifest = read_manifest(out)
    assert manifest.model == "fakeapp" and manifest.verify["status"] == "pass"
    code, _, err = cli("compile", "--model", "fakeapp.bad", "--backend", "onnxruntime", "--output", tmp_path / "x")
    assert code == 2 and "choose one of fakeapp.tiny, fakeapp.other" in err


def test_compile_int8_uses_the_fake_apps_recipe(fake_app, cli, tmp_path):
    from edgekit.artifact import read_manifest

    out = tmp_path / "fake-int8"
    code, stdout, err = cli("compile", "--model", "fakeapp.tiny", "--backend", "onnxruntime", "--output", out,
                            "--quantize", "int8")
    assert code == 0, err
    accuracy = read_manifest(out).quantization["accuracy"]
    assert accuracy["metric"] == "fake_mean" and "fake_mean" in stdout


def test_fake_apps_subcommand_registers(fake_app, cli, capsys):
    from edgekit.cli import build_parser

    assert "fakeapp" in build_parser().format_help()
    code, out, _ = cli("fakeapp", "hello")
    assert code == 0 and out.strip() == "hello from fakeapp"


def test_bench_and_soak_find_the_fake_app(fake_app):
    from edgekit.bench.soak import soak_apps
    from edgekit.bench.suite import model_cases

    cases = {case.name: case for case in model_cases()}
    assert {"conv_attention", "fakeapp_tiny", "fakeapp_other"} <= set(cases)
    assert isinstance(cases["fakeapp_tiny"], ModelCase) and cases["fakeapp_tiny"].tolerance.atol == 1e-4
    assert soak_apps()["fakeapp"].media == "video"


def test_unknown_app_names_the_valid_ones(cli, tmp_path):
    with pytest.raises(EdgekitError, match="unknown app 'dolphin'. Valid apps: superres, pose, asr, chimp"):
        registry.get("dolphin")
    code, _, err = cli("compile", "--model", "dolphin", "--backend", "tvm", "--output", tmp_path / "o")
    assert code == 2 and "no such app or file" in err and "superres, pose, asr, chimp" in err


def test_a_builder_must_return_a_compile_spec():
    entry = ModelEntry("fakeapp", "legacy", lambda: ("module", (), {}))
    with pytest.raises(TypeError, match="fakeapp.legacy: the builder returned tuple, not a CompileSpec"):
        entry()


def test_every_app_folder_is_an_app_with_the_same_sibling_files():
    folders = sorted(p.name for p in (REPO / "apps").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(registry.names()) == sorted(REAL_APPS)  # no app folder is silently skipped
    missing = {app: [f for f in registry.APP_FILES if not (REPO / "apps" / app / f).is_file()] for app in folders}
    assert not any(missing.values()), f"app folders lack sibling files: { {a: m for a, m in missing.items() if m} }"


def test_every_real_app_declares_its_models_and_hooks():
    for app in registry.apps():
        models = app.models()
        assert models, app.name
        default = app.default_model_name(models)
        assert default is None or default in models, (app.name, default)
        assert app.info, f"{app.name}: no info.json"
    assert registry.get("superres").default_model_name() == "x4"
    from edgekit.bench.soak import soak_apps

    assert set(soak_apps()) == {"superres", "pose", "asr"}
