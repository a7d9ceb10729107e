"""Train Samba-ASR (CTC) on the text-to-speech shards of tts_data.py; `make train-asr` runs the whole recipe.

    python -m edgekit.apps.asr.train_samba --data out/asr-tts --out apps/asr/weights/samba_ctc.pt --steps 3600

Deterministic for a given seed and thread count: batches are drawn from a seeded generator and the step count
is fixed (not a time budget). The scan is PyTorch's parallel (Blelloch) scan from
edgekit.kernels.scan.reference: it has a backward (the edgekit kernel is forward-only) and, measured here, trains
4x faster than the plain recurrence (`training_scan`) and 2.5x faster than the chunked form.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .eval import wer
from .samba import WEIGHTS, SambaCTC, SambaDims, encode_text, greedy_ctc, save
from .tts_data import load_split


def batches(lengths: np.ndarray, max_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Utterances of similar length together (little padding), at most `max_frames` padded frames a batch."""
    order = np.argsort(lengths + rng.uniform(0, 30, len(lengths)), kind="stable")
    out, current = [], []
    for i in order:
        if current and (len(current) + 1) * max(lengths[current + [i]]) > max_frames:
            out.append(np.array(current))
            current = []
        current.append(i)
    out.append(np.array(current))
    return [out[i] for i in rng.permutation(len(out))]


def collate(feats, texts, idx, rng=None):
    """Padded features (B, T, n_mels) float32 with SpecAugment masks when `rng` is given, CTC targets."""
    t = max(len(feats[i]) for i in idx)
    x = torch.full((len(idx), t, feats[idx[0]].shape[1]), -1.0)  # -1: the front end's floor (silence)
    for row, i in enumerate(idx):
        x[row, :len(feats[i])] = torch.from_numpy(feats[i].astype(np.float32))
        if rng is not None:  # two frequency and two time masks, as SpecAugment's LB policy
            for _ in range(2):
                f = rng.integers(0, 12)
                f0 = rng.integers(0, x.shape[2] - f)
                x[row, :, f0:f0 + f] = -1.0
                w = rng.integers(0, min(25, len(feats[i]) // 10 + 1))
                w0 = rng.integers(0, max(1, len(feats[i]) - w))
                x[row, w0:w0 + w] = -1.0
    labels = [encode_text(texts[i]) for i in idx]
    return (x, torch.tensor([len(feats[i]) for i in idx]), torch.tensor(sum(labels, [])),
            torch.tensor([len(l) for l in labels]))


def forward(model: SambaCTC, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    enc = model.encoder
    h = F.gelu(enc.conv2(F.gelu(enc.conv1(x.transpose(1, 2))))).transpose(1, 2)
    for block in enc.blocks:
        h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
    return F.log_softmax(model.head(enc.norm(h)), dim=-1)


def frames_out(frames: torch.Tensor) -> torch.Tensor:
    return (((frames + 1) // 2) + 1) // 2  # two stride-2 convolutions with causal padding of 2


@torch.no_grad()
def transcribe_features(model: SambaCTC, feats, max_frames: int = 6000) -> list[str]:
    model.eval()
    texts = [""] * len(feats)
    lengths = np.array([len(f) for f in feats])
    for idx in batches(lengths, max_frames, np.random.default_rng(0)):
        x, frames, _, _ = collate(feats, [""] * len(feats), idx)
        log_probs = forward(model, x, recompute=False).numpy()
        for row, i in enumerate(idx):
            texts[i] = greedy_ctc(log_probs[row, :int(frames_out(frames[row]))])
    return texts


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Character error rate; the texts are normalised already (tts_data.normalize_text, greedy_ctc)."""
    import jiwer

    return jiwer.cer(references, hypotheses)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="tts_data.py output folder")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--recompute", action="store_true", help="recompute Mamba blocks in the backward pass "
                                                                 "(less memory, about 3x the time here)")
    p.add_argument("--max-frames", type=int, default=2400,
                   help="padded log-mel frames per batch (2400: half the CPU a step of 4800, and for the same CPU "
                        "twice the steps learned faster here)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=SambaDims.width)
    p.add_argument("--layers", type=int, default=SambaDims.layers)
    p.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=False,
                   help="time and frequency masks on the training features (off by default: with them this "
                        "model stayed on CTC's blank plateau for the whole budget; see README)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1: a shared machine starves a second thread")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    from edgekit.kernels.scan.reference import parallel_scan

    feats, texts, _ = load_split(args.data, "train")
    test_feats, test_texts, test_voices = load_split(args.data, "test")
    lengths = np.array([len(f) for f in feats])
    model = SambaCTC(SambaDims(width=args.width, layers=args.layers), scan=parallel_scan)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(1.0, s / args.steps)))))
    plan: list[np.ndarray] = []
    recent: list[float] = []  # losses, printed as the mean of the last 25 steps (one batch is noisy)
    began, cpu0, step = time.perf_counter(), time.process_time(), 0
    print(f"{len(feats)} training utterances ({lengths.sum() / 100 / 3600:.2f} h), "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    model.train()
    while step < args.steps:
        if not plan:
            plan = batches(lengths, args.max_frames, rng)
        x, frames, targets, target_lengths = collate(feats, texts, plan.pop(), rng if args.specaugment else None)
        log_probs = forward(model, x, recompute=args.recompute)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, frames_out(frames), target_lengths,
                          zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        recent.append(loss.item())
        if step % 100 == 0 and step < args.steps:  # an interrupted run leaves its latest weights
            save(model, args.out.with_suffix(".partial.pt"), {"steps": step, "of": args.steps})
        if step % 25 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {np.mean(recent[-25:]):.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{time.perf_counter() - began:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU", flush=True)
    hyp = transcribe_features(model, test_feats)
    test_cer = cer(test_texts, hyp)
    test_wer = wer(test_texts, hyp)
    for ref, h, v in list(zip(test_texts, hyp, test_voices))[:5]:
        print(f"  [{v}] {ref!r} -> {h!r}")
    meta = {"steps": args.steps, "seed": args.seed, "train_utterances": len(feats),
            "test_wer_unseen_voices": round(test_wer, 4),
            "test_cer_unseen_voices": round(test_cer, 4), "test_utterances": len(test_texts),
            "train_cpu_seconds": round(time.process_time() - cpu0), "lr": args.lr, "max_frames": args.max_frames,
            "specaugment": args.specaugment}
    save(model, args.out, meta)
    args.out.with_suffix(".partial.pt").unlink(missing_ok=True)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
