"""CFSR with one dynamic-shape artifact (issue #23): a compiled backend builds ONE artifact for every LR side in
MIN_SIZE..--tile, runs an image that fits in one call whatever its size (no recompiles), tiles only larger ones, and
refuses bad --tile/--overlap with exit 2. Compiled on onnxruntime for host only, with a small --tile, to stay cheap."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.apps.superres import app, eval as sr_eval
from edgekit.compile import pipeline
from edgekit.errors import EdgekitError

SHARED = Path(__file__).resolve().parents[2] / "../shared"
CKPT = SHARED / "weights" / "cfsr" / "CFSR_x2.pth"
SET5 = SHARED / "data" / "sr" / "Set5"
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not CKPT.is_file() or not SET5.is_dir(),
                                 reason="shared CFSR weights / Set5 not found next to the repo (../shared)")]
TILE, OVERLAP = 48, 8  # the artifact takes LR sides 16..48



@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(cache folder, compile_model calls, the onnxruntime SR callable wrapped to record each call's input shape)."""
    root = tmp_path_factory.mktemp("sr-cache")
    calls, shapes = [], []
    real = pipeline.compile_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "compile_model", lambda *a, **k: calls.append(k["output"]) or real(*a, **k))
        sr = app.build_sr("onnxruntime", 2, CKPT, tile=TILE, cache_dir=root)

        def recorded(x):
            shapes.append(x.shape[2:])
            return sr(x)
        yield root, calls, recorded, shapes


@pytest.fixture(scope="module")
def eager():
    return app.build_sr("eager", 2, CKPT)


def crop(name: str, h: int, w: int) -> np.ndarray:
    return sr_eval.read_rgb(SET5 / f"{name}.png")[:h, :w]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 1  # float rounding may flip one level


def entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()]  # beside them: the cache's lock files


def test_one_artifact_runs_two_odd_sizes_whole(compiled, eager):
    root, calls, sr, shapes = compiled
    [artifact] = entries(root)
    spec = json.loads((artifact / "manifest.json").read_text())["inputs"][0]
    assert spec["dynamic"] == {"2": {"name": "h", "min": app.MIN_SIZE, "max": TILE},
                               "3": {"name": "w", "min": app.MIN_SIZE, "max": TILE}}
    tiling = app.tiling_for("onnxruntime", TILE, OVERLAP)
    for h, w in ((23, 37), (41, 29)):
        shapes.clear()
        lr = crop("baby", h, w)
        out = app.upscale_rgb(lr, sr, 2, **tiling)
        assert shapes == [(h, w)]  # the whole image in one call: no tiles, no padding
        assert close(out, app.upscale_rgb(lr, eager, 2))
    again = app.build_sr("onnxruntime", 2, CKPT, tile=TILE, cache_dir=root)  # as the next `run` would
    lr = crop("bird", 31, 45)
    assert close(app.upscale_rgb(lr, again, 2, **tiling), app.upscale_rgb(lr, eager, 2))
    assert len(calls) == 1 and entries(root) == [artifact]


def test_image_above_tile_is_tiled_and_matches(compiled, eager):
    root, calls, sr, shapes = compiled
    shapes.clear()
    lr = crop("head", 70, 101)
    out = app.upscale_rgb(lr, sr, 2, **app.tiling_for("onnxruntime", TILE, OVERLAP))
    assert len(shapes) > 1 and all(max(s) <= TILE for s in shapes)
    assert close(out, app.upscale_rgb(lr, eager, 2, tile=TILE, overlap=OVERLAP))  # eager over the same windows
    assert len(calls) == 1


def test_image_below_min_size_is_mirrored_up_and_cropped(compiled, eager):
    root, calls, sr, shapes = compiled
    shapes.clear()
    lr = crop("woman", 9, 30)
    out = app.upscale_rgb(lr, sr, 2, **app.tiling_for("onnxruntime", TILE, OVERLAP))
    assert shapes == [(app.MIN_SIZE, 30)] and out.shape == (18, 60, 3)
    assert close(out, app.upscale_rgb(lr, eager, 2, min_size=app.MIN_SIZE))
    with pytest.raises(EdgekitError, match=r"outside the range 16\.\.48"):  # the artifact itself refuses
        sr(np.zeros((1, 3, 16, TILE + 1), np.float32))


def test_run_cli_uses_the_cached_dynamic_artifact(compiled, eager, tmp_path, cli):
    root, calls, _, _ = compiled
    lr = crop("butterfly", 37, 43)
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    cv2.imwrite(str(src), cv2.cvtColor(lr, cv2.COLOR_RGB2BGR))
    code, _, err = cli("superres", "run", src, "-o", dst, "--scale", "2", "--weights", CKPT, "--backend",
                       "onnxruntime", "--tile", TILE, "--overlap", OVERLAP, "--cache", root)
    assert code == 0, err
    out = cv2.cvtColor(cv2.imread(str(dst)), cv2.COLOR_BGR2RGB)
    assert close(out, app.upscale_rgb(lr, eager, 2)) and len(calls) == 1 and len(entries(root)) == 1


@pytest.mark.parametrize("flags,message", [
    (("--backend", "onnxruntime", "--tile", "8", "--overlap", "2"), r"--tile 8 is outside 16\.\.1024"),
    (("--backend", "onnxruntime", "--tile", "4096"), r"--tile 4096 is outside 16\.\.1024"),
    (("--tile", "32", "--overlap", "16"), "must exceed twice --overlap"),
    (("--overlap", "-1"), "--overlap -1 is negative"),
])
def test_bad_tiling_flags_exit_2_with_a_clear_message(flags, message, tmp_path, cli):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), np.zeros((20, 20, 3), np.uint8))
    code, _, err = cli("superres", "run", src, "-o", tmp_path / "o.png", "--weights", CKPT, "--scale", "2",
                       "--cache", tmp_path / "cache", *flags)
    assert code == 2 and "edgekit: error:" in err and re.search(message, err), err
    assert not (tmp_path / "cache").exists()  # refused before anything compiles


def test_help_shows_the_tile_default(capsys):
    with pytest.raises(SystemExit):
        from edgekit.cli import main
        main(["superres", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "largest LR piece run in one model call" in text and "(default: 640)" in text
