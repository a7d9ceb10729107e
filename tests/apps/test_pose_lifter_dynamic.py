"""KTPFormer with a dynamic frame axis (issue #23): one compiled artifact takes every window of MIN_FRAMES..WINDOW
frames, the app feeds a track's frames from its first one instead of padding to the window, and the full window
gives the fixed-window model's output. Compiled on onnxruntime for host only, to stay cheap."""
import json

import numpy as np
import pytest
import torch

from edgekit.apps.pose import app as pose
from edgekit.apps.pose import lifter, model as pose_model, motion, skeleton
from edgekit.compile import pipeline
from edgekit.errors import EdgekitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = (lifter.MIN_FRAMES, 2, 13, lifter.WINDOW)  # the smallest, an even, an odd and the largest window



@pytest.fixture(scope="module")
def ktpformer():
    return lifter.load()  # SDPA attention, as exported


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(cache folder, compile_model calls, (runner, frames, fewest) from lifter_runner on onnxruntime)."""
    root = tmp_path_factory.mktemp("pose-cache")
    calls = []
    real = pipeline.compile_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "compile_model", lambda *a, **k: calls.append(k["output"]) or real(*a, **k))
        yield root, calls, pose_model.lifter_runner("onnxruntime", root)


def windows(frames: int) -> np.ndarray:
    """(1, frames, 17, 2): the causal window of a synthetic track's first `frames` noisy 2D poses, normalised."""
    rng = np.random.default_rng(11)
    sequence = motion.make_sequence(rng, frames=60)
    return skeleton.normalize(motion.detector_noise(sequence.joints_2d, rng)[:frames])[None]


def fixed_window(model: lifter.KTPFormer, x: torch.Tensor) -> torch.Tensor:
    """KTPFormer.forward as it was with a fixed window: every frame position, the whole trajectory graph."""
    b, t, j, _ = x.shape
    x = model.embed(x) + model.frame_embed(x.reshape(b, t, -1)).reshape(b, t, j, -1) + model.joint_position
    for i, (spatial, temporal) in enumerate(zip(model.spatial, model.temporal)):
        x = spatial(x.reshape(b * t, j, -1)).reshape(b, t, j, -1)
        x = x.transpose(1, 2).reshape(b * j, t, -1)
        if i == 0:
            x = x + model.frame_position
            attention = temporal.attention
            h = temporal.norm1(x)
            h = h + attention.prior(torch.matmul(attention.graph + attention.learned_graph, h))
            q, k, v = attention.qkv(h).chunk(3, dim=-1)
            split = lambda z: z.reshape(b * j, t, attention.heads, -1).transpose(1, 2)  # noqa: E731
            y = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
            x = x + attention.out(y.transpose(1, 2).reshape(b * j, t, -1))
            x = x + temporal.mlp(temporal.norm2(x))
        else:
            x = temporal(x)
        x = x.reshape(b, j, t, -1).transpose(1, 2)
    out = model.head(model.norm(x))
    return out - out[..., :1, :]


def test_full_window_is_the_fixed_window_output(ktpformer):
    x = torch.from_numpy(windows(lifter.WINDOW))
    with torch.no_grad():
        assert torch.equal(ktpformer(x), fixed_window(ktpformer, x))


def test_shorter_windows_use_the_last_positions(ktpformer):
    """A T-frame window is the full window's last T frames as far as positions and the trajectory graph go: with
    the temporal blocks fed the same T tokens, the full-window position table sliced at -T gives the output."""
    x = torch.from_numpy(windows(9))
    seen = []
    hook = ktpformer.temporal[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            ktpformer(x)
    finally:
        hook.remove()
    with torch.no_grad():
        spatial = ktpformer.embed(x) + ktpformer.frame_embed(x.reshape(1, 9, -1)).reshape(1, 9, 17, -1) \
            + ktpformer.joint_position
        spatial = ktpformer.spatial[0](spatial.reshape(9, 17, -1)).reshape(1, 9, 17, -1)
        tokens = spatial.transpose(1, 2).reshape(17, 9, -1) + ktpformer.frame_position[:, -9:]
    torch.testing.assert_close(seen[0], tokens, rtol=0, atol=0)


def test_one_artifact_matches_eager_at_every_frame_count(compiled, ktpformer):
    root, calls, (run, frames, fewest) = compiled
    assert (frames, fewest) == (lifter.WINDOW, lifter.MIN_FRAMES)
    [artifact] = [p for p in root.iterdir() if p.is_dir()]
    spec = json.loads((artifact / "manifest.json").read_text())["inputs"][0]
    assert spec["dynamic"] == {"1": {"name": "frames", "min": lifter.MIN_FRAMES, "max": lifter.WINDOW}}
    errors = {}
    for t in FRAMES:
        x = windows(t)
        with torch.no_grad():
            expected = ktpformer(torch.from_numpy(x)).numpy()
        out = run(x)[0]
        assert out.shape == (1, t, 17, 3)
        errors[t] = float(np.abs(out - expected).max())
    print("max abs error, onnxruntime vs eager, per T:", errors)
    assert max(errors.values()) < 1e-4, errors
    with torch.no_grad():  # the full window: the fixed-window model's output
        old = fixed_window(ktpformer, torch.from_numpy(windows(lifter.WINDOW))).numpy()
    np.testing.assert_allclose(run(windows(lifter.WINDOW))[0], old, atol=1e-4, rtol=0)
    again = pose_model.lifter_runner("onnxruntime", root)[0]  # as the next `pose run` would: the cached artifact
    np.testing.assert_allclose(again(windows(5))[0], run(windows(5))[0], atol=0, rtol=0)
    assert len(calls) == 1


def test_windows_above_the_range_are_refused(compiled, ktpformer):
    _, _, (run, frames, _) = compiled
    too_long = np.zeros((1, frames + 1, 17, 2), np.float32)
    with pytest.raises(EdgekitError, match=rf"outside the range {lifter.MIN_FRAMES}\.\.{frames}"):
        run(too_long)
    with pytest.raises(EdgekitError, match=rf"window of {frames + 1} frames; it takes {lifter.MIN_FRAMES}\.\.{frames}"):
        ktpformer(torch.from_numpy(too_long))


def test_track_lifter_feeds_the_frames_it_has(compiled, ktpformer):
    """From a track's first frame: windows of 1, 2, ... frames, then the last WINDOW; each person's joints are the
    eager model's last-frame output on the same window; one compile for all of them."""
    _, calls, (run, frames, fewest) = compiled
    shapes = []
    lift = pose.TrackLifter(lambda w: shapes.append(w.shape[1]) or run(w), frames, fewest)
    blaze = np.random.default_rng(13).normal(200, 40, (frames + 3, 33, 2))  # BlazePose keypoints, pixels
    for i in range(len(blaze)):
        person = pose.Person(np.concatenate([blaze[i], np.ones((33, 1))], -1), 1.0, None, None, track=0)
        [joints] = lift([person])
        window = np.stack([skeleton.from_blazepose(p) for p in blaze[max(0, i + 1 - frames):i + 1]])
        with torch.no_grad():
            expected = ktpformer(torch.from_numpy(skeleton.normalize(window)[None]))[0, -1].numpy()
        np.testing.assert_allclose(joints, expected, atol=1e-4, rtol=0)
    assert shapes == list(range(1, frames + 1)) + [frames] * 3 and len(calls) == 1


def test_fixed_window_lifters_are_still_padded():
    seen = []
    lift = pose.TrackLifter(lambda w: seen.append(w.shape[1]) or [np.zeros(w.shape[:3] + (3,))], 5, 3)
    person = pose.Person(np.ones((33, 3)), 1.0, None, None, track=0)
    for _ in range(6):
        lift([person])
    assert seen == [3, 3, 3, 4, 5, 5]
    with pytest.raises(EdgekitError, match="min_frames 6 must be in 1..frames"):
        pose.TrackLifter(lambda w: w, 5, 6)


def test_only_ktpformer_gets_a_dynamic_frame_axis():
    assert pose_model.lifter_dynamic_shapes(lifter.load(lifter.MLP_WEIGHTS)) is None  # one frame: static
    assert pose_model.lifter_dynamic_shapes(lifter.load()) == f"input0:1=frames:{lifter.MIN_FRAMES}..{lifter.WINDOW}"
