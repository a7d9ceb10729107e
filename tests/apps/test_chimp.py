"""Chimp app: synthetic ground truth, loader, tracker, decoding, metrics, export, CLI, compile, real footage."""
import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import edgekit
from edgekit.apps.chimp import data, demo, synth
from edgekit.apps.chimp import eval as chimp_eval
from edgekit.apps.chimp.app import TrackResult, decode
from edgekit.apps.chimp.model import INPUT_HW, STRIDE, ChimpModel, Detector
from edgekit.apps.chimp.runners import build_app
from edgekit.apps.chimp.tracker import Tracker, TrackerConfig
from edgekit.apps.progress import read_json_lines
from edgekit.cli import main as edgekit_main
from edgekit.errors import EdgekitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO_VIDEO = Path(__file__).resolve().parents[2] / "../shared/data/chimp/demo.mp4"


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["chimp", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Two held-out 24-frame synthetic videos (a seed training never used)."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, videos=2, seed=4242, frames=24)
    return root



@pytest.fixture(scope="module")
def shipped() -> ChimpModel:
    return ChimpModel.load()


def test_synth_is_deterministic_by_seed(tmp_path):
    a, b, c = (synth.write_dataset(tmp_path / n, 1, seed, frames=6) for n, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a.read_text() == b.read_text() != c.read_text()
    first = sorted((tmp_path / "a/images").rglob("*.png"))
    assert len(first) == 6
    for path in first:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_synth_ground_truth_follows_the_motion(tmp_path):
    """Boxes sit on dark agents, ids persist, and labels agree with how the boxes move."""
    synth.write_dataset(tmp_path, 3, seed=11, frames=48)
    dataset = data.load(tmp_path)
    speeds = {name: [] for name in dataset.behaviors}
    for video in dataset.videos:
        image = video.read(0).astype(float).mean(2)
        for x1, y1, x2, y2 in video.boxes[0].astype(int):
            assert image[y1:y2, x1:x2].min() < 60  # the fur is dark, whatever the background
        for t in range(1, len(video)):
            prev = dict(zip(video.track_ids[t - 1], video.boxes[t - 1]))
            for tid, box, labels in zip(video.track_ids[t], video.boxes[t], video.behaviors[t]):
                if tid in prev:
                    shift = np.abs((box[:2] + box[2:]) / 2 - (prev[tid][:2] + prev[tid][2:]) / 2).max()
                    for k in np.flatnonzero(labels):
                        speeds[dataset.behaviors[k]].append(shift)
    assert np.median(speeds["resting"]) < np.median(speeds["moving"]) < np.median(speeds["playing"])


def test_loader_reads_chimpact_fields(tmp_path):
    coco = {"videos": [{"id": 7, "name": "v"}],
            "images": [{"id": 1, "video_id": 7, "frame_id": 1, "file_name": "b.png"},
                       {"id": 0, "video_id": 7, "frame_id": 0, "file_name": "a.png"}],
            "annotations": [{"id": 0, "image_id": 0, "bbox": [10, 20, 30, 40], "instance_id": 5, "behaviors": [3, 1]},
                            {"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4], "track_id": 9}],
            "behavior_categories": [{"id": 3, "name": "grooming"}, {"id": 1, "name": "moving"}]}
    (tmp_path / data.ANNOTATIONS).write_text(json.dumps(coco))
    dataset = data.load(tmp_path)
    assert dataset.behaviors == ["moving", "grooming"]
    video = dataset.videos[0]
    assert [p.name for p in video.frames] == ["a.png", "b.png"]
    np.testing.assert_array_equal(video.boxes[0], [[10, 20, 40, 60]])
    assert video.track_ids[0].tolist() == [5] and video.track_ids[1].tolist() == [9]
    np.testing.assert_array_equal(video.behaviors[0], [[1, 1]])
    np.testing.assert_array_equal(video.behaviors[1], np.zeros((1, 2)))


def test_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(EdgekitError, match="annotations.json not found"):
        data.load(tmp_path)
    (tmp_path / data.ANNOTATIONS).write_text('{"videos": []}')
    with pytest.raises(EdgekitError, match="behavior_categories"):
        data.load(tmp_path)


def _box(cx, cy, size=20.0):
    return np.array([cx - size / 2, cy - size, cx + size / 2, cy + size])


def test_tracker_keeps_identities_through_a_crossing():
    """Two animals swap sides; their embeddings, not the overlap alone, must keep the ids."""
    emb = np.eye(2, 32)
    tracker = Tracker(TrackerConfig(min_hits=1))
    ids = []
    for t in range(21):
        xs = (20 + 4 * t, 100 - 4 * t)
        out = tracker.update(np.stack([_box(xs[0], 50), _box(xs[1], 52)]), np.array([0.9, 0.9]), emb)
        ids.append({det: track.track_id for track, det in out})
    assert all(frame == ids[0] for frame in ids) and len(set(ids[0].values())) == 2


def test_tracker_low_scores_extend_tracks_and_noise_gets_no_id():
    emb = np.eye(1, 32)
    tracker = Tracker()
    first = tracker.update(_box(50, 50)[None], np.array([0.9]), emb)
    assert [t.track_id for t, _ in first] == [1]
    occluded = tracker.update(_box(52, 50)[None], np.array([0.2]), emb)   # stage 2: low score, same place
    assert [t.track_id for t, _ in occluded] == [1]
    blip = tracker.update(np.stack([_box(54, 50), _box(200, 200)]), np.array([0.9, 0.9]), np.eye(2, 32))
    assert [t.track_id for t, _ in blip] == [1]                          # the newcomer is only tentative
    gone = tracker.update(_box(56, 50)[None], np.array([0.9]), emb)
    assert [t.track_id for t, _ in gone] == [1] and len(tracker.tracks) == 1


def test_tracker_reidentifies_after_a_gap_within_the_gate():
    emb = np.eye(2, 32)
    tracker = Tracker()
    for t in range(3):
        tracker.update(_box(50 + 2 * t, 50)[None], np.array([0.9]), emb[:1])
    for _ in range(5):
        tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 32)))
    back = tracker.update(_box(66, 50)[None], np.array([0.9]), emb[:1])  # where constant velocity predicts
    assert [t.track_id for t, _ in back] == [1]
    far = tracker.update(_box(300, 50)[None], np.array([0.9]), emb[:1])  # same look, implausible jump
    assert [t.track_id for t, _ in far] == []


def test_decode_maps_peaks_to_frame_boxes():
    h, w = INPUT_HW[0] // STRIDE, INPUT_HW[1] // STRIDE
    heat, box, embed = np.zeros((h, w)), np.zeros((4, h, w)), np.random.default_rng(0).normal(size=(32, h, w))
    heat[10, 20], heat[10, 21] = 0.9, 0.5          # a peak and its weaker neighbour
    box[:, 10, 20] = [0.5, 0.25, np.log(5.0), np.log(10.0)]
    boxes, scores, embeddings = decode(heat, box, embed, (INPUT_HW[1] * 2, INPUT_HW[0] * 2), threshold=0.3)
    cx, cy = (20.5 * STRIDE) * 2, (10.25 * STRIDE) * 2
    np.testing.assert_allclose(boxes, [[cx - 20, cy - 40, cx + 20, cy + 40]])
    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(embeddings, embed[:, 10, 20][None])


def _truth_as_tracks(video: data.Video, labels: list[str], swap_at: int | None = None):
    frames = []
    for t, (boxes, ids, behaviors) in enumerate(zip(video.boxes, video.track_ids, video.behaviors)):
        ids = ids[::-1] if swap_at is not None and t >= swap_at else ids
        frames.append([TrackResult(int(i), b, 1.0, dict(zip(labels, map(float, p))))
                       for i, b, p in zip(ids, boxes, behaviors)])
    return frames


def test_metrics_perfect_and_id_switch(tiny):
    dataset = data.load(tiny)
    video = next(v for v in dataset.videos if all(len(ids) >= 2 for ids in v.track_ids))
    seq = chimp_eval.trackeval_sequence(video, _truth_as_tracks(video, dataset.behaviors))
    perfect = chimp_eval.trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(seq)
    assert perfect["IDF1"] == pytest.approx(1.0)
    swapped = chimp_eval.trackeval_sequence(video, _truth_as_tracks(video, dataset.behaviors, swap_at=len(video) // 2))
    assert chimp_eval.trackeval.metrics.Identity({"PRINT_CONFIG": False}).eval_sequence(swapped)["IDF1"] < 0.9
    truth, scores = chimp_eval.behavior_pairs(video, _truth_as_tracks(video, dataset.behaviors), dataset.behaviors,
                                              dataset.behaviors)
    assert all(ap == pytest.approx(1.0) for ap in chimp_eval.behavior_ap(truth, scores, dataset.behaviors).values())


def test_networks_export_with_static_shapes(shipped):
    examples = shipped.example_inputs()
    for name, module in (("detector", shipped.detector), ("behavior", shipped.behavior)):
        program = torch.export.export(module, examples[name])
        with torch.no_grad():
            for got, want in zip(torch.utils._pytree.tree_leaves(program.module()(*examples[name])),
                                 torch.utils._pytree.tree_leaves(module(*examples[name]))):
                torch.testing.assert_close(got, want)


def test_fusion_starts_from_the_single_frame_detector_and_the_shipped_one_uses_the_clip(shipped):
    """A new fused detector ignores the past frames (its temporal branch starts at zero), so training starts
    from the single-frame detector; the shipped fused weights have learned to use them."""
    torch.manual_seed(0)
    fresh = Detector(3).eval()
    clip = torch.rand(1, 3, 3, *INPUT_HW)
    other = clip.clone()
    other[:, :-1] = torch.rand(1, 2, 3, *INPUT_HW)  # same newest frame, different past
    with torch.no_grad():
        for a, b in zip(fresh(clip), fresh(other)):
            torch.testing.assert_close(a, b)
        assert shipped.detector.frames == 3
        assert (shipped.detector(clip)[0] - shipped.detector(other)[0]).abs().max() > 1e-2


def test_shipped_weights_track_held_out_synthetic_videos(tiny, shipped):
    metrics = chimp_eval.evaluate(lambda: build_app(shipped), data.load(tiny))
    assert metrics["frames"] == 48
    assert metrics["IDF1"] > 0.5 and metrics["HOTA"] > 0.4 and metrics["behavior_mAP"] > 0.3, metrics


def _as_video(root: Path, out: Path) -> int:
    frames = sorted((root / "images").iterdir())[0].glob("*.png")
    images = [cv2.imread(str(p)) for p in sorted(frames)]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25, images[0].shape[1::-1])
    for image in images:
        writer.write(image)
    writer.release()
    return len(images)


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_cli_run_writes_every_frame(tiny, tmp_path, capsys):
    count = _as_video(tiny, tmp_path / "clip.mp4")
    assert cli("run", tmp_path / "clip.mp4", "-o", tmp_path / "overlay.mp4", "--json") == 0
    frames, summary = read_json_lines(capsys.readouterr().out)  # a line per frame as it is done, then the summary
    assert summary["frames"] == count and summary["tracks"] == len({t["track_id"] for f in frames for t in f["tracks"]})
    assert [f["frame"] for f in frames] == list(range(count)) == list(range(_frame_count(tmp_path / "overlay.mp4")))
    tracks = [t for f in frames for t in f["tracks"]]
    assert tracks and all(len(t["box"]) == 4 and set(t["behaviors"]) == set(synth.BEHAVIORS) for t in tracks)


def test_cli_eval_and_synth(tmp_path, capsys):
    assert cli("synth", "--out", tmp_path, "--videos", 1, "--frames", 12, "--seed", 5, "--size", "160x128") == 0
    assert cli("eval", "--data", tmp_path, "--json", "--baseline") == 0
    videos, results = read_json_lines(capsys.readouterr().out)  # a line per video and model, then the summary
    assert [(v["model"], v["frames"]) for v in videos] == [("model", 12), ("baseline", 12)]
    for name in ("model", "baseline"):
        assert results[name]["frames"] == 12
        assert {"HOTA", "MOTA", "IDF1", "behavior_mAP"} <= set(results[name])


def test_cli_user_errors(tmp_path):
    with pytest.raises(EdgekitError, match="not found"):
        cli("run", tmp_path / "missing.mp4")
    with pytest.raises(EdgekitError, match="--headless needs -o"):
        cli("live", "--headless")
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(EdgekitError, match="weights .* not found"):
        cli("run", tmp_path / "clip.mp4", "--weights", tmp_path / "none.pt")
    with pytest.raises(EdgekitError, match="cannot open video"):
        cli("run", tmp_path / "clip.mp4")


def test_onnxruntime_backend_matches_eager(tiny, tmp_path, shipped):
    video = data.load(tiny).videos[0]
    eager = build_app(shipped, "eager")
    compiled = build_app(shipped, "onnxruntime", tmp_path)
    for t in range(8):
        a, b = eager(video.read(t)), compiled(video.read(t))
        assert [r.track_id for r in a] == [r.track_id for r in b]
        for ra, rb in zip(a, b):
            np.testing.assert_allclose(ra.box, rb.box, atol=0.05)
            np.testing.assert_allclose(list(ra.behaviors.values()), list(rb.behaviors.values()), atol=1e-3)


@pytest.mark.skipif(not DEMO_VIDEO.is_file(), reason="shared demo.mp4 not found next to the repo (../shared)")
def test_real_footage_every_frame_has_an_entry(tmp_path, capsys):
    assert cli("run", DEMO_VIDEO, "-o", tmp_path / "demo.mp4", "--json") == 0
    frames, _ = read_json_lines(capsys.readouterr().out)
    assert len(frames) == _frame_count(DEMO_VIDEO) == _frame_count(tmp_path / "demo.mp4")
    assert sum(bool(f["tracks"]) for f in frames) > len(frames) // 2


def test_compile_cli_builds_the_behavior_head(tmp_path, shipped):
    out = tmp_path / "behavior"
    assert edgekit_main(["compile", "--model", "chimp.behavior", "--backend", "onnxruntime",
                         "--output", str(out)]) == 0
    steps = np.random.default_rng(0).normal(size=shipped.example_inputs()["behavior"][0].shape).astype(np.float32)
    with torch.no_grad():
        want = shipped.behavior(torch.from_numpy(steps)).numpy()
    np.testing.assert_allclose(edgekit.load(out).run([steps])[0], want, atol=1e-4)


def test_bench_reports_app_fps_per_backend(tiny, tmp_path):
    """`make bench`'s app rows: one per backend and peer, FPS = 1000 / mean frame ms, divided by the faster peer."""
    from edgekit.apps.chimp.bench import WARMUP, app_rows
    from edgekit.bench.report import markdown

    count = _as_video(tiny, tmp_path / "clip.mp4")
    rows = app_rows(tmp_path / "clip.mp4", tmp_path, lambda _msg: None, backends=("onnxruntime",))
    assert [r["impl"] for r in rows] == ["eager", "eager 1 thread", "onnxruntime"]
    best = min(rows[:2], key=lambda r: r["mean_ms"])
    for r in rows:
        assert r["suite"] == "app" and r["shape"] == [[count - WARMUP, 256, 320, 3]]
        assert r["fps"] == pytest.approx(1e3 / r["mean_ms"]) and r["peer"] == f"{best['impl']} fp32"
        assert r["ratio_to_best_peer"] == pytest.approx(r["mean_ms"] / best["mean_ms"])
    report = markdown({"machine": {"cpu": "x", "cores": 2, "threads": 2, "versions": {}, "date": "now"},
                       "rows": rows})
    assert f"{rows[2]['fps']:.1f} FPS" in report


@pytest.mark.emulator
@pytest.mark.parametrize("backend", ["executorch", "onnxruntime", "tvm"])
def test_behavior_head_for_android_matches_eager_under_the_emulator(emulator_sysroot, tmp_path, backend):
    """`make phone` for a chimp network (the transformer: on TVM its attention goes to the edgekit kernel): the
    aarch64 artifact ran inside the emulator on the seeded example inputs and matched eager torch."""
    out = tmp_path / backend
    assert edgekit_main(["compile", "--model", "chimp.behavior", "--target", "android-arm64", "--backend", backend,
                         "--output", str(out)]) == 0
    manifest = edgekit.load(out).manifest
    assert manifest.arch == "aarch64" and manifest.target == "android-arm64"
    verify = manifest.verify
    assert verify["status"] == "pass" and verify["where"].startswith("emulator"), verify
    assert verify["max_abs_err"] < 1e-4 and all(o["ok"] and o["n"] > 0 for o in verify["outputs"]), verify
