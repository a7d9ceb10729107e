"""edgekit.kernels.attention: fused attention on torch CPU tensors, running the compiled host kernel."""

import math

import torch
import torch.nn.functional as F

from .build import HEAD_DIM_STEP, SPLIT_SYMBOL, host_module, pool_threads
from .tir_kernel import TILE_ROWS

MAX_HEAD_DIM = 256
SPLIT_MAX_QUERIES = 3  # query rows the micro-kernel runs one by one (below its 16-lane tiles' minimum)
SPLIT_MIN_KEYS = 256  # smaller key chunks cost more to merge than they save
_INT32_MAX = 2**31 - 1


def attention(q, k, v, *, causal=False, window=None, scale=None):
    """softmax(q k^T * scale) v for q [B, H, Lq, D] and k, v [B, Hkv, Lk, D] (H a multiple of Hkv).

    causal: query i sits at key position Lk - Lq + i (bottom-right aligned, as in KV-cache decoding)
    and sees keys j <= that position. window=w: a causal sliding window, keys j with pos - w < j <= pos.
    scale defaults to D ** -0.5. Returns a new float32 tensor [B, H, Lq, D].
    Runs on TVM's thread pool: set TVM_NUM_THREADS (TVM's default on x86 is half the logical CPUs).
    """
    _check(q, k, v, causal, window, scale)
    lq, d = q.shape[2], q.shape[3]
    scale = d**-0.5 if scale is None else float(scale)
    pad = -d % HEAD_DIM_STEP  # the micro-kernel takes head dims in multiples of it; zero columns change nothing
    q, k, v = (F.pad(t, (0, pad)) if pad else t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    args = (q, k, v, out, int(causal or window is not None), min(window or 0, _INT32_MAX), scale)
    module = host_module(d + pad)
    splits = _decode_splits(q.shape[0] * q.shape[1] * lq, lq, k.shape[2])
    if splits > 1 and module.implements_function(SPLIT_SYMBOL):
        module[SPLIT_SYMBOL](*args, splits)
    else:
        module["attention_f32"](*args)
    return out[..., :d].contiguous() if pad else out


def _decode_splits(rows, lq, lk):
    """Key chunks per query row: few decode rows over a long cache would leave threads idle."""
    if lq > SPLIT_MAX_QUERIES or rows >= 2 * pool_threads():
        return 1
    return max(1, min(math.ceil(2 * pool_threads() / rows), lk // SPLIT_MIN_KEYS))


def _check(q, k, v, causal, window, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"attention: {name} is {t.dtype} on {t.device}; pass float32 CPU tensors "
                            f"(e.g. {name}.float().cpu()).")
        if t.dim() != 4 or 0 in t.shape:
            raise ValueError(f"attention: {name} has shape {tuple(t.shape)}; expected a non-empty "
                             "[batch, heads, length, head_dim] tensor.")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape.")
    (b, h, lq, d), (bk, hkv, lk, dk) = q.shape, k.shape
    if bk != b or dk != d:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head_dim.")
    if h % hkv:
        raise ValueError(f"attention: q has {h} heads, k/v have {hkv}; q heads must be a multiple of k/v heads.")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim {d} is above the supported {MAX_HEAD_DIM}.")
    if lq + lk + TILE_ROWS > _INT32_MAX:
        raise ValueError(f"attention: lengths {lq} + {lk} overflow the kernel's 32-bit positions.")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"attention: window must be a positive int (keys kept per query), got {window!r}.")
    if (causal or window is not None) and lq > lk:
        raise ValueError(f"attention: causal attention with Lq={lq} > Lk={lk} leaves the first "
                         f"{lq - lk} queries no keys; pass at most as many queries as keys.")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"attention: scale must be a finite number, got {scale!r}.")
