"""Procedural chimpanzee-like videos with exact ground truth, written in the ChimpACT layout (see data.py).

Each agent is a dark, fur-textured articulated body (torso, head with a face patch, four two-segment limbs)
whose pose and motion follow a behavior state machine: resting (still, folded), moving (quadruped gait
towards a goal), climbing (upright, vertical motion, alternating arms), playing (fast, erratic, flailing)
and grooming (two agents drift together and stay close and slow). Agents overlap in depth order, ropes
occlude them, the camera shakes, blurs and adds noise, and now and then spoils a single frame (heavy blur,
an exposure dip). Everything is drawn from one numpy Generator, so a seed fixes the whole data set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

BEHAVIORS = ("moving", "resting", "climbing", "playing", "grooming")
# Labels each motion state emits (multi-label: playing is also moving).
STATE_LABELS = {"moving": ("moving",), "resting": ("resting",), "climbing": ("climbing",),
                "playing": ("playing", "moving"), "grooming": ("grooming",)}
STATE_WEIGHTS = {"moving": 0.3, "resting": 0.25, "climbing": 0.15, "playing": 0.15, "grooming": 0.15}
VERSION = 2        # of the renderer: a cached training set from another version is rendered again
MIN_VISIBLE = 0.25  # agents less visible than this are not annotated (as annotators skip them)
MARGIN = 24         # background border that camera shake may reveal
GLITCH_RATE = 0.12  # frames the camera spoils for a moment (see _glitch): what a clip's other frames fix


@dataclass
class Agent:
    track_id: int
    pos: np.ndarray          # body centre, image pixels
    size: float              # body height in pixels
    fur: np.ndarray          # RGB
    face: np.ndarray         # RGB, an identity cue
    texture: np.ndarray      # fur brightness pattern, (2 * size)^2, fixed per agent
    state: str = "resting"
    timer: int = 0
    vel: np.ndarray = field(default_factory=lambda: np.zeros(2))
    goal: np.ndarray = field(default_factory=lambda: np.zeros(2))
    partner: "Agent | None" = None
    speed: float = 0.0       # pixels per frame of the current state
    phase: float = 0.0       # gait phase
    facing: float = 1.0      # +1 right, -1 left

    def labels(self) -> tuple[str, ...]:
        if self.state == "grooming" and not self.close_to_partner():
            return ("moving",)
        return STATE_LABELS[self.state]

    def close_to_partner(self) -> bool:
        return self.partner is not None and np.linalg.norm(self.pos - self.partner.pos) < 0.9 * self.size


def write_dataset(out: Path, videos: int, seed: int, frames: int = 64, size: tuple[int, int] = (320, 256)) -> Path:
    """Render `videos` clips of `frames` frames (width, height = size) under out/ and write
    out/annotations.json. Returns the annotation path."""
    rng = np.random.default_rng(seed)
    coco = {"info": {"description": f"edgekit synthetic chimpanzees, seed {seed}", "version": VERSION,
                     "seed": seed, "videos": videos, "frames": frames},
            "videos": [], "images": [], "annotations": [],
            "categories": [{"id": 1, "name": "chimpanzee"}],
            "behavior_categories": [{"id": i, "name": n} for i, n in enumerate(BEHAVIORS)]}
    for v in range(videos):
        name = f"synth_{seed}_{v:03d}"
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
        coco["videos"].append({"id": v, "name": name, "width": size[0], "height": size[1], "fps": 25})
        for t, (frame, annots) in enumerate(render_video(rng, frames, size)):
            image_id = len(coco["images"])
            file_name = f"images/{name}/{t:06d}.png"
            cv2.imwrite(str(out / file_name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            coco["images"].append({"id": image_id, "video_id": v, "frame_id": t, "file_name": file_name,
                                   "width": size[0], "height": size[1]})
            for a in annots:
                coco["annotations"].append({"id": len(coco["annotations"]), "image_id": image_id, "video_id": v,
                                            "category_id": 1, "iscrowd": 0, **a})
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def render_video(rng: np.random.Generator, frames: int, size: tuple[int, int]):
    """Yield (RGB frame, annotations) per frame; annotations carry bbox [x, y, w, h], instance_id,
    behaviors (ids into BEHAVIORS) and visibility."""
    width, height = size
    background = _background(rng, width + 2 * MARGIN, height + 2 * MARGIN)
    ropes = _ropes(rng, width, height)
    agents = [_agent(rng, i, width, height) for i in range(rng.integers(2, 6))]
    noise_sigma = rng.uniform(2, 8)
    shake, gain = np.zeros(2), 1.0
    for _ in range(frames):
        for agent in agents:
            _step(rng, agent, agents, width, height)
        shake = np.clip(shake + rng.normal(0, 1.0, 2), -MARGIN + 1, MARGIN - 1)
        gain = float(np.clip(gain + rng.normal(0, 0.02), 0.8, 1.2))
        dx, dy = np.round(shake).astype(int)
        frame = background[MARGIN + dy:MARGIN + dy + height, MARGIN + dx:MARGIN + dx + width].astype(np.float32)
        owner = np.full((height, width), -1, np.int32)
        drawn = {}
        for agent in sorted(agents, key=lambda a: a.pos[1] + a.size / 2):  # lower on screen = nearer
            drawn[agent.track_id] = _composite(frame, owner, agent)
        frame = _draw_ropes(frame, owner, ropes)
        yield _camera(rng, frame * gain, noise_sigma), _annotations(agents, drawn, owner)


def _annotations(agents, drawn, owner) -> list[dict]:
    out = []
    for agent in agents:
        box, area = drawn[agent.track_id]
        if area == 0 or (owner == agent.track_id).sum() < MIN_VISIBLE * area:
            continue
        x1, y1, x2, y2 = box
        out.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "instance_id": agent.track_id,
                    "behaviors": [BEHAVIORS.index(b) for b in agent.labels()],
                    "visibility": round(float((owner == agent.track_id).sum() / area), 3)})
    return out


# ---- motion -------------------------------------------------------------------------------------------------

def _agent(rng, track_id, width, height) -> Agent:
    size = rng.uniform(0.2, 0.34) * height
    tex = rng.normal(0, 1, (int(2 * size), int(2 * size))).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), sigmaX=0.6, sigmaY=2.0)  # streaks read as fur
    return Agent(track_id, pos=np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.2, 0.85) * height]),
                 size=size, fur=rng.uniform(15, 45) * np.array([1.0, rng.uniform(0.85, 1), rng.uniform(0.75, 1)]),
                 face=np.array([rng.uniform(120, 200), rng.uniform(90, 150), rng.uniform(70, 120)]),
                 texture=0.45 * tex / tex.std())


def _step(rng, agent: Agent, agents, width, height) -> None:
    agent.timer -= 1
    if agent.timer <= 0:
        _new_state(rng, agent, agents, width, height)
    speed = np.linalg.norm(agent.vel)
    if agent.state == "moving":
        agent.vel = 0.8 * agent.vel + 0.2 * _towards(agent.pos, agent.goal, agent.speed)
    elif agent.state == "playing" and rng.random() < 0.25:  # erratic: a new direction every few frames
        agent.vel = rng.normal(0, 1, 2) * agent.speed
    elif agent.state == "grooming" and agent.partner is not None:
        agent.vel = np.zeros(2) if agent.close_to_partner() else _towards(agent.pos, agent.partner.pos, 0.6)
    elif agent.state == "climbing":
        agent.vel = np.array([0.0, agent.speed])
    elif agent.state == "resting":
        agent.vel = rng.normal(0, 0.1, 2)
    agent.pos = agent.pos + agent.vel
    low, high = np.array([0.05 * width, 0.15 * height]), np.array([0.95 * width, 0.9 * height])
    bounced = (agent.pos < low) | (agent.pos > high)
    agent.vel = np.where(bounced, -agent.vel, agent.vel)
    if agent.state == "climbing" and bounced[1]:
        agent.speed = -agent.speed
    agent.pos = np.clip(agent.pos, low, high)
    if abs(agent.vel[0]) > 0.3:
        agent.facing = float(np.sign(agent.vel[0]))
    agent.phase += 0.15 + 0.12 * max(speed, np.linalg.norm(agent.vel))


def _new_state(rng, agent: Agent, agents, width, height) -> None:
    if agent.partner is not None:  # a grooming pair splits up together
        agent.partner.partner, agent.partner.timer = None, 0
        agent.partner = None
    states = list(STATE_WEIGHTS)
    state = states[rng.choice(len(states), p=list(STATE_WEIGHTS.values()))]
    scale = height / 256
    agent.timer = int(rng.integers(20, 60))
    if state == "grooming":
        free = [a for a in agents if a is not agent and a.partner is None]
        if not free:
            state = "resting"
        else:
            mate = min(free, key=lambda a: np.linalg.norm(a.pos - agent.pos))
            agent.partner, mate.partner = mate, agent
            mate.state, mate.timer = "grooming", agent.timer
    agent.state = state
    agent.speed = {"moving": rng.uniform(1.0, 2.2), "playing": rng.uniform(2.5, 4.5),
                   "climbing": rng.choice([-1, 1]) * rng.uniform(0.8, 1.6)}.get(state, 0.0) * scale
    agent.goal = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(0.15, 0.9) * height])


def _towards(pos, goal, speed) -> np.ndarray:
    delta = goal - pos
    dist = np.linalg.norm(delta)
    return delta / dist * min(speed, dist) if dist > 1e-6 else np.zeros(2)


# ---- drawing ------------------------------------------------------------------------------------------------

def _pose(agent: Agent) -> tuple[float, list[tuple[float, float]]]:
    """Body tilt (radians from upright) and (upper, lower) limb angles for arm L/R, leg L/R."""
    s = np.sin(agent.phase)
    if agent.state == "moving" or (agent.state == "grooming" and not agent.close_to_partner()):
        return 1.1 * agent.facing, [(0.6 * s, 0.2), (-0.6 * s, 0.2), (-0.6 * s, -0.2), (0.6 * s, -0.2)]
    if agent.state == "climbing":
        return 0.0, [(2.6 + 0.5 * s, 0.3), (-2.6 + 0.5 * s, -0.3), (0.4 - 0.3 * s, 0.6), (-0.4 - 0.3 * s, -0.6)]
    if agent.state == "playing":
        return 0.8 * np.sin(0.7 * agent.phase), [(1.5 * s, s), (-1.8 * s, -s), (0.9 * s, 0.5), (-0.9 * s, -0.5)]
    if agent.state == "grooming":  # one arm reaches to the partner and strokes
        reach = 1.6 * agent.facing + 0.3 * s
        return 0.0, [(reach, 0.4), (-0.3, 0.8), (1.2, 1.8), (-1.2, -1.8)]
    return 0.0, [(0.4, 0.9), (-0.4, -0.9), (1.3, 1.9), (-1.3, -1.9)]  # resting: folded, seated


def _agent_mask(agent: Agent) -> tuple[np.ndarray, np.ndarray]:
    """Alpha (float, 2*size square around pos) and a face mask."""
    n = agent.texture.shape[0]
    b = agent.size
    mask, face = np.zeros((n, n), np.uint8), np.zeros((n, n), np.uint8)
    tilt, limbs = _pose(agent)
    c = np.array([n / 2, n / 2])
    up = np.array([np.sin(tilt), -np.cos(tilt)])
    side = np.array([-up[1], up[0]])
    cv2.ellipse(mask, _pt(c), (int(0.2 * b), int(0.3 * b)), np.degrees(tilt), 0, 360, 255, -1)
    head = c + 0.42 * b * up + 0.05 * b * agent.facing * side
    cv2.circle(mask, _pt(head), int(0.14 * b), 255, -1)
    cv2.ellipse(face, _pt(head + 0.05 * b * agent.facing * side), (int(0.07 * b), int(0.09 * b)),
                np.degrees(tilt), 0, 360, 255, -1)
    joints = [c + 0.22 * b * up + 0.14 * b * side, c + 0.22 * b * up - 0.14 * b * side,
              c - 0.22 * b * up + 0.12 * b * side, c - 0.22 * b * up - 0.12 * b * side]
    for root, (upper, lower) in zip(joints, limbs):
        base = tilt + np.pi  # limbs hang down from the body axis
        elbow = root + 0.26 * b * np.array([np.sin(base + upper), -np.cos(base + upper)])
        hand = elbow + 0.24 * b * np.array([np.sin(base + upper + lower), -np.cos(base + upper + lower)])
        cv2.line(mask, _pt(root), _pt(elbow), 255, max(2, int(0.1 * b)), cv2.LINE_AA)
        cv2.line(mask, _pt(elbow), _pt(hand), 255, max(2, int(0.08 * b)), cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255, face.astype(bool) & (mask > 0)


def _pt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _composite(frame, owner, agent: Agent) -> tuple[list[float], int]:
    """Draw agent into frame (in place), mark its pixels in owner; returns its box [x1, y1, x2, y2] clipped
    to the frame and its mask area."""
    alpha, face = _agent_mask(agent)
    n = alpha.shape[0]
    x0, y0 = int(round(agent.pos[0])) - n // 2, int(round(agent.pos[1])) - n // 2
    h, w = owner.shape
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return [0, 0, 0, 0], 0
    sl = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    a = alpha[sl][..., None]
    color = agent.fur * (1 + agent.texture[sl])[..., None]
    color[face[sl]] = agent.face
    region = frame[fy0:fy1, fx0:fx1]
    region[:] = (1 - a) * region + a * color
    solid = alpha[sl] > 0.5
    owner[fy0:fy1, fx0:fx1][solid] = agent.track_id
    ys, xs = np.nonzero(solid)
    if len(xs) == 0:
        return [0, 0, 0, 0], 0
    return [float(fx0 + xs.min()), float(fy0 + ys.min()), float(fx0 + xs.max() + 1), float(fy0 + ys.max() + 1)], \
        int((alpha > 0.5).sum())


def _background(rng, width, height) -> np.ndarray:
    base = np.array([[120, 110, 95], [95, 85, 70], [90, 110, 70], [140, 130, 120], [70, 75, 60]])[rng.integers(5)]
    coarse = cv2.resize(rng.normal(0, 1, (height // 32 + 2, width // 32 + 2, 3)).astype(np.float32),
                        (width, height), interpolation=cv2.INTER_CUBIC)
    coarse = coarse.mean(2, keepdims=True) + 0.2 * coarse  # mostly brightness, a little hue
    fine = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.0)[..., None]
    image = base * (1 + 0.25 * coarse + 0.12 * fine)
    for _ in range(rng.integers(2, 6)):  # wooden beams and trunks, some vertical (climbing frames)
        angle = rng.choice([np.pi / 2, rng.uniform(0, np.pi)])
        centre = rng.uniform([0, 0], [width, height])
        d = np.array([np.cos(angle), np.sin(angle)]) * width
        wood = np.array([rng.uniform(90, 150), rng.uniform(70, 110), rng.uniform(40, 70)])
        cv2.line(image, _pt(centre - d), _pt(centre + d), wood.tolist(), int(rng.integers(6, 20)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 3)):  # dark shadows and rocks: dark blobs that are not chimpanzees
        cv2.ellipse(image, _pt(rng.uniform([0, 0], [width, height])), _pt(rng.uniform(10, 35, 2)),
                    rng.uniform(0, 180), 0, 360, (rng.uniform(20, 50),) * 3, -1, cv2.LINE_AA)
    return np.clip(image, 0, 255).astype(np.float32)


def _ropes(rng, width, height) -> list[tuple[np.ndarray, tuple, int]]:
    ropes = []
    for _ in range(rng.integers(1, 5)):
        x = np.linspace(rng.uniform(-0.2, 0.5) * width, rng.uniform(0.5, 1.2) * width, 24)
        sag = rng.uniform(0.05, 0.3) * height
        y = rng.uniform(0, 0.8) * height + sag * (1 - ((x - x.mean()) / (np.ptp(x) / 2)) ** 2)
        ropes.append((np.stack([x, y], 1).astype(np.int32), (rng.uniform(120, 190),) * 3, int(rng.integers(2, 4))))
    return ropes


def _draw_ropes(frame, owner, ropes) -> np.ndarray:
    occluded = np.zeros(owner.shape, np.uint8)
    for points, color, thickness in ropes:
        cv2.polylines(frame, [points], False, color, thickness, cv2.LINE_AA)
        cv2.polylines(occluded, [points], False, 1, thickness)
    owner[occluded > 0] = -1
    return frame


def _camera(rng, frame, sigma) -> np.ndarray:
    if rng.random() < GLITCH_RATE:
        frame, sigma = _glitch(rng, frame, sigma)
    elif rng.random() < 0.15:  # motion blur along a random direction
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        cv2.line(kernel, (0, int(rng.integers(k))), (k - 1, int(rng.integers(k))), 1.0, 1)
        frame = cv2.filter2D(frame, -1, kernel / kernel.sum())
    frame = frame + rng.normal(0, sigma, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _glitch(rng, frame, sigma) -> tuple[np.ndarray, float]:
    """One badly exposed frame as real enclosure footage has them: a bump's heavy motion blur, an exposure
    dip with amplified sensor noise, or a focus hunt."""
    kind = rng.integers(3)
    if kind == 0:
        k = int(rng.integers(11, 20))
        kernel = np.zeros((k, k), np.float32)
        cv2.line(kernel, (0, int(rng.integers(k))), (k - 1, int(rng.integers(k))), 1.0, 1)
        return cv2.filter2D(frame, -1, kernel / kernel.sum()), sigma
    if kind == 1:
        return frame * rng.uniform(0.3, 0.55), sigma + rng.uniform(8, 16)
    return cv2.GaussianBlur(frame, (0, 0), rng.uniform(2.5, 4.0)), sigma
