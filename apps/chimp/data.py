"""ChimpACT-format data: COCO-style video annotations with track ids and behavior labels.

DIR/annotations.json holds the mmtracking CocoVideoDataset fields ChimpACT uses: `videos`, `images`
(video_id, frame_id, file_name relative to DIR), `annotations` (image_id, bbox [x, y, w, h], instance_id as
the track id; `track_id` is read too) plus the behavior labels: `behavior_categories` [{id, name}] and per
annotation `behaviors`, a list of behavior category ids (multi-label). synth.py writes this layout.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgekit.errors import EdgekitError

ANNOTATIONS = "annotations.json"


@dataclass
class Video:
    name: str
    frames: list[Path]            # in frame order
    boxes: list[np.ndarray]       # per frame (n, 4) float x1, y1, x2, y2 in pixels
    track_ids: list[np.ndarray]   # per frame (n,) int
    behaviors: list[np.ndarray]   # per frame (n, num_behaviors) multi-hot float

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, index: int) -> np.ndarray:
        """Frame `index` as RGB uint8."""
        image = cv2.imread(str(self.frames[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise EdgekitError(f"{self.frames[index]}: not a readable image. Check the data set's file_name paths.")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Dataset:
    videos: list[Video]
    behaviors: list[str]   # label names, in the column order of Video.behaviors


def load(root: str | Path) -> Dataset:
    """Read root/annotations.json (see the module docstring)."""
    root = Path(root)
    path = root / ANNOTATIONS
    if not path.is_file():
        raise EdgekitError(f"{path} not found. Point --data at a ChimpACT-style folder (annotations.json + images), "
                           "e.g. one written by `edgekit chimp synth`.")
    try:
        coco = json.loads(path.read_text())
        return _parse(root, coco)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EdgekitError(f"{path}: not a ChimpACT/COCO-video annotation file ({type(exc).__name__}: {exc}). "
                           "It needs videos, images, annotations and behavior_categories.") from None


def _parse(root: Path, coco: dict) -> Dataset:
    categories = sorted(coco["behavior_categories"], key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(categories)}
    per_image = defaultdict(list)
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    per_video = defaultdict(list)
    for image in coco["images"]:
        per_video[image["video_id"]].append(image)
    videos = []
    for video in sorted(coco["videos"], key=lambda v: v["id"]):
        images = sorted(per_video[video["id"]], key=lambda i: i["frame_id"])
        annots = [per_image[i["id"]] for i in images]
        videos.append(Video(
            name=video["name"], frames=[root / i["file_name"] for i in images],
            boxes=[np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in frame)],
                            np.float32).reshape(-1, 4) for frame in annots],
            track_ids=[np.array([a.get("instance_id", a.get("track_id")) for a in frame], np.int64)
                       for frame in annots],
            behaviors=[_multi_hot([a.get("behaviors", []) for a in frame], column) for frame in annots]))
    return Dataset(videos, [c["name"] for c in categories])


def _multi_hot(labels: list[list[int]], column: dict[int, int]) -> np.ndarray:
    out = np.zeros((len(labels), len(column)), np.float32)
    for row, ids in enumerate(labels):
        out[row, [column[i] for i in ids]] = 1.0
    return out
