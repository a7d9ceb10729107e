"""CTC prefix beam search, optionally with the Samba decoder's next-character scores added (shallow fusion).

Hypotheses are character prefixes; each keeps CTC's two path probabilities (ending in blank / in its last
character, as in Hannun et al. 2014) and, with a decoder, the decoder's log-probability of the prefix and its
recurrent state. A prefix's rank: log P_ctc + weight * log P_decoder + bonus * characters (the bonus offsets the
decoder's per-character cost, which would otherwise favour short transcripts).
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Protocol

import numpy as np

from .common import ALPHABET

NEG = -np.inf


@dataclass
class _Hyp:
    blank: float = NEG  # log P(paths spelling the prefix that end in blank)
    label: float = NEG  # ... that end in the prefix's last character
    decoder: float = 0.0  # decoder log P(prefix)
    next: np.ndarray | None = None  # decoder log P(next character | prefix), (29,)
    states: object = None  # the scorer's state after the prefix
    parent: _Hyp | None = None  # until `states` is computed: the prefix minus its last character

    @property
    def ctc(self) -> float:
        return np.logaddexp(self.blank, self.label)


class Scorer(Protocol):
    """Next-character log-probabilities (29,) after the encoder states, and after one more character per
    hypothesis; states are the scorer's own (samba_decoder.py)."""

    def start(self, encoded: np.ndarray) -> tuple[np.ndarray, object]: ...

    def advance(self, states: list, tokens: list[int]) -> tuple[np.ndarray, list]: ...


@dataclass(frozen=True)
class BeamOptions:
    beam: int = 8
    weight: float = 0.3  # decoder score weight; 0: CTC alone
    bonus: float = 0.5  # per character
    prune: float = -8.0  # characters less likely than this in a frame are not tried


def beam_search(log_probs: np.ndarray, decoder: Scorer | None = None, encoded: np.ndarray | None = None,
                options: BeamOptions = BeamOptions()) -> str:
    """log_probs (frames, 29) CTC log-probabilities; `decoder` scores with the encoder states `encoded`
    (1, frames, width)."""
    fuse = decoder is not None and options.weight != 0.0
    root = _Hyp(blank=0.0)
    if fuse:
        root.next, root.states = decoder.start(encoded)
    beams: dict[tuple[int, ...], _Hyp] = {(): root}
    for frame in log_probs:
        tried = np.flatnonzero(frame[1:] > options.prune) + 1
        grown: dict[tuple[int, ...], _Hyp] = {}
        for prefix, hyp in beams.items():
            same = grown.setdefault(prefix, _Hyp(decoder=hyp.decoder, next=hyp.next, states=hyp.states))
            same.blank = np.logaddexp(same.blank, hyp.ctc + frame[0])
            for c in tried:
                if prefix and prefix[-1] == c:  # a repeat without a blank between collapses into the prefix
                    same.label = np.logaddexp(same.label, hyp.label + frame[c])
                    reach = hyp.blank + frame[c]
                else:
                    reach = hyp.ctc + frame[c]
                longer = prefix + (int(c),)
                if longer not in grown:
                    old = beams.get(longer)
                    grown[longer] = (_Hyp(decoder=old.decoder, next=old.next, states=old.states) if old else
                                     _Hyp(decoder=hyp.decoder + (hyp.next[c] if fuse else 0.0), parent=hyp))
                grown[longer].label = np.logaddexp(grown[longer].label, reach)
        ranked = sorted(grown.items(), key=lambda kv: -_score(kv[0], kv[1], options))
        beams = dict(ranked[:options.beam])
        if fuse:
            _advance(decoder, beams)
    best = max(beams.items(), key=lambda kv: _score(kv[0], kv[1], options, final=fuse))[0]
    return " ".join("".join(ALPHABET[i - 1] for i in best).split())


def _score(prefix: tuple[int, ...], hyp: _Hyp, options: BeamOptions, final: bool = False) -> float:
    decoder = hyp.decoder + (hyp.next[0] if final else 0.0)  # token 0 ends the transcript
    return hyp.ctc + options.weight * decoder + options.bonus * len(prefix)


def _advance(decoder: Scorer, beams: dict[tuple[int, ...], _Hyp]) -> None:
    """Give every new prefix its decoder state: one batched step from each parent's state."""
    new = [(prefix, hyp) for prefix, hyp in beams.items() if hyp.next is None]
    if not new:
        return
    nxt, states = decoder.advance([hyp.parent.states for _, hyp in new], [prefix[-1] for prefix, _ in new])
    for row, (_, hyp) in enumerate(new):
        hyp.next, hyp.states, hyp.parent = nxt[row], states[row], None
