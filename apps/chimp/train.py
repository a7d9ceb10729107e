"""Train the chimp detector (heatmap, box, embedding) and then its behavior head on ChimpACT-format data.

    python -m edgekit.apps.chimp.train --data DIR --out weights.pt [--frames 3] [--steps 2000] [--seed 0]

Without --data it trains on synthetic videos in --synth-dir, rendering them first (synth.py, --seed) when
that folder has no annotations.json. Detector losses: CenterNet's focal loss on the heatmap, L1 on box
offset and log size at the centres, and a contrastive identity loss between the embeddings of the same
animals in two clips a few frames apart. The behavior head is then trained on the step features the app
builds while it tracks the training videos with the frozen detector.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edgekit.apps.chimp import data, synth
from edgekit.apps.chimp.app import ChimpApp
from edgekit.apps.chimp.model import INPUT_HW, STRIDE, ChimpModel
from edgekit.apps.chimp.runners import eager
from edgekit.apps.chimp.tracker import iou

EMBED_TEMPERATURE = 0.1
PAIR_GAP = 8   # the second clip of an identity pair starts up to this many frames later


@dataclass
class Clips:
    """One video resized to the detector input, in memory."""
    frames: np.ndarray            # (T, 3, H, W) uint8
    boxes: list[np.ndarray]       # input-pixel boxes per frame
    ids: list[np.ndarray]
    behaviors: list[np.ndarray]


def prepare(video: data.Video) -> Clips:
    h, w = INPUT_HW
    frames, boxes = [], []
    for i in range(len(video)):
        image = video.read(i)
        scale = np.array([w / image.shape[1], h / image.shape[0]] * 2, np.float32)
        frames.append(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA).transpose(2, 0, 1))
        boxes.append(video.boxes[i] * scale)
    return Clips(np.stack(frames), boxes, video.track_ids, video.behaviors)


def clip_at(c: Clips, t: int, frames: int) -> np.ndarray:
    """Frames t-frames+1 .. t, repeating frame 0 before the start (as the app does)."""
    return c.frames[np.clip(np.arange(t - frames + 1, t + 1), 0, None)]


def targets(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian centre heatmap (1, h, w), box regression targets (4, n) and centre cells (n, 2) as (y, x)."""
    h, w = INPUT_HW[0] // STRIDE, INPUT_HW[1] // STRIDE
    heat = np.zeros((1, h, w), np.float32)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / STRIDE
    cells = np.clip(np.floor(centres).astype(int), 0, [w - 1, h - 1])
    sizes = np.maximum(boxes[:, 2:] - boxes[:, :2], 1) / STRIDE
    ys, xs = np.mgrid[0:h, 0:w]
    for (cx, cy), (bw, bh) in zip(cells, sizes):
        sx, sy = max(bw / 6, 0.7), max(bh / 6, 0.7)
        heat[0] = np.maximum(heat[0], np.exp(-((xs - cx) ** 2 / (2 * sx**2) + (ys - cy) ** 2 / (2 * sy**2))))
    box = np.concatenate([centres - cells, np.log(sizes)], 1).T.astype(np.float32)
    return heat, box, cells[:, ::-1]


def focal_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def detector_loss(model, batch) -> torch.Tensor:
    """batch: list of (clip_a, targets_a, ids_a, clip_b, targets_b, ids_b) pairs from the same video."""
    clips = torch.from_numpy(np.stack([p[i] for p in batch for i in (0, 3)])).float() / 255
    heat, box, embed = model(clips)
    loss_heat = loss_box = loss_id = 0.0
    for k, pair in enumerate(batch):
        gathered = []
        for j, (tgt, ids) in enumerate(((pair[1], pair[2]), (pair[4], pair[5]))):
            n = 2 * k + j
            heat_gt, box_gt, cells = tgt
            loss_heat = loss_heat + focal_loss(heat[n], torch.from_numpy(heat_gt))
            if len(cells):
                y, x = torch.from_numpy(cells[:, 0]), torch.from_numpy(cells[:, 1])
                loss_box = loss_box + F.l1_loss(box[n][:, y, x], torch.from_numpy(box_gt))
                gathered.append((embed[n][:, y, x].T, ids))
            else:
                gathered.append((None, ids))
        (ea, ia), (eb, ib) = gathered
        if ea is not None and eb is not None:
            match = torch.from_numpy(ia[:, None] == ib[None, :])
            rows = match.any(1)
            if rows.any():
                logits = ea @ eb.T / EMBED_TEMPERATURE
                loss_id = loss_id + F.cross_entropy(logits[rows], match[rows].float().argmax(1))
    return (loss_heat + loss_box + 0.5 * loss_id) / len(batch)


def sample_pair(rng, videos: list[Clips], frames: int, flip: bool):
    c = videos[rng.integers(len(videos))]
    t = int(rng.integers(len(c.frames) - PAIR_GAP))
    u = t + int(rng.integers(1, PAIR_GAP + 1))
    out = []
    for i in (t, u):
        clip, boxes = clip_at(c, i, frames), c.boxes[i]
        if flip:
            clip = clip[..., ::-1]
            boxes = np.stack([INPUT_HW[1] - boxes[:, 2], boxes[:, 1], INPUT_HW[1] - boxes[:, 0], boxes[:, 3]], 1)
        out += [np.ascontiguousarray(clip), targets(boxes), c.ids[i]]
    return out


def train_detector(model, videos, steps, batch, rng, log) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for step in range(steps):
        pairs = [sample_pair(rng, videos, model.frames, bool(rng.integers(2))) for _ in range(batch)]
        loss = detector_loss(model, pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"detector step {step}: loss {loss.item():.3f}")
    model.eval()


def behavior_sequences(model: ChimpModel, videos: list[Clips]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, labels): the behavior-head inputs the app itself builds when it tracks the training videos with
    the trained detector (tracker boxes, their jitter and id switches included), each labelled with the
    behaviors of the ground-truth animal its box overlaps (IoU >= 0.5; unmatched tracks are left out)."""
    xs, ys = [], []
    for c in videos:
        seen = []  # the behavior runner records what the app asks it, in the order of the app's results
        app = ChimpApp(eager(model.detector), lambda steps: seen.append(steps) or [np.zeros((len(steps), 1))],
                       model.behaviors, model.detector.frames)
        for t in range(len(c.frames)):
            seen.clear()
            results = app(np.ascontiguousarray(c.frames[t].transpose(1, 2, 0)))
            if not results:
                continue
            steps = np.concatenate(seen)[:len(results)]  # MAX_TRACKS rows per call, padding last
            overlap = iou(np.stack([r.box for r in results]), c.boxes[t])
            for row, (k, truth) in enumerate(zip(overlap.argmax(1), overlap.max(1))):
                if truth >= 0.5:
                    xs.append(steps[row])
                    ys.append(c.behaviors[t][k])
    return np.stack(xs), np.stack(ys)


def train_behavior(model, x, y, steps, batch, rng, log) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(len(x), size=batch))
        loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"behavior step {step}: loss {loss.item():.3f}")
    model.eval()


def _rendered(root: Path, videos: int, seed: int) -> bool:
    """Whether root holds the synthetic training set these arguments and this renderer would write."""
    try:
        info = json.loads((root / data.ANNOTATIONS).read_text())["info"]
    except (OSError, ValueError, KeyError):
        return False
    return (info.get("version"), info.get("seed"), info.get("videos")) == (synth.VERSION, seed, videos)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ChimpACT-format folder; default: render synthetic videos into --synth-dir")
    p.add_argument("--synth-dir", default="out/chimp-train", help="where synthetic training videos go")
    p.add_argument("--videos", type=int, default=48, help="synthetic training videos")
    p.add_argument("--out", required=True, help="weights file to write (.pt)")
    p.add_argument("--init", help="weights to fine-tune from")
    p.add_argument("--frames", type=int, default=3, help="clip length; 1 = no temporal fusion")
    p.add_argument("--steps", type=int, default=2000, help="detector steps (0: train the behavior head only)")
    p.add_argument("--behavior-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=6, help="clip pairs per detector step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # these small convs gain little from threads, and lose much on a busy machine
    rng = np.random.default_rng(args.seed)
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    root = Path(args.data) if args.data else Path(args.synth_dir)
    if not args.data and not _rendered(root, args.videos, args.seed):
        log(f"rendering {args.videos} synthetic videos (seed {args.seed}) into {root}")
        synth.write_dataset(root, args.videos, args.seed)
    dataset = data.load(root)
    videos = [prepare(v) for v in dataset.videos]
    log(f"{len(videos)} videos, {sum(len(v.frames) for v in videos)} frames, behaviors {dataset.behaviors}")

    model = ChimpModel.load(args.init) if args.init else ChimpModel.new(args.frames, dataset.behaviors)
    if args.steps:
        train_detector(model.detector, videos, args.steps, args.batch, rng, log)
    x, y = behavior_sequences(model, videos)
    log(f"behavior sequences: {len(x)}")
    train_behavior(model.behavior, x, y, args.behavior_steps, 64, rng, log)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    command = "python -m edgekit.apps.chimp.train " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.init:  # the whole recipe: how the starting weights were made, then this run
        command = torch.load(args.init, weights_only=True).get("trained_by", args.init) + " && " + command
    partial = Path(args.out).with_suffix(".partial")
    torch.save(model.state(trained_by=command, seed=args.seed), partial)
    partial.replace(args.out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
