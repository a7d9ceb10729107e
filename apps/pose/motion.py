"""Synthetic human motion for training and evaluating the 3D lifter: no motion-capture data needed.

    sequence = make_sequence(rng)            # 3D joints (camera frame, metres) and their clean 2D projection
    noisy = detector_noise(sequence.joints_2d, rng)

A kinematic skeleton (the 17 joints of skeleton.py) with adult bone lengths, scaled by a sampled body height,
is driven by joint angles within human joint limits. The angles come from motion primitives (walk, run, arm
swings, waving, boxing, squats, turns on the spot, jumping jacks, bending to reach, kicks, standing idle)
cross-faded over a few seconds each, plus slow random perturbations; the feet are kept on the ground. A static
camera with a sampled field of view, distance, elevation and roll looks at the person; the 2D keypoints get the
errors of a real detector: gaussian jitter, slowly drifting offsets, outliers, joints frozen for a few frames
and left/right swaps.

Frames: the body frame has x to the person's left, y up, z forward; the world has y up and the ground at y = 0;
the camera frame is OpenCV's (x right, y down, z forward), as are the 2D pixel coordinates.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.apps.pose.skeleton import MIRROR, NUM_JOINTS

# Segment lengths in metres for a 1.75 m adult (hip centre to shoulder centre 0.5 m, thigh 0.44 m, ...).
BONES = {"pelvis": 0.13, "thigh": 0.44, "shank": 0.42, "lumbar": 0.25, "thoracic": 0.25, "shoulder": 0.19,
         "upper_arm": 0.29, "forearm": 0.26, "neck": 0.22, "nose_forward": 0.10, "nose_down": 0.03, "ankle": 0.08}
REFERENCE_HEIGHT = 1.75

# Joint limits in degrees. Signs: flexion moves a limb forward (knees: the shank backward), abduction away
# from the body midline, spine flexion bends forward.
LIMITS = {
    "root_pitch": (-10, 10), "root_roll": (-8, 8),
    "lumbar_flex": (-25, 80), "lumbar_bend": (-30, 30), "lumbar_twist": (-35, 35),
    "thorax_flex": (-15, 35), "thorax_bend": (-15, 15), "thorax_twist": (-25, 25),
    "neck_flex": (-45, 60), "neck_bend": (-35, 35), "neck_twist": (-70, 70),
    **{f"{dof}_{side}": limit for side in "lr" for dof, limit in (
        ("hip_flex", (-25, 120)), ("hip_abd", (-20, 50)), ("hip_rot", (-35, 35)), ("knee", (0, 150)),
        ("shoulder_flex", (-60, 180)), ("shoulder_abd", (-30, 170)), ("shoulder_rot", (-80, 80)),
        ("elbow", (0, 150)))},
}
DOFS = tuple(LIMITS)


@dataclass
class Sequence:
    joints_3d: np.ndarray  # (T, 17, 3) camera frame, metres
    joints_2d: np.ndarray  # (T, 17, 2) pixels, noise-free
    fps: float
    image_size: tuple[int, int]  # (width, height)
    motions: tuple[str, ...]


# --- kinematics ---------------------------------------------------------------------------------------------

def _rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """(T, 3, 3) right-handed rotations by `angle` (radians, shape (T,)) about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[..., axis, axis] = 1
    r[..., i, i], r[..., i, j], r[..., j, i], r[..., j, j] = c, -s, s, c
    return r


def _chain(*rotations: np.ndarray) -> np.ndarray:
    out = rotations[0]
    for r in rotations[1:]:
        out = out @ r
    return out


def forward_kinematics(angles: dict[str, np.ndarray], bones: dict[str, float], yaw: np.ndarray) -> np.ndarray:
    """(T, 17, 3) joint positions relative to the root, in a frame with y up, for joint angles in radians."""
    a = angles
    rx, ry, rz = (lambda v, k=k: _rotation(k, v) for k in range(3))
    root = _chain(ry(yaw), rx(a["root_pitch"]), rz(a["root_roll"]))
    down, up = np.array([0.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0])
    joints = np.zeros(yaw.shape + (NUM_JOINTS, 3))

    def place(rotation, offset):
        return np.einsum("tij,j->ti", rotation, offset)

    lumbar = _chain(root, rx(a["lumbar_flex"]), rz(a["lumbar_bend"]), ry(a["lumbar_twist"]))
    spine = place(lumbar, bones["lumbar"] * up)
    thorax_rotation = _chain(lumbar, rx(a["thorax_flex"]), rz(a["thorax_bend"]), ry(a["thorax_twist"]))
    thorax = spine + place(thorax_rotation, bones["thoracic"] * up)
    joints[:, 8] = thorax
    joints[:, 7] = thorax / 2  # the spine joint is the hip-shoulder midpoint, as mapped from BlazePose
    head = _chain(thorax_rotation, rx(a["neck_flex"]), rz(a["neck_bend"]), ry(a["neck_twist"]))
    joints[:, 10] = thorax + place(head, bones["neck"] * up)
    joints[:, 9] = thorax + place(head, np.array([0, bones["neck"] - bones["nose_down"], bones["nose_forward"]]))
    # Limbs: (side sign, hip/shoulder index, knee/elbow, ankle/wrist); left is +x.
    for sign, side, (hip, knee, ankle), (shoulder, elbow, wrist) in ((1, "l", (4, 5, 6), (11, 12, 13)),
                                                                      (-1, "r", (1, 2, 3), (14, 15, 16))):
        joints[:, hip] = place(root, np.array([sign * bones["pelvis"], 0, 0]))
        leg = _chain(root, rz(sign * a[f"hip_abd_{side}"]), rx(-a[f"hip_flex_{side}"]), ry(sign * a[f"hip_rot_{side}"]))
        joints[:, knee] = joints[:, hip] + place(leg, bones["thigh"] * down)
        joints[:, ankle] = joints[:, knee] + place(leg @ rx(a[f"knee_{side}"]), bones["shank"] * down)
        joints[:, shoulder] = thorax + place(thorax_rotation, np.array([sign * bones["shoulder"], 0, 0]))
        arm = _chain(thorax_rotation, rz(sign * a[f"shoulder_abd_{side}"]), rx(-a[f"shoulder_flex_{side}"]),
                     ry(sign * a[f"shoulder_rot_{side}"]))
        joints[:, elbow] = joints[:, shoulder] + place(arm, bones["upper_arm"] * down)
        joints[:, wrist] = joints[:, elbow] + place(arm @ rx(-a[f"elbow_{side}"]), bones["forearm"] * down)
    return joints


def sample_bones(rng: np.random.Generator) -> dict[str, float]:
    """Bone lengths for a sampled body height (1.50-1.95 m) with +-4% per-segment proportions."""
    height = float(np.clip(rng.normal(1.72, 0.09), 1.50, 1.95))
    return {name: length * height / REFERENCE_HEIGHT * rng.uniform(0.96, 1.04) for name, length in BONES.items()}


# --- motion primitives ----------------------------------------------------------------------------------------
# Each maps time (seconds) and a generator to joint angles in degrees (missing DOFs are 0), forward speed (m/s),
# yaw rate (degrees/s) and a jump height (m).

@dataclass
class Motion:
    angles: dict[str, np.ndarray]
    speed: np.ndarray
    yaw_rate: np.ndarray
    jump: np.ndarray


def _motion(t, angles, speed=0.0, yaw_rate=0.0, jump=0.0) -> Motion:
    full = lambda v: np.broadcast_to(np.asarray(v, np.float64), t.shape).copy()  # noqa: E731
    return Motion({k: full(v) for k, v in angles.items()}, full(speed), full(yaw_rate), full(jump))


def _phase(t, rng, low, high):
    return 2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi)


def _gait(t, rng, cadence, hip_amp, knee_amp, arm_amp, elbow, lean, speed_per_cycle):
    f = rng.uniform(*cadence)
    phase = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
    hip, knee, arm = rng.uniform(*hip_amp), rng.uniform(*knee_amp), rng.uniform(*arm_amp)
    angles = {"lumbar_flex": rng.uniform(*lean), "thorax_twist": 6 * np.sin(phase), "neck_flex": rng.uniform(-5, 15)}
    for side, shift in (("l", 0.0), ("r", np.pi)):
        p = phase + shift
        angles[f"hip_flex_{side}"] = 0.35 * hip + hip * np.sin(p)
        angles[f"knee_{side}"] = 5 + knee * np.clip(np.cos(p - 0.3), 0, None) ** 1.5
        angles[f"shoulder_flex_{side}"] = -arm * np.sin(p) + 5
        angles[f"shoulder_abd_{side}"] = rng.uniform(5, 15)
        angles[f"elbow_{side}"] = rng.uniform(*elbow) + 0.3 * arm * (1 - np.sin(p))
    return angles, f * speed_per_cycle * rng.uniform(0.8, 1.2)


def walk(t, rng):
    angles, speed = _gait(t, rng, (0.8, 1.1), (15, 25), (35, 60), (10, 30), (5, 20), (-3, 8), 1.4)
    return _motion(t, angles, speed=speed, yaw_rate=rng.normal(0, 8))


def run(t, rng):
    angles, speed = _gait(t, rng, (1.3, 1.6), (30, 45), (70, 100), (30, 50), (70, 100), (5, 20), 2.4)
    return _motion(t, angles, speed=speed, yaw_rate=rng.normal(0, 8))


def turn(t, rng):
    angles, _ = _gait(t, rng, (0.7, 1.0), (5, 12), (15, 35), (0, 10), (5, 20), (-3, 5), 0.0)
    return _motion(t, angles, yaw_rate=rng.choice([-1, 1]) * rng.uniform(40, 150))


def idle(t, rng):
    angles = {f"{dof}_{s}": rng.uniform(*rng_range) for s in "lr" for dof, rng_range in (
        ("shoulder_flex", (-10, 40)), ("shoulder_abd", (0, 25)), ("elbow", (0, 90)), ("hip_abd", (0, 10)))}
    angles["lumbar_bend"] = 3 * np.sin(_phase(t, rng, 0.1, 0.3))
    angles["neck_twist"] = rng.uniform(-40, 40) + 15 * np.sin(_phase(t, rng, 0.05, 0.2))
    return _motion(t, angles)


def arm_swing(t, rng):
    angles, phase = {}, _phase(t, rng, 0.3, 1.2)
    for side in rng.permutation(["l", "r"])[: rng.integers(1, 3)]:
        p = phase + rng.choice([0, np.pi])
        angles[f"shoulder_flex_{side}"] = rng.uniform(20, 90) + rng.uniform(30, 90) * np.sin(p)
        angles[f"shoulder_abd_{side}"] = rng.uniform(0, 60) + rng.uniform(0, 60) * np.cos(p)
        angles[f"elbow_{side}"] = rng.uniform(0, 60) + rng.uniform(0, 40) * (1 + np.sin(p + 1))
        angles[f"shoulder_rot_{side}"] = rng.uniform(-30, 30)
    angles["thorax_twist"] = rng.uniform(0, 15) * np.sin(phase)
    return _motion(t, angles)


def wave(t, rng):
    side = rng.choice(["l", "r"])
    angles = {f"shoulder_abd_{side}": rng.uniform(110, 160), f"shoulder_flex_{side}": rng.uniform(0, 40),
              f"elbow_{side}": 70 + 40 * np.sin(_phase(t, rng, 1.5, 2.5)), "neck_twist": rng.uniform(-30, 30)}
    return _motion(t, angles)


def boxing(t, rng):
    angles = {"lumbar_flex": rng.uniform(5, 20), "thorax_twist": 15 * np.sin(_phase(t, rng, 0.8, 1.5)),
              "knee_l": rng.uniform(10, 30), "knee_r": rng.uniform(10, 30), "hip_flex_l": rng.uniform(10, 30),
              "hip_flex_r": rng.uniform(0, 20)}
    for side, shift in (("l", 0), ("r", np.pi)):
        punch = np.clip(np.sin(_phase(t, rng, 0.8, 1.6) + shift), 0, None) ** 2
        angles[f"shoulder_flex_{side}"] = 60 + 30 * punch
        angles[f"shoulder_abd_{side}"] = 20 - 10 * punch
        angles[f"elbow_{side}"] = 120 - 110 * punch
    return _motion(t, angles)


def squat(t, rng):
    depth = rng.uniform(0.4, 1.0)
    s = depth * (0.5 - 0.5 * np.cos(_phase(t, rng, 0.2, 0.5)))
    arms = rng.uniform(0, 90)
    angles = {"lumbar_flex": 35 * s, "neck_flex": -15 * s}
    for side in "lr":
        angles |= {f"hip_flex_{side}": 105 * s, f"knee_{side}": 130 * s, f"hip_abd_{side}": 10 + 10 * s,
                   f"shoulder_flex_{side}": arms * s, f"elbow_{side}": rng.uniform(0, 30)}
    return _motion(t, angles)


def jumping_jack(t, rng):
    phase = _phase(t, rng, 0.8, 1.2)
    s = 0.5 - 0.5 * np.cos(phase)
    angles = {}
    for side in "lr":
        angles |= {f"shoulder_abd_{side}": 10 + 150 * s, f"hip_abd_{side}": 2 + 23 * s, f"knee_{side}": 10 + 10 * s,
                   f"elbow_{side}": 10 + 20 * s}
    return _motion(t, angles, jump=rng.uniform(0.03, 0.12) * np.abs(np.sin(phase)))


def bend_reach(t, rng):
    s = 0.5 - 0.5 * np.cos(_phase(t, rng, 0.1, 0.35))
    side = rng.choice(["l", "r"])
    angles = {"lumbar_flex": rng.uniform(40, 80) * s, "thorax_flex": rng.uniform(0, 30) * s,
              "lumbar_twist": rng.uniform(-25, 25) * s, "knee_l": rng.uniform(0, 30) * s,
              "knee_r": rng.uniform(0, 30) * s, "hip_flex_l": 10 * s, "hip_flex_r": 10 * s,
              f"shoulder_flex_{side}": rng.uniform(30, 120) * s, f"elbow_{side}": rng.uniform(0, 40)}
    return _motion(t, angles)


def kick(t, rng):
    side = rng.choice(["l", "r"])
    other = "r" if side == "l" else "l"
    s = np.clip(np.sin(_phase(t, rng, 0.4, 0.9)), 0, None)
    angles = {f"hip_flex_{side}": rng.uniform(50, 100) * s, f"knee_{side}": 60 * s * (1 - s) * 4 + 5,
              f"knee_{other}": rng.uniform(5, 20), "lumbar_flex": -10 * s, "shoulder_abd_l": 30 * s,
              "shoulder_abd_r": 30 * s}
    return _motion(t, angles)


PRIMITIVES: dict[str, Callable] = {f.__name__: f for f in (
    walk, run, turn, idle, arm_swing, wave, boxing, squat, jumping_jack, bend_reach, kick)}


# --- sequences ---------------------------------------------------------------------------------------------------

def _smooth_noise(rng, frames, fps, amplitude, period=2.0) -> np.ndarray:
    """Random slow wobble: a sum of sinusoids with periods around `period` seconds."""
    t = np.arange(frames) / fps
    return sum(amplitude / 2 * np.sin(2 * np.pi * t / (period * rng.uniform(0.5, 2)) + rng.uniform(0, 2 * np.pi))
               for _ in range(3))


def sample_angles(rng: np.random.Generator, frames: int, fps: float) -> tuple[dict, Motion, tuple[str, ...]]:
    """Joint angles (radians, clipped to LIMITS) for a sequence of cross-faded motion primitives."""
    t = np.arange(frames) / fps
    names, starts = [], [0.0]
    while starts[-1] < t[-1]:
        names.append(rng.choice(list(PRIMITIVES)))
        starts.append(starts[-1] + rng.uniform(2.0, 6.0))
    motions = [PRIMITIVES[name](t, rng) for name in names]
    # Each primitive weighs 1 on its own span and fades over 0.6 s at both ends.
    weights = np.stack([np.clip(np.minimum(t - a + 0.3, b + 0.3 - t) / 0.6, 0, 1) for a, b in
                        zip(starts[:-1], starts[1:])]) + 1e-6
    weights /= weights.sum(0)
    blend = lambda field: sum(w * getattr(m, field) for w, m in zip(weights, motions))  # noqa: E731
    angles = {}
    for dof in DOFS:
        value = sum(w * m.angles.get(dof, 0.0) for w, m in zip(weights, motions))
        value = value + _smooth_noise(rng, frames, fps, rng.uniform(2, 10))
        angles[dof] = np.radians(np.clip(value, *LIMITS[dof]))
    return angles, Motion({}, blend("speed"), blend("yaw_rate"), blend("jump")), tuple(names)


def _look_at(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """World-to-camera rotation (rows: camera x right, y down, z forward) for a camera at `eye`."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(np.array([0.0, -1.0, 0.0]), forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return _rotation(2, np.array(roll)) @ rotation


def make_sequence(rng: np.random.Generator, frames: int | None = None, fps: float | None = None) -> Sequence:
    """One synthetic sequence: motion, body, camera all sampled from `rng`."""
    fps = float(fps or rng.choice([10, 15, 24, 25, 30]))
    frames = int(frames or rng.integers(120, 300))
    bones = sample_bones(rng)
    angles, motion, names = sample_angles(rng, frames, fps)
    yaw = np.radians(rng.uniform(0, 360) + np.cumsum(motion.yaw_rate) / fps)
    body = forward_kinematics(angles, bones, yaw)
    ground = -body[:, [3, 6], 1].min(1) + bones["ankle"] + motion.jump
    step = np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], -1) * motion.speed[:, None] / fps
    root = np.cumsum(step, 0)
    root[:, 1] = ground
    world = body + root[:, None]

    # Camera: looks at the middle of the path from a sampled distance/elevation/azimuth, slightly off-centre.
    width = int(rng.choice([640, 768, 1280, 1920]))
    height = int(width * rng.choice([3 / 4, 9 / 16]))
    fov = np.radians(rng.uniform(40, 90))
    focal = width / 2 / np.tan(fov / 2)
    center = np.array([width / 2, height / 2]) + rng.normal(0, 0.02 * width, 2)
    target = world[:, 0].mean(0) + np.array([0, rng.uniform(-0.3, 0.3), 0])
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(-10, 50))
    direction = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    spread = np.ptp(world[:, 0], axis=0).max()
    distance = rng.uniform(3, 10) + spread / 2
    eye = target + distance * direction
    eye[1] = max(eye[1], 0.3)
    rotation = _look_at(eye, target + rng.normal(0, 0.05 * distance, 3), rng.normal(0, np.radians(3)))
    camera = (world - eye) @ rotation.T
    if camera[..., 2].min() < 1.0:  # the person walked past the camera: move it back along its axis
        camera[..., 2] += 1.0 - camera[..., 2].min()
    joints_2d = camera[..., :2] / camera[..., 2:] * focal + center
    return Sequence(camera - camera[:, :1], joints_2d, fps, (width, height), names)


# --- detector-like 2D errors --------------------------------------------------------------------------------------

EXTREMITIES = (3, 6, 13, 16)  # ankles and wrists move fastest and are the least certain
SWAP_PAIRS = (((1, 2, 3), (4, 5, 6)), ((11, 12, 13), (14, 15, 16)))


def detector_noise(points: np.ndarray, rng: np.random.Generator, strength: float | None = None) -> np.ndarray:
    """(T, 17, 2) pixels with a real detector's errors, sized relative to the person's 2D extent per frame:
    gaussian jitter, a slowly drifting offset, outliers, joints frozen for a few frames, left/right swaps.
    `strength` scales everything (default: sampled per sequence in [0.3, 1.5])."""
    frames = points.shape[0]
    strength = rng.uniform(0.3, 1.5) if strength is None else strength
    size = np.linalg.norm(np.ptp(points, axis=1), axis=-1)[:, None, None]  # bounding-box diagonal per frame
    per_joint = np.ones((1, NUM_JOINTS, 1))
    per_joint[:, EXTREMITIES] = 1.6
    noisy = points + rng.normal(0, 0.008 * strength, points.shape) * size * per_joint
    drift = np.zeros_like(points)
    drift_sigma = rng.uniform(0, 0.012) * strength
    for i in range(1, frames):  # AR(1), stationary standard deviation drift_sigma
        drift[i] = 0.85 * drift[i - 1] + rng.normal(0, drift_sigma * np.sqrt(1 - 0.85**2), points.shape[1:])
    noisy += drift * size * per_joint
    outliers = rng.random(points.shape[:2]) < rng.uniform(0, 0.015) * strength
    noisy[outliers] += rng.normal(0, 0.12, (outliers.sum(), 2)) * size[:, :, 0].repeat(NUM_JOINTS, 1)[outliers][:, None]
    starts = np.argwhere(rng.random(points.shape[:2]) < rng.uniform(0, 0.008) * strength)
    for frame, joint in starts:  # the detector holds a joint it lost
        if frame > 0:
            noisy[frame: frame + rng.integers(1, 7), joint] = noisy[frame - 1, joint]
    for frame in np.flatnonzero(rng.random(frames) < rng.uniform(0, 0.004) * strength):
        a, b = SWAP_PAIRS[rng.integers(2)]
        span = slice(frame, frame + rng.integers(1, 5))
        noisy[span, a + b] = noisy[span, b + a]
    return noisy


def mirror(joints: np.ndarray, axis_value: float = 0.0) -> np.ndarray:
    """Left-right mirror image of (..., 17, C) joints about x = axis_value (for augmentation)."""
    out = joints[..., list(MIRROR), :].copy()
    out[..., 0] = 2 * axis_value - out[..., 0]
    return out
