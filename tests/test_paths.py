"""edgekit.paths is the one rule for locations; the kernels (which import nothing of edgekit) repeat the kernel
cache's rule in edgekit/kernels/cache.py, and these tests hold the two equal."""

import itertools
import sys

import platformdirs
import pytest

from edgekit import paths
from edgekit.kernels import cache

VARIABLES = ("EDGEKIT_CACHE", "EDGEKIT_KERNEL_CACHE", "XDG_CACHE_HOME")


@pytest.mark.parametrize("settings", list(itertools.product((False, True), repeat=len(VARIABLES))),
                         ids=lambda s: "-".join(v for v, on in zip(VARIABLES, s) if on) or "none")
def test_kernel_cache_rules_agree(settings, tmp_path, monkeypatch):
    for variable, on in zip(VARIABLES, settings):
        if on:
            monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
        else:
            monkeypatch.delenv(variable, raising=False)
    assert cache.cache_dir() == paths.kernel_cache()
    expected = (tmp_path / "edgekit_kernel_cache" if settings[1] else
                tmp_path / "edgekit_cache" / "kernels" if settings[0] else
                platformdirs.user_cache_path("edgekit") / "kernels")
    assert paths.kernel_cache() == expected
    if settings[2] and not settings[0] and not settings[1] and sys.platform.startswith("linux"):
        assert paths.kernel_cache() == tmp_path / "xdg_cache_home" / "edgekit" / "kernels"  # Linux: XDG honoured


def test_kernel_cache_rules_agree_on_home_relative_and_empty_values(monkeypatch):
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("EDGEKIT_CACHE", "~/edgekit-cache")
    assert cache.cache_dir() == paths.kernel_cache()
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", "~/kernels")
    assert cache.cache_dir() == paths.kernel_cache()
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", "")  # set but empty: unset, for both
    assert cache.cache_dir() == paths.kernel_cache()


@pytest.mark.parametrize("function,variable,leaf", [(paths.emulator_dir, "EDGEKIT_EMULATOR_DIR", "emulator"),
                                                    (paths.artifact_cache, "EDGEKIT_ARTIFACT_CACHE", "artifacts"),
                                                    (paths.kernel_cache, "EDGEKIT_KERNEL_CACHE", "kernels")])
def test_caches_follow_edgekit_cache_and_their_own_variable(function, variable, leaf, tmp_path, monkeypatch):
    for name in ("EDGEKIT_CACHE", variable):
        monkeypatch.delenv(name, raising=False)
    assert function() == platformdirs.user_cache_path("edgekit") / leaf
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert function() == platformdirs.user_cache_path("edgekit") / leaf
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "root"))
    assert paths.cache_root() == tmp_path / "root" and function() == tmp_path / "root" / leaf
    monkeypatch.setenv(variable, str(tmp_path / "own"))
    assert function() == tmp_path / "own"  # its own variable wins over EDGEKIT_CACHE
    monkeypatch.setenv(variable, "")
    assert function() == tmp_path / "root" / leaf  # set but empty counts as unset


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A private config file, and no data/weights variables."""
    monkeypatch.setenv("EDGEKIT_CONFIG", str(tmp_path / "config" / "paths.json"))
    for name in ("EDGEKIT_DATA", "EDGEKIT_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "config" / "paths.json"


def test_recorded_paths_are_found_without_variables_and_variables_still_win(config, tmp_path, monkeypatch):
    data, weights = tmp_path / "d", tmp_path / "w"
    data.mkdir(), weights.mkdir()
    assert paths.data_dir() == platformdirs.user_data_path("edgekit") / "data"  # nothing recorded: the default
    assert paths.table()["data"]["source"] == "default"
    paths.record({"data": str(data)})
    paths.record({"weights": str(weights)})  # keeps data
    assert paths.data_dir() == data and paths.weights_dir() == weights
    assert paths.weights("cfsr", "x.pth") == weights / "cfsr" / "x.pth"
    assert paths.table()["weights"]["source"] == str(config)
    monkeypatch.setenv("EDGEKIT_DATA", str(tmp_path / "env"))
    assert paths.data_dir() == tmp_path / "env" and paths.table()["data"]["source"] == "$EDGEKIT_DATA"


def test_paths_set_refuses_unknown_names_and_missing_folders_and_leaves_the_file(config, tmp_path, cli):
    code, out, err = cli("paths", "--set", f"data={tmp_path}")
    assert code == 0 and str(config) in out
    before = config.read_text()
    for bad, words in ((f"cache={tmp_path}", "choose from data, weights"), (f"weights={tmp_path / 'nope'}",
                                                                           "no such folder"),
                       ("weights", "expected WHAT=DIR")):
        code, out, err = cli("paths", "--set", bad)
        assert code == 2 and words in err and "Traceback" not in err, err
    assert config.read_text() == before
    code, out, err = cli("paths", "--json")
    assert code == 0 and '"source"' in out


def test_a_damaged_config_file_is_named_with_the_fix(config, cli):
    config.parent.mkdir(parents=True)
    config.write_text("{not json")
    code, out, err = cli("paths")
    assert code == 2 and str(config) in err and "edgekit paths --set" in err
