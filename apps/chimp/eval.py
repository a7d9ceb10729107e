"""Tracking and behavior metrics on a ChimpACT-format data set.

HOTA, MOTA and IDF1 come from the `trackeval` package (the MOTChallenge reference code), fed per video with
ids and box IoUs. Behavior mAP is frame-level: in each frame tracks are matched one-to-one to ground-truth
boxes (IoU >= 0.5, Hungarian); a matched pair scores the track's probabilities against the true labels, a
missed animal scores 0 for each of its labels and an unmatched track counts its probabilities as false
positives. AP per behavior with sklearn's average_precision_score, mean over the behaviors present.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import trackeval
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import average_precision_score

from edgekit.apps.chimp.app import ChimpApp, TrackResult
from edgekit.apps.chimp.data import Dataset, Video
from edgekit.apps.chimp.tracker import iou
from edgekit.apps.progress import track
from edgekit.errors import EdgekitError

BEHAVIOR_IOU = 0.5


def evaluate(make_app: Callable[[], ChimpApp], dataset: Dataset, on_video=None) -> dict:
    """Run a fresh app over every video; returns the metrics (fractions in [0, 1]) and the throughput. `on_video`
    gets each video's own figures (name, frames, HOTA, MOTA, IDF1) as it is done."""
    if not dataset.videos:
        raise EdgekitError("the data set has no videos. Check annotations.json.")
    if not all(name in dataset.behaviors for name in make_app().behaviors):
        raise EdgekitError(f"the model's behaviors do not all appear in the data set's {dataset.behaviors}.")
    quiet = {"PRINT_CONFIG": False}
    hota, clear, identity = (trackeval.metrics.HOTA(quiet), trackeval.metrics.CLEAR(quiet),
                             trackeval.metrics.Identity(quiet))
    per_video = {m: {} for m in ("hota", "clear", "identity")}
    truth, scores, elapsed, frames = [], [], 0.0, 0
    for number, video in enumerate(dataset.videos, 1):
        app = make_app()
        predictions = []
        for i in track(range(len(video)), f"chimp eval: video {number}/{len(dataset.videos)}", unit="frames"):
            image = video.read(i)
            start = time.perf_counter()
            predictions.append(app(image))
            elapsed += time.perf_counter() - start
        frames += len(video)
        sequence = trackeval_sequence(video, predictions)
        per_video["hota"][video.name] = hota.eval_sequence(sequence)
        per_video["clear"][video.name] = clear.eval_sequence(sequence)
        per_video["identity"][video.name] = identity.eval_sequence(sequence)
        t, s = behavior_pairs(video, predictions, dataset.behaviors, app.behaviors)
        truth.append(t), scores.append(s)
        if on_video:
            on_video({"video": video.name, "frames": len(video),
                      "HOTA": float(np.mean(per_video["hota"][video.name]["HOTA"])),
                      "MOTA": float(per_video["clear"][video.name]["MOTA"]),
                      "IDF1": float(per_video["identity"][video.name]["IDF1"])})
    hota_all = hota.combine_sequences(per_video["hota"])
    clear_all = clear.combine_sequences(per_video["clear"])
    identity_all = identity.combine_sequences(per_video["identity"])
    per_behavior = behavior_ap(np.concatenate(truth), np.concatenate(scores), dataset.behaviors)
    return {"HOTA": float(np.mean(hota_all["HOTA"])), "DetA": float(np.mean(hota_all["DetA"])),
            "AssA": float(np.mean(hota_all["AssA"])), "MOTA": float(clear_all["MOTA"]),
            "IDF1": float(identity_all["IDF1"]), "IDSW": int(clear_all["IDSW"]),
            "behavior_mAP": float(np.mean(list(per_behavior.values()))) if per_behavior else float("nan"),
            "behavior_AP": per_behavior, "videos": len(dataset.videos), "frames": frames,
            "fps": frames / elapsed}


def trackeval_sequence(video: Video, predictions: list[list[TrackResult]]) -> dict:
    """One video in trackeval's per-sequence form: ids renumbered from 0, IoU similarity per frame."""
    gt_index = {t: i for i, t in enumerate(sorted({int(t) for ids in video.track_ids for t in ids}))}
    tr_index = {t: i for i, t in enumerate(sorted({r.track_id for frame in predictions for r in frame}))}
    tracked = [np.array([r.box for r in frame]).reshape(-1, 4) for frame in predictions]
    return {"num_timesteps": len(video), "num_gt_ids": len(gt_index), "num_tracker_ids": len(tr_index),
            "num_gt_dets": sum(len(b) for b in video.boxes), "num_tracker_dets": sum(len(b) for b in tracked),
            "gt_ids": [np.array([gt_index[int(t)] for t in ids], int) for ids in video.track_ids],
            "tracker_ids": [np.array([tr_index[r.track_id] for r in frame], int) for frame in predictions],
            "similarity_scores": [iou(g, p) for g, p in zip(video.boxes, tracked)]}


def behavior_pairs(video: Video, predictions, data_labels: list[str], model_labels: list[str]):
    """(truth, scores) rows, columns in the data set's label order, as the module docstring describes."""
    columns = [model_labels.index(name) if name in model_labels else None for name in data_labels]
    truth, scores = [], []
    for gt_boxes, gt_labels, frame in zip(video.boxes, video.behaviors, predictions):
        probs = np.array([[r.behaviors[model_labels[c]] if c is not None else 0.0 for c in columns]
                          for r in frame]).reshape(-1, len(data_labels))
        boxes = np.array([r.box for r in frame]).reshape(-1, 4)
        overlap = iou(gt_boxes, boxes)
        rows, cols = linear_sum_assignment(-overlap)
        keep = overlap[rows, cols] >= BEHAVIOR_IOU
        rows, cols = rows[keep], cols[keep]
        missed = np.setdiff1d(np.arange(len(gt_boxes)), rows)
        spurious = np.setdiff1d(np.arange(len(boxes)), cols)
        truth += [gt_labels[rows], gt_labels[missed], np.zeros((len(spurious), len(data_labels)))]
        scores += [probs[cols], np.zeros((len(missed), len(data_labels))), probs[spurious]]
    return np.concatenate(truth), np.concatenate(scores)


def behavior_ap(truth: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, float]:
    """AP per behavior that has at least one positive."""
    return {name: float(average_precision_score(truth[:, k], scores[:, k]))
            for k, name in enumerate(labels) if truth[:, k].any()}
