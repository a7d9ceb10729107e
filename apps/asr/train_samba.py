"""Train Samba-ASR on the text-to-speech shards of tts_data.py; `make train-asr` runs the whole recipe.

    python -m edgekit.apps.asr.train_samba --data out/asr-tts --out out/samba-ctc.pt               # encoder + CTC
    python -m edgekit.apps.asr.train_samba --data out/asr-tts --init out/samba-ctc.pt --decoder-layers 2 \
        --steps 3000 --out apps/asr/weights/samba.pt                                               # the decoder

The second stage trains only the decoder on the fixed encoder, then picks the beam search's decoder weight and
length bonus on a third of the unseen-voice test set and reports every decoding on the other two thirds.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .eval import wer
from .ctc_beam import BeamOptions, beam_search
from .samba_decoder import EagerScorer
from .samba import WEIGHTS, SambaCTC, SambaDims, encode_text, greedy_ctc, kernel_scan, max_tokens_for, save
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


def encode(model: SambaCTC, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    enc = model.encoder
    h = F.gelu(enc.conv2(F.gelu(enc.conv1(x.transpose(1, 2))))).transpose(1, 2)
    for block in enc.blocks:
        h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
    return enc.norm(h)


def forward(model: SambaCTC, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    return F.log_softmax(model.head(encode(model, x, recompute)), dim=-1)


def decoder_tokens(targets: torch.Tensor, target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder input (0, c1..cn, pad) and target (c1..cn, 0, -100 ignored) per utterance from CTC targets."""
    n = int(target_lengths.max()) + 1
    inputs = torch.zeros(len(target_lengths), n, dtype=torch.long)
    wanted = torch.full((len(target_lengths), n), -100, dtype=torch.long)
    for row, text in enumerate(targets.split(target_lengths.tolist())):
        inputs[row, 1:len(text) + 1] = text
        wanted[row, :len(text)] = text
        wanted[row, len(text)] = 0
    return inputs, wanted


def frames_out(frames: torch.Tensor) -> torch.Tensor:
    return (((frames + 1) // 2) + 1) // 2  # two stride-2 convolutions with causal padding of 2


@torch.no_grad()
def transcribe_features(model: SambaCTC, feats, max_frames: int = 6000) -> list[str]:
    """CTC's best path for every utterance, in length-bucketed batches."""
    model.eval()
    texts = [""] * len(feats)
    lengths = np.array([len(f) for f in feats])
    for idx in batches(lengths, max_frames, np.random.default_rng(0)):
        x, frames, _, _ = collate(feats, [""] * len(feats), idx)
        log_probs = forward(model, x, recompute=False).numpy()
        for row, i in enumerate(idx):
            texts[i] = greedy_ctc(log_probs[row, :int(frames_out(frames[row]))])
    return texts


# beam 16 measured no better than 8 on the dev set (0.830 against 0.827 WER at the best weight)
BEAM_GRID = [BeamOptions(beam=8, weight=w, bonus=b) for w in (0.3, 0.5, 0.8, 1.2, 1.6) for b in (0.5, 1.0, 1.5)]
DEV_UTTERANCES = 100


def tune_beam(model: SambaCTC, feats, texts, voices) -> dict:
    """Pick the decoder weight and length bonus on a seeded third of the unseen-voice test set (dev) and report
    every decoding on the other two thirds, which took no part in the choice."""
    model.eval()
    order = np.random.default_rng(1).permutation(len(feats))
    dev, held = order[:DEV_UTTERANCES], order[DEV_UTTERANCES:]
    with torch.no_grad():
        runs = [encode(model, torch.from_numpy(f.astype(np.float32))[None], recompute=False) for f in feats]
        ctc = [F.log_softmax(model.head(e), dim=-1)[0].numpy() for e in runs]
        runs = [e.numpy() for e in runs]

    scorer = EagerScorer(model.decoder)

    def decode(idx, options):
        return [beam_search(ctc[i], scorer, runs[i], options) for i in idx]

    def score(idx, hyp):
        refs = [texts[i] for i in idx]
        return round(wer(refs, hyp), 4), round(cer(refs, hyp), 4)

    tried = {}
    for options in BEAM_GRID:
        tried[options] = score(dev, decode(dev, options))
        print(f"  dev: {options}: WER/CER {tried[options]}", flush=True)
    best = min(tried, key=tried.get)
    fused = decode(held, best)
    for i, h in list(zip(held, fused))[:5]:
        print(f"  fused [{voices[i]}] {texts[i]!r} -> {h!r}")
    results = {"greedy_ctc": score(held, [greedy_ctc(ctc[i]) for i in held]),
               "beam_ctc": score(held, decode(held, BeamOptions(beam=best.beam, weight=0.0, bonus=0.0))),
               "decoder_alone": score(held, [model.decoder.greedy(torch.from_numpy(runs[i]),
                                                                  max_tokens_for(len(feats[i])))
                                             for i in held]),
               "beam_fused": score(held, fused)}
    return {"beam": asdict(best), "held_out_utterances": len(held),
            "held_out_wer_cer": results,
            "dev_wer_cer": {f"beam {o.beam} weight {o.weight} bonus {o.bonus}": v for o, v in tried.items()}}


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Character error rate; the texts are normalised already (tts_data.normalize_text, greedy_ctc)."""
    import jiwer

    return jiwer.cer(references, hypotheses)


def build(args, scan) -> tuple[SambaCTC, list[torch.nn.Parameter]]:
    """The model to train and the parameters that training updates."""
    if not args.init:
        model = SambaCTC(SambaDims(width=args.width, layers=args.layers, decoder_layers=args.decoder_layers),
                         scan=scan)
        return model, list(model.parameters())
    if args.decoder_layers < 1:
        raise SystemExit("--init trains only the decoder: give --decoder-layers 1 or more")
    saved = torch.load(args.init, map_location="cpu", weights_only=True)
    dims = SambaDims(**{**saved["dims"], "decoder_layers": args.decoder_layers})
    model = SambaCTC(dims, scan=scan)
    missing, unexpected = model.load_state_dict(saved["state"], strict=False)
    if unexpected or any(not name.startswith("decoder.") for name in missing):
        raise SystemExit(f"{args.init}: not a Samba CTC checkpoint of this shape (unexpected {unexpected[:3]}, "
                         f"missing {[n for n in missing if not n.startswith('decoder.')][:3]})")
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("decoder."))
    return model, list(model.decoder.parameters())


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
    p.add_argument("--decoder-layers", type=int, default=SambaDims.decoder_layers,
                   help="Mamba decoder blocks, trained with the CTC head, or alone with --init (0: CTC only)")
    p.add_argument("--decoder-weight", type=float, default=1.0, help="cross-entropy weight next to CTC's")
    p.add_argument("--init", type=Path, help="start from these weights (a CTC-trained Samba) and train only the "
                                              "decoder: the encoder and CTC head stay as they are")
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
    model, trained = build(args, parallel_scan)
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(1.0, s / max(1, args.steps))))))
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
        if args.init:  # the encoder is fixed: no CTC loss, no graph through it
            with torch.no_grad():
                encoded = encode(model, x, recompute=False)
            loss = torch.zeros(())
        else:
            encoded = encode(model, x, recompute=args.recompute)
            log_probs = F.log_softmax(model.head(encoded), dim=-1)
            loss = F.ctc_loss(log_probs.transpose(0, 1), targets, frames_out(frames), target_lengths,
                              zero_infinity=True)
        if model.decoder is not None:
            inputs, wanted = decoder_tokens(targets, target_lengths)
            logits = model.decoder(encoded, inputs)
            loss = loss + args.decoder_weight * F.cross_entropy(logits.flatten(0, 1), wanted.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        step += 1
        recent.append(loss.item())
        if step % 100 == 0 and step < args.steps:  # an interrupted run leaves its latest weights
            save(model, args.out.with_suffix(".partial.pt"), {"steps": step, "of": args.steps})
        if step % 25 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {np.mean(recent[-25:]):.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{time.perf_counter() - began:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU", flush=True)
    model.set_scan(kernel_scan)  # what the recogniser runs
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
    if args.init:  # only the decoder was trained here
        meta["decoder_trained_on"] = args.init.name
    if model.decoder is not None:
        meta.update(tune_beam(model, test_feats, test_texts, test_voices))
    save(model, args.out, meta)
    args.out.with_suffix(".partial.pt").unlink(missing_ok=True)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
