"""3D lifting on held-out synthetic sequences: MPJPE and temporal jitter, KTPFormer vs the single-frame MLP.

Every frame of a sequence is lifted the way `edgekit pose run` lifts it: from a causal window of the last
`model.frames` 2D poses (the first frame repeated before the start), reading the window's last output.
"""

from collections.abc import Callable

import numpy as np
import torch

from edgekit.apps.pose import motion
from edgekit.apps.pose.skeleton import normalize
from edgekit.apps.progress import track
from edgekit.apps.runners import eager

EVAL_SEED = 20_240_917  # a generator stream of its own: training (seed 0, ...) never sees these sequences
Lift = Callable[[np.ndarray], np.ndarray]  # (B, T, 17, 2) normalised windows -> (B, T, 17, 3)


def held_out(sequences: int = 48, seed: int = EVAL_SEED, frames: int | None = None):
    """[(3D joints (T, 17, 3), noisy 2D (T, 17, 2))] for `sequences` sequences from their own generator."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sequences):
        sequence = motion.make_sequence(rng, frames=frames)
        out.append((sequence.joints_3d, motion.detector_noise(sequence.joints_2d, rng)))
    return out


def causal_windows(points: np.ndarray, frames: int) -> np.ndarray:
    """(T, 17, C) -> (T, frames, 17, C): window t ends at frame t; frames before 0 repeat frame 0."""
    index = np.clip(np.arange(len(points))[:, None] + np.arange(1 - frames, 1)[None], 0, None)
    return points[index]


def lift_sequence(lift: Lift, frames: int, points_2d: np.ndarray, batch: int = 256) -> np.ndarray:
    """(T, 17, 2) pixels -> (T, 17, 3): each frame from its causal window's last output."""
    windows = normalize(causal_windows(points_2d, frames))
    return np.concatenate([lift(windows[i:i + batch])[:, -1] for i in range(0, len(windows), batch)])


def torch_lift(model: torch.nn.Module) -> Lift:
    run = eager(model)
    return lambda x: run(x)[0]


def mpjpe(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-joint position error in mm (both root-relative, metres)."""
    return float(np.linalg.norm(predicted - truth, axis=-1).mean() * 1000)


def acceleration(joints: np.ndarray) -> np.ndarray:
    """|x[t+1] - 2 x[t] + x[t-1]| per frame and joint, mm/frame^2."""
    return np.linalg.norm(joints[2:] - 2 * joints[1:-1] + joints[:-2], axis=-1) * 1000


def evaluate(lifters: dict[str, tuple[Lift, int]], data) -> dict:
    """{name: {mpjpe_mm, jitter_mm_per_frame2, acceleration_error_mm_per_frame2}} over `data` (from held_out),
    plus the ground truth's own mean acceleration. lifters: name -> (lift, window frames)."""
    results = {}
    for name, (lift, frames) in lifters.items():
        errors, jitter, accel_error = [], [], []
        for truth, points_2d in track(data, f"pose eval-3d: {name}", unit="sequences"):
            predicted = lift_sequence(lift, frames, points_2d)
            errors.append(np.linalg.norm(predicted - truth, axis=-1).ravel() * 1000)
            jitter.append(acceleration(predicted).ravel())
            accel_error.append(np.linalg.norm(np.diff(predicted - truth, 2, axis=0), axis=-1).ravel() * 1000)
        results[name] = {"mpjpe_mm": round(float(np.concatenate(errors).mean()), 2),
                         "jitter_mm_per_frame2": round(float(np.concatenate(jitter).mean()), 2),
                         "acceleration_error_mm_per_frame2": round(float(np.concatenate(accel_error).mean()), 2)}
    results["ground_truth"] = {"jitter_mm_per_frame2": round(float(np.concatenate(
        [acceleration(truth).ravel() for truth, _ in data]).mean()), 2)}
    results["data"] = {"sequences": len(data), "frames": int(sum(len(t) for t, _ in data))}
    return results
