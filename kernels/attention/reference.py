"""Float64 reference attention: the masking contract every kernel is tested against."""

import torch


def visible_keys(lq: int, lk: int, causal: bool, window: int | None) -> torch.Tensor:
    """Boolean [lq, lk] mask of keys each query may attend to.

    Causal masks are aligned bottom-right: query i sits at key position lk - lq + i.
    A window w is a causal sliding window: keys j with pos - w < j <= pos.
    """
    pos = torch.arange(lq).unsqueeze(1) + (lk - lq)
    j = torch.arange(lk).unsqueeze(0)
    keep = torch.ones(lq, lk, dtype=torch.bool)
    if causal or window is not None:
        keep &= j <= pos
    if window is not None:
        keep &= j > pos - window
    return keep


def attention_reference(q, k, v, *, causal=False, window=None, scale=None):
    """Plain softmax(q k^T * scale) v in float64; K/V heads are repeated for grouped-query attention."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    keep = visible_keys(q.shape[2], k.shape[2], causal, window)
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
