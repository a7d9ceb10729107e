"""The chimp pipeline around two plain callables (detector, behavior head): numpy in, numpy out, so eager
torch and compiled artifacts run the same code.

frame -> resize into a clip of the last `frames` frames -> detector -> heatmap peaks decoded to boxes with
embeddings -> Tracker (tracker.py) -> per track, one behavior step (embedding + box geometry) appended to its
history -> the behavior head over the last TRACK_LEN steps of every track -> per-track behavior probabilities.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import maximum_filter

from edgekit.apps.chimp.model import INPUT_HW, MAX_TRACKS, STRIDE, TRACK_LEN, step_features
from edgekit.apps.chimp.tracker import Tracker, TrackerConfig

Runner = Callable[[np.ndarray], Sequence[np.ndarray]]
MAX_DETECTIONS = 32


@dataclass
class TrackResult:
    track_id: int
    box: np.ndarray                 # x1, y1, x2, y2 in frame pixels
    score: float
    behaviors: dict[str, float]     # label -> probability

    def as_json(self) -> dict:
        return {"track_id": self.track_id, "box": [round(float(v), 1) for v in self.box],
                "score": round(self.score, 3), "behaviors": {k: round(v, 3) for k, v in self.behaviors.items()}}


class ChimpApp:
    """Tracks and behaviors on a stream of RGB frames (uint8, HxWx3) of one video."""

    def __init__(self, detector: Runner, behavior: Runner, behaviors: Sequence[str], frames: int,
                 tracker: TrackerConfig | None = None):
        self.detector, self.behavior, self.behaviors = detector, behavior, list(behaviors)
        self.clip: deque[np.ndarray] = deque(maxlen=frames)
        self.tracker = Tracker(tracker)

    def __call__(self, frame: np.ndarray) -> list[TrackResult]:
        heat, box, embed = self.detector(self._clip(frame))[:3]
        boxes, scores, embeddings = decode(heat[0, 0], box[0], embed[0], frame.shape[1::-1],
                                           self.tracker.config.low_score)
        pairs = self.tracker.update(boxes, scores, embeddings)
        current = np.array([t.box for t, _ in pairs]).reshape(-1, 4)
        for i, (track, det) in enumerate(pairs):
            previous = track.previous if track.previous is not None else track.box
            track.steps.append(step_features(track.box, previous, np.delete(current, i, 0), embeddings[det],
                                             frame.shape[1::-1]))
            while len(track.steps) > TRACK_LEN:
                track.steps.popleft()
        probabilities = self._behaviors([t for t, _ in pairs])
        return [TrackResult(t.track_id, t.box, t.score, dict(zip(self.behaviors, map(float, p))))
                for (t, _), p in zip(pairs, probabilities)]

    def _clip(self, frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, INPUT_HW[::-1], interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        self.clip.append(small.astype(np.float32) / 255)
        while len(self.clip) < self.clip.maxlen:  # a stream's first frame stands in for the frames before it
            self.clip.appendleft(self.clip[0])
        return np.stack(self.clip)[None]

    def _behaviors(self, tracks) -> np.ndarray:
        """Behavior probabilities (len(tracks), classes), MAX_TRACKS tracks per call (the head's static batch)."""
        if not tracks:
            return np.zeros((0, len(self.behaviors)), np.float32)
        sequences = np.stack([np.stack([t.steps[0]] * (TRACK_LEN - len(t.steps)) + list(t.steps)) for t in tracks])
        out = []
        for start in range(0, len(sequences), MAX_TRACKS):
            chunk = sequences[start:start + MAX_TRACKS]
            padded = np.concatenate([chunk, np.zeros((MAX_TRACKS - len(chunk), *chunk.shape[1:]), np.float32)])
            out.append(self.behavior(padded)[0][:len(chunk)])
        return 1 / (1 + np.exp(-np.concatenate(out)))


def decode(heat: np.ndarray, box: np.ndarray, embed: np.ndarray, frame_wh: tuple[int, int], threshold: float):
    """CenterNet decoding: local maxima of the heatmap above threshold (best MAX_DETECTIONS) -> boxes
    (n, 4) in frame pixels, scores (n,), embeddings (n, D)."""
    peaks = (heat == maximum_filter(heat, size=3)) & (heat >= threshold)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-heat[ys, xs])[:MAX_DETECTIONS]
    ys, xs = ys[order], xs[order]
    dx, dy, log_w, log_h = box[:, ys, xs]
    cx, cy = (xs + dx) * STRIDE, (ys + dy) * STRIDE
    w, h = np.exp(log_w) * STRIDE, np.exp(log_h) * STRIDE
    scale = np.array([frame_wh[0] / INPUT_HW[1], frame_wh[1] / INPUT_HW[0]] * 2)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * scale
    return boxes, heat[ys, xs], embed[:, ys, xs].T


def draw(frame: np.ndarray, tracks: Sequence[TrackResult], threshold: float = 0.5) -> np.ndarray:
    """RGB overlay: a box per track in a colour fixed by its id, labelled with the id and its behaviors above
    threshold (the most likely one when none is)."""
    out = frame.copy()
    thickness = max(1, round(frame.shape[0] / 300))
    for t in tracks:
        color = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[(t.track_id * 47) % 180, 220, 255]]]),
                                                    cv2.COLOR_HSV2RGB)[0, 0])
        x1, y1, x2, y2 = (int(round(v)) for v in t.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        likely = [k for k, p in sorted(t.behaviors.items(), key=lambda kv: -kv[1]) if p >= threshold]
        if not likely and t.behaviors:
            likely = [max(t.behaviors, key=t.behaviors.get)]
        label = f"#{t.track_id} " + ", ".join(f"{k} {t.behaviors[k]:.2f}" for k in likely)
        scale = frame.shape[0] / 700
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1, th + 4)
        cv2.rectangle(out, (x1, top - th - 4), (x1 + tw + 4, top), color, -1)
        cv2.putText(out, label, (x1 + 2, top - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
