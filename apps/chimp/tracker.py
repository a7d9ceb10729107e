"""Multi-animal tracking by detection: ByteTrack's two-stage association with appearance embeddings.

Stage 1 matches confident detections to every live track (including ones lost for a while) on a blend of
box overlap with the constant-velocity prediction and embedding similarity, with a motion gate that widens
the longer a track has been lost. Stage 2 lets the tracks seen last frame claim low-score detections
(occluded or blurred animals) by overlap alone. Unmatched confident detections start tentative tracks,
confirmed after a second hit so single-frame false positives never get an id.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

UNMATCHABLE = 1e6


@dataclass
class TrackerConfig:
    high_score: float = 0.4      # stage 1 detections
    low_score: float = 0.15      # stage 2 detections (between low and high)
    new_track_score: float = 0.5
    match_cost: float = 0.65     # stage 1: accept 1 - (iou + cos)/2 below this
    low_iou: float = 0.4         # stage 2: accept overlaps above this
    gate: float = 1.0            # motion gate radius, in predicted box heights, grows with frames lost
    max_lost: int = 30           # frames a lost track is kept for re-identification
    min_hits: int = 2
    velocity_smoothing: float = 0.7
    embedding_momentum: float = 0.9


@dataclass
class Track:
    track_id: int
    box: np.ndarray              # x1, y1, x2, y2 of the last match
    embedding: np.ndarray        # running mean, unit length
    score: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    previous: np.ndarray | None = None   # box before the last match (for behavior velocity)
    hits: int = 1
    lost: int = 0                # frames since the last match
    steps: deque = field(default_factory=deque)   # behavior features, filled by the app

    def predict(self) -> np.ndarray:
        return self.box + self.velocity * (self.lost + 1)


class Tracker:
    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = 0

    def update(self, boxes: np.ndarray, scores: np.ndarray, embeddings: np.ndarray) -> list[tuple[Track, int]]:
        """One frame's detections -> (track, detection index) for the confirmed tracks matched this frame."""
        cfg = self.config
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        matches, unmatched_tracks, unmatched_high = self._associate(self.tracks, high, boxes, embeddings)
        recent = [t for t in unmatched_tracks if t.lost == 0]
        low_matches, _, _ = self._associate(recent, low, boxes, None)
        for track, det in matches + low_matches:
            self._update(track, boxes[det], scores[det], embeddings[det] if det in high else None)
        matched = {id(t) for t, _ in matches + low_matches}
        for track in self.tracks:
            if id(track) not in matched:
                track.lost += 1
        # Tentative tracks that miss a frame were noise; confirmed ones wait max_lost frames to be re-found.
        self.tracks = [t for t in self.tracks if t.lost <= (cfg.max_lost if t.hits >= cfg.min_hits else 0)]
        pairs = matches + low_matches
        for det in unmatched_high:
            if scores[det] >= cfg.new_track_score:
                track = Track(self.next_id, boxes[det].astype(np.float64), embeddings[det], float(scores[det]),
                              hits=cfg.min_hits if self.frame == 0 else 1)  # a stream's first frame is trusted
                self.tracks.append(track)
                self.next_id += 1
                pairs.append((track, int(det)))
        self.frame += 1
        return [(t, d) for t, d in pairs if t.hits >= cfg.min_hits]

    def _associate(self, tracks: list[Track], dets: np.ndarray, boxes: np.ndarray, embeddings: np.ndarray | None):
        """Hungarian matching; embeddings None means overlap only (stage 2)."""
        if not len(tracks) or not len(dets):
            return [], list(tracks), list(dets)
        predicted = np.stack([t.predict() for t in tracks])
        overlap = iou(predicted, boxes[dets])
        if embeddings is None:
            cost = np.where(overlap >= self.config.low_iou, 1 - overlap, UNMATCHABLE)
        else:
            similarity = np.stack([t.embedding for t in tracks]) @ embeddings[dets].T
            cost = 1 - (overlap + np.clip(similarity, 0, 1)) / 2
            cost = np.where(cost < self.config.match_cost, cost, UNMATCHABLE)
            cost[~self._gate(tracks, predicted, boxes[dets])] = UNMATCHABLE
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < UNMATCHABLE
        matches = [(tracks[r], int(dets[c])) for r, c in zip(rows[keep], cols[keep])]
        used_t, used_d = set(rows[keep]), set(cols[keep])
        return (matches, [t for i, t in enumerate(tracks) if i not in used_t],
                [int(d) for j, d in enumerate(dets) if j not in used_d])

    def _gate(self, tracks, predicted, boxes) -> np.ndarray:
        """Detections whose centre lies within the track's motion radius of its predicted centre."""
        distance = np.linalg.norm(_centres(predicted)[:, None] - _centres(boxes)[None], axis=2)
        heights = predicted[:, 3] - predicted[:, 1]
        radius = self.config.gate * heights * (1 + 0.2 * np.array([t.lost for t in tracks]))
        return distance <= radius[:, None]

    def _update(self, track: Track, box: np.ndarray, score: float, embedding: np.ndarray | None) -> None:
        cfg = self.config
        step = (box - track.box) / (track.lost + 1)
        track.velocity = cfg.velocity_smoothing * track.velocity + (1 - cfg.velocity_smoothing) * step
        track.previous, track.box = track.box, box.astype(np.float64)
        track.score, track.lost, track.hits = float(score), 0, track.hits + 1
        if embedding is not None:  # low-score (occluded) detections would blur the identity
            mixed = cfg.embedding_momentum * track.embedding + (1 - cfg.embedding_momentum) * embedding
            track.embedding = mixed / max(np.linalg.norm(mixed), 1e-6)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2
