"""Train the 3D lifters (KTPFormer and the single-frame MLP baseline) on synthetic motion (motion.py).

    python -m edgekit.apps.pose.train_lifter --out apps/pose/weights [--seed 0] [--steps 2000]

Deterministic for a seed on a given machine (one torch thread, set here). Both models see the same
sequences; the 2D noise is drawn again every NOISE_REFRESH steps, and half the samples are mirrored. Losses:
MPJPE over every frame of the window plus the last frame again (the app reads the last, causal frame) plus
the error of the frame-to-frame velocity (smooth output); the MLP has the MPJPE of its one frame.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.apps.pose import eval as pose_eval
from edgekit.apps.pose import motion
from edgekit.apps.pose.lifter import KTPFormer, MLPLifter, save
from edgekit.apps.pose.skeleton import normalize

NOISE_REFRESH = 100
# One thread: on 2 shared cores two torch threads spend most of their time waiting for each other (measured
# 2.3 CPU-s per KTPFormer step with 2 threads, 0.45 with 1).
THREADS = 1


class Data:
    """All training sequences concatenated, with their current noisy 2D."""

    def __init__(self, sequences: int, rng: np.random.Generator):
        made = [motion.make_sequence(rng) for _ in range(sequences)]
        self.joints_3d = np.concatenate([s.joints_3d for s in made]).astype(np.float32)
        self.clean_2d = np.concatenate([s.joints_2d for s in made])
        self.lengths = np.array([len(s.joints_3d) for s in made])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.noisy_2d = self.clean_2d

    def draw_noise(self, rng: np.random.Generator) -> None:
        self.noisy_2d = np.concatenate([motion.detector_noise(self.clean_2d[a:a + n], rng)
                                        for a, n in zip(self.starts, self.lengths)])

    def batch(self, rng: np.random.Generator, size: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal windows ending at random frames (the first frame repeated before a sequence starts),
        half of them mirrored: normalised 2D (B, T, 17, 2) and 3D (B, T, 17, 3)."""
        sequence = rng.choice(len(self.lengths), size, p=self.lengths / self.lengths.sum())
        end = (rng.random(size) * self.lengths[sequence]).astype(int)
        index = self.starts[sequence, None] + np.clip(end[:, None] + np.arange(1 - frames, 1), 0, None)
        points, joints = self.noisy_2d[index], self.joints_3d[index]
        flip = rng.random(size) < 0.5
        points[flip], joints[flip] = motion.mirror(points[flip]), motion.mirror(joints[flip])
        return torch.from_numpy(normalize(points)), torch.from_numpy(joints)


def loss_fn(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    error = torch.linalg.vector_norm(predicted - truth, dim=-1)  # (B, T, J)
    loss = error.mean() + error[:, -1].mean()
    if predicted.shape[1] > 1:
        velocity = torch.diff(predicted, dim=1) - torch.diff(truth, dim=1)
        loss = loss + 0.5 * torch.linalg.vector_norm(velocity, dim=-1).mean()
    return loss


def train(model: torch.nn.Module, data: Data, steps: int, batch: int, lr: float, seed: int, log,
          frames: int | None = None, **forward_options) -> None:
    """Windows of `frames` (default: the model's). Each model has its own generator streams (samples, noise;
    main seeds its init), so training one alone gives the weights training both would."""
    frames = frames or model.frames
    rng, noise_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    model.train()
    start, running = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        if step % NOISE_REFRESH == 1:
            data.draw_noise(noise_rng)
        x, y = data.batch(rng, batch, frames)
        loss = loss_fn(model(x, **forward_options), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % 50 == 0 or step == steps:
            average = running / ((step - 1) % 50 + 1)
            log(f"{type(model).__name__}{' (spatial)' if frames != model.frames else ''} step {step}/{steps} "
                f"loss {average:.4f} ({time.perf_counter() - start:.0f} s)")
            running = 0.0
    model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for ktpformer.pt and mlp_lifter.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequences", type=int, default=400, help="synthetic training sequences (120-300 frames)")
    parser.add_argument("--steps", type=int, default=2500, help="KTPFormer optimiser steps")
    parser.add_argument("--batch", type=int, default=32, help="KTPFormer windows per step")
    parser.add_argument("--lr", type=float, default=4e-3, help="KTPFormer peak learning rate")
    parser.add_argument("--dim", type=int, default=48, help="KTPFormer token width")
    parser.add_argument("--depth", type=int, default=3, help="KTPFormer spatial+temporal block pairs")
    parser.add_argument("--heads", type=int, default=3, help="KTPFormer attention heads")
    parser.add_argument("--mlp-ratio", type=float, default=2.0, help="KTPFormer feed-forward width / token width")
    parser.add_argument("--spatial-steps", type=int, default=3000,
                        help="KTPFormer spatial pretraining steps first: single frames, temporal blocks skipped")
    parser.add_argument("--spatial-batch", type=int, default=256, help="frames per spatial pretraining step")
    parser.add_argument("--mlp-steps", type=int, default=3000)
    parser.add_argument("--mlp-batch", type=int, default=256)
    parser.add_argument("--eval-sequences", type=int, default=16, help="held-out sequences evaluated at the end")
    parser.add_argument("--models", default="mlp,ktpformer", help="which to train (comma-separated)")
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    wanted = set(args.models.split(","))
    if not wanted or wanted - {"mlp", "ktpformer"}:
        parser.error(f"--models {args.models!r}: choose from mlp, ktpformer")

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    data = Data(args.sequences, np.random.default_rng(args.seed))
    log(f"{args.sequences} sequences, {len(data.joints_3d)} frames ({time.perf_counter() - started:.0f} s)")
    trained = {}
    for name, build, file, steps, batch, lr, stream in (
            ("mlp", MLPLifter, "mlp_lifter.pt", args.mlp_steps, args.mlp_batch, 1e-3, 1),
            ("ktpformer", lambda: KTPFormer(dim=args.dim, depth=args.depth, heads=args.heads,
                                            mlp_ratio=args.mlp_ratio), "ktpformer.pt", args.steps, args.batch, args.lr,
             2)):
        if name not in wanted:
            continue
        torch.manual_seed(args.seed * 100 + stream)
        trained[name] = model = build()
        wall, cpu = time.perf_counter(), time.process_time()
        if name == "ktpformer" and args.spatial_steps:
            train(model, data, args.spatial_steps, args.spatial_batch, lr, args.seed * 100 + 3, log, frames=1,
                  temporal=False)
        train(model, data, steps, batch, lr, args.seed * 100 + stream, log)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        save(model, args.out / file, seed=args.seed, sequences=args.sequences, steps=steps, batch=batch, lr=lr,
             train_wall_s=round(wall), train_cpu_s=round(cpu))
        log(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, trained in {wall:.0f} s "
            f"({cpu:.0f} CPU-s)")
    log(f"all done in {time.perf_counter() - started:.0f} s")
    if args.eval_sequences:
        results = pose_eval.evaluate({name: (pose_eval.torch_lift(m), m.frames) for name, m in trained.items()},
                                     pose_eval.held_out(args.eval_sequences))
        log(f"held out: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
