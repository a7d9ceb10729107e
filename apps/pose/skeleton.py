"""The 17-joint Human3.6M skeleton the 3D lifter works on, and its mapping from BlazePose's 33 keypoints.

Joint semantics follow what BlazePose can see: the root is the midpoint of the hips, the thorax the midpoint
of the shoulders, the spine the midpoint of those two, "nose" (H3.6M's neck/nose joint) BlazePose's nose and
"head" the midpoint of the ears. The synthetic skeleton (motion.py) places its joints the same way.
"""

import numpy as np

NUM_JOINTS = 17
NAMES = ("root", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "spine",
         "thorax", "nose", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow",
         "right_wrist")
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
BONES = tuple((parent, child) for child, parent in enumerate(PARENTS) if parent >= 0)
# Joint i of the left side mirrors joint MIRROR[i] of the right side.
MIRROR = (0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13)

# Each H3.6M joint as the mean of these BlazePose keypoints (11/12 shoulders, 23/24 hips, 7/8 ears).
FROM_BLAZEPOSE = ((23, 24), (24,), (26,), (28,), (23,), (25,), (27,), (11, 12, 23, 24), (11, 12), (0,), (7, 8),
                  (11,), (13,), (15,), (12,), (14,), (16,))


def from_blazepose(keypoints: np.ndarray) -> np.ndarray:
    """(..., 33, C) BlazePose keypoints -> (..., 17, C) H3.6M joints (coordinates and visibility averaged)."""
    keypoints = np.asarray(keypoints)
    if keypoints.shape[-2] != 33:
        raise ValueError(f"expected 33 BlazePose keypoints on axis -2, got shape {keypoints.shape}")
    return np.stack([keypoints[..., list(ids), :].mean(axis=-2) for ids in FROM_BLAZEPOSE], axis=-2)


def adjacency() -> np.ndarray:
    """(17, 17) symmetric skeleton adjacency with self loops."""
    a = np.eye(NUM_JOINTS, dtype=np.float32)
    for i, j in BONES:
        a[i, j] = a[j, i] = 1
    return a


def normalize(window: np.ndarray) -> np.ndarray:
    """(..., T, 17, 2) pixels -> the lifters' float32 input. Every joint but the root relative to its frame's
    root, the root relative to the last frame's root (its trajectory), all in units of the window's median
    root-to-joint distance (a scale that a few outlier joints do not move). Each joint token so carries the
    frame's root-relative pose directly; a single frame reduces to root-relative coordinates."""
    window = np.asarray(window, np.float64)
    root = window[..., :1, :]
    relative = window - root
    relative[..., :1, :] = root - window[..., -1:, :1, :]
    spread = np.linalg.norm(relative[..., 1:, :], axis=-1)
    scale = np.median(spread.reshape(spread.shape[:-2] + (-1,)), axis=-1)[..., None, None, None]
    return (relative / np.maximum(scale, 1e-6)).astype(np.float32)
