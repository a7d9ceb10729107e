"""The BlazePose pipeline around two plain callables (detector, landmarker): numpy in, numpy out.

detect persons (SSD anchors, box/keypoint decoding, weighted NMS) -> a rotated square ROI per person from the
detector's hip-centre and body-scale keypoints -> affine-warp the ROI to the landmark model's input -> 33
keypoints projected back to the image -> next frame's ROI from the landmark model's own alignment points, so the
detector only runs to find new persons.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgekit.apps.pose import skeleton
from edgekit.errors import EdgekitError

Model = Callable[[np.ndarray], Sequence[np.ndarray]]

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_KEYPOINTS = 33
# SSD anchor layout of pose_detection.tflite: two anchors per cell at strides 8 and 16, six at stride 32.
ANCHOR_GRID = ((8, 2), (16, 2), (32, 6))
DETECTION_THRESHOLD = 0.5
NMS_IOU = 0.3
PRESENCE_THRESHOLD = 0.5
ROI_SCALE = 1.25  # the ROI is 1.25x the body circle the alignment points describe
SAME_PERSON_IOU = 0.4
TILE_OVERLAP = 1.25  # grid tiles are 25% larger than their cell, so a person on a cell border is whole in one
MAX_AUTO_GRID = 4    # tiles per axis that tiles="auto" uses at most (detector calls grow with rows x cols)
# Skeleton edges between BlazePose keypoints, for drawing.
EDGES = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
         (27, 29), (29, 31), (27, 31), (24, 26), (26, 28), (28, 30), (30, 32), (28, 32), (0, 11), (0, 12))


@dataclass
class Roi:
    """A rotated square in image pixels; rotation (radians) turns the crop's up axis onto the body's."""
    center: np.ndarray
    size: float
    rotation: float

    @classmethod
    def from_alignment(cls, center: np.ndarray, scale_point: np.ndarray) -> "Roi":
        """MediaPipe's alignment: the body circle around `center` through `scale_point`, rotated so the
        centre->scale-point direction points up in the crop."""
        dx, dy = scale_point - center
        rotation = np.pi / 2 - np.arctan2(-dy, dx)
        rotation = (rotation + np.pi) % (2 * np.pi) - np.pi
        return cls(np.asarray(center, np.float64), 2 * np.hypot(dx, dy) * ROI_SCALE, float(rotation))

    def crop_to_image(self, crop_size: int) -> np.ndarray:
        """2x3 affine map from crop pixels to image pixels."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        linear = self.size / crop_size * np.array([[c, -s], [s, c]])
        offset = self.center - linear @ np.full(2, crop_size / 2)
        return np.hstack([linear, offset[:, None]])

    def bounds(self) -> np.ndarray:
        """Axis-aligned box (x0, y0, x1, y1) around the rotated square."""
        corners = _affine(self.crop_to_image(1), np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64))
        return np.concatenate([corners.min(0), corners.max(0)])


@dataclass
class Person:
    keypoints: np.ndarray  # (33, 3): x, y in image pixels, visibility in [0, 1]
    score: float           # the landmark model's pose-presence probability
    roi: Roi               # the crop the keypoints came from
    alignment: np.ndarray  # (2, 2): hip centre and body-scale point, in image pixels
    track: int = -1        # the same number while the person is tracked from frame to frame


class PoseApp:
    """Multi-person BlazePose on a stream of RGB frames (uint8, HxWx3).

    Persons are tracked by their ROI; the detector runs every `detect_every` frames (and whenever nobody is
    tracked) to pick up newcomers. `tiles` is the detector's view of the frame: (rows, cols) splits it into that
    grid, so small, distant persons reach the detector at a usable scale; "auto" (see `detector_views`) looks at
    the whole frame, for near persons, plus a grid sized to the frame, for distant ones.
    """

    def __init__(self, detector: Model, landmarker: Model, max_persons: int = 8, detect_every: int = 5,
                 tiles: tuple[int, int] | str = "auto"):
        if tiles != "auto" and not (len(tiles) == 2 and all(isinstance(n, int) and n > 0 for n in tiles)):
            raise EdgekitError(f"tiles={tiles!r}: expected \"auto\" or (rows, cols) of positive integers, e.g. (3, 4).")
        self.detector, self.landmarker = detector, landmarker
        self.max_persons, self.detect_every, self.tiles = max_persons, detect_every, tiles
        self.anchors = ssd_anchors()
        self.tracked: list[tuple[int, Roi]] = []  # (track number, ROI for the next frame)
        self.frame_index = 0
        self.next_track = 0

    def __call__(self, frame: np.ndarray) -> list[Person]:
        tracks = list(self.tracked)
        if not tracks or self.frame_index % self.detect_every == 0:
            known = [roi for _, roi in tracks]
            for roi in self.detect(frame):
                if not _overlaps_any(roi, known):
                    tracks.append((self.next_track, roi))
                    self.next_track += 1
        self.frame_index += 1
        persons = [self.landmarks(frame, roi, track) for track, roi in tracks]
        persons = [p for p in persons if p.score >= PRESENCE_THRESHOLD]
        persons = _distinct(sorted(persons, key=lambda p: -p.score))[: self.max_persons]
        self.tracked = [(p.track, next_roi(p)) for p in persons]
        return persons

    def detect(self, frame: np.ndarray) -> list[Roi]:
        """Person ROIs found by the detector over its views of the frame; one person seen in several views (tiles
        overlap, and "auto" adds the whole frame) is merged into one detection by the weighted NMS."""
        height, width = frame.shape[:2]
        found = []
        for x0, y0, x1, y1 in detector_views(height, width, self.tiles):
            boxes, keypoints, scores = self._detect_tile(frame[y0:y1, x0:x1])
            if self.tiles == "auto" and (x1 - x0, y1 - y0) != (width, height):
                # A body larger than its tile is one the tile cuts: the detector then guesses its extent (on
                # messi5.jpg a 1900 px ROI from a tile showing part of the player); the whole frame shows it whole.
                keep = roi_sizes(keypoints) <= min(x1 - x0, y1 - y0)
                boxes, keypoints, scores = boxes[keep], keypoints[keep], scores[keep]
            offset = np.array([x0, y0], np.float64)
            found += [(s, b + np.tile(offset, 2), k + offset) for b, k, s in zip(boxes, keypoints, scores)]
        if not found:
            return []
        scores, boxes, keypoints = (np.array(v) for v in zip(*found))
        boxes, keypoints, scores = weighted_nms(boxes, keypoints, scores, NMS_IOU)
        return [Roi.from_alignment(k[0], k[1]) for k in keypoints[: self.max_persons]]

    def _detect_tile(self, tile: np.ndarray):
        image, to_tile = letterbox(tile, DETECTOR_SIZE)
        raw_boxes, raw_scores = self.detector(image[None] / 127.5 - 1)[:2]
        boxes, keypoints, scores = decode_detections(raw_boxes[0], raw_scores[0, :, 0], self.anchors)
        keep = scores >= DETECTION_THRESHOLD
        boxes = _affine(to_tile, boxes[keep].reshape(-1, 2)).reshape(-1, 4)
        return boxes, _affine(to_tile, keypoints[keep]), scores[keep]

    def landmarks(self, frame: np.ndarray, roi: Roi, track: int = -1) -> Person:
        crop_to_image = roi.crop_to_image(LANDMARK_SIZE)
        crop = cv2.warpAffine(frame, crop_to_image, (LANDMARK_SIZE, LANDMARK_SIZE),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        raw, presence = self.landmarker(crop[None].astype(np.float32) / 255)[:2]
        points = raw.reshape(-1, 5)  # 33 body + 2 alignment + 4 unused points: x, y, z, visibility, presence
        xy = _affine(crop_to_image, points[:, :2].astype(np.float64))
        keypoints = np.hstack([xy, _sigmoid(points[:, 3:4])])
        return Person(keypoints[:NUM_KEYPOINTS], float(presence.ravel()[0]), roi, xy[NUM_KEYPOINTS:NUM_KEYPOINTS + 2],
                      track)


class TrackLifter:
    """3D joints per tracked person: the lifter (numpy (1, T, 17, 2) normalised window -> [(1, T, 17, 3)]) runs
    on the person's track so far, at most its last `frames` 2D poses, and the window's last output is the person's
    17 joints (metres, root-relative, camera axes). A lifter that takes `min_frames`..`frames` frames (a dynamic
    frame axis; model.lifter_runner gives both) gets the frames the track has, from its first frame on; a track
    shorter than `min_frames` (default: `frames`, a fixed-window lifter) has its first pose repeated up to it."""

    def __init__(self, lifter: Model, frames: int, min_frames: int | None = None):
        min_frames = frames if min_frames is None else min_frames
        if not 1 <= min_frames <= frames:
            raise EdgekitError(f"TrackLifter: min_frames {min_frames} must be in 1..frames ({frames}).")
        self.lifter, self.frames, self.min_frames = lifter, frames, min_frames
        self.history: dict[int, list[np.ndarray]] = {}

    def __call__(self, persons: Sequence[Person]) -> list[np.ndarray]:
        history, joints = {}, []
        for person in persons:
            past = (self.history.get(person.track, []) + [skeleton.from_blazepose(person.keypoints[:, :2])])
            history[person.track] = past = past[-self.frames:]
            window = np.stack([past[0]] * (self.min_frames - len(past)) + past)
            joints.append(self.lifter(skeleton.normalize(window)[None])[0][0, -1])
        self.history = history  # a track not seen in this frame has ended
        return joints


def roi_sizes(keypoints: np.ndarray) -> np.ndarray:
    """Side of the ROI Roi.from_alignment makes from each detection's keypoints (N, 4, 2)."""
    return 2 * np.linalg.norm(keypoints[:, 1] - keypoints[:, 0], axis=-1) * ROI_SCALE


def auto_grid(height: int, width: int) -> tuple[int, int]:
    """The grid tiles="auto" adds to the whole frame: about one detector input (224 px) per cell, so a tile
    reaches the detector near full resolution (vtest.avi's 768x576: 3x4, tiles of 240x240), at most
    MAX_AUTO_GRID per axis."""
    return (min(MAX_AUTO_GRID, max(1, int(np.ceil(height / DETECTOR_SIZE)))),
            min(MAX_AUTO_GRID, max(1, int(np.ceil(width / DETECTOR_SIZE)))))


def detector_views(height: int, width: int, tiles: tuple[int, int] | str) -> list[tuple[int, int, int, int]]:
    """The frame regions (x0, y0, x1, y1) the detector looks at. (rows, cols): that grid of overlapping tiles,
    as given; "auto": the whole frame (near persons, which a tile would cut) plus auto_grid's tiles (distant
    persons, too small for the detector in the whole frame), or the whole frame alone when it is no larger
    than the detector's input."""
    if tiles == "auto":
        grid = auto_grid(height, width)
        return [(0, 0, width, height)] + ([] if grid == (1, 1) else detector_views(height, width, grid))
    rows, cols = tiles
    tile_h = min(height, int(np.ceil(height / rows * TILE_OVERLAP)))
    tile_w = min(width, int(np.ceil(width / cols * TILE_OVERLAP)))
    return [(int(x0), int(y0), int(x0) + tile_w, int(y0) + tile_h)
            for y0 in np.linspace(0, height - tile_h, rows).astype(int)
            for x0 in np.linspace(0, width - tile_w, cols).astype(int)]


def next_roi(person: Person) -> Roi:
    """The ROI for the next frame from the landmark model's alignment points (hip centre, body-scale point)."""
    return Roi.from_alignment(person.alignment[0], person.alignment[1])


def ssd_anchors() -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], in the detector's output order."""
    centers = []
    for stride, per_cell in ANCHOR_GRID:
        cells = DETECTOR_SIZE // stride
        grid = (np.stack(np.meshgrid(np.arange(cells), np.arange(cells)), -1).reshape(-1, 2) + 0.5) / cells
        centers.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centers)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray):
    """Boxes (x0, y0, x1, y1) and 4 keypoints in detector-input pixels, and sigmoid scores."""
    offsets = anchors * DETECTOR_SIZE
    center, size = raw_boxes[:, :2] + offsets, raw_boxes[:, 2:4]
    boxes = np.hstack([center - size / 2, center + size / 2])
    keypoints = raw_boxes[:, 4:].reshape(-1, 4, 2) + offsets[:, None]
    return boxes, keypoints, _sigmoid(np.clip(raw_scores, -100, 100))


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float):
    """MediaPipe's weighted NMS: each kept detection is the score-weighted mean of the cluster it suppresses."""
    order = np.argsort(-scores)
    kept = []
    while order.size:
        cluster = order[_iou(boxes[order[0]], boxes[order]) > iou_threshold]
        weights = scores[cluster] / scores[cluster].sum()
        kept.append((np.tensordot(weights, boxes[cluster], 1), np.tensordot(weights, keypoints[cluster], 1),
                     scores[order[0]]))
        order = order[~np.isin(order, cluster)]
    boxes, keypoints, scores = (np.array(v) for v in zip(*kept))
    return boxes, keypoints, scores


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale into a size x size square with centred padding; return it and the 2x3 map back to the image."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    pad = (np.array([size, size]) - np.array([width, height]) * scale) / 2
    to_square = np.array([[scale, 0, pad[0]], [0, scale, pad[1]]])
    square = cv2.warpAffine(image, to_square, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return square.astype(np.float32), cv2.invertAffineTransform(to_square)


def draw(frame: np.ndarray, persons: Sequence[Person], min_visibility: float = 0.5) -> np.ndarray:
    """The skeleton overlay on a copy of the frame."""
    out = frame.copy()
    for person in persons:
        points = person.keypoints
        for a, b in EDGES:
            if min(points[a, 2], points[b, 2]) >= min_visibility:
                cv2.line(out, _pixel(points[a]), _pixel(points[b]), (0, 255, 0), 2, cv2.LINE_AA)
        for point in points:
            if point[2] >= min_visibility:
                cv2.circle(out, _pixel(point), 3, (255, 64, 0), -1, cv2.LINE_AA)
    return out


def _pixel(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0])), int(round(point[1]))


def _affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))  # the logistic without exp overflow


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def _overlaps_any(roi: Roi, others: Sequence[Roi]) -> bool:
    return any(_iou(roi.bounds(), other.bounds()[None])[0] > SAME_PERSON_IOU for other in others)


def _distinct(persons: Sequence[Person]) -> list[Person]:
    """Drop persons whose ROI mostly covers a better-scoring one's (two tracks that converged on one body)."""
    kept: list[Person] = []
    for person in persons:
        if not _overlaps_any(person.roi, [k.roi for k in kept]):
            kept.append(person)
    return kept
