"""Mamba-2 (SSD): one scalar decay per head, in mamba_ssm's mamba_chunk_scan_combined layout.

x [b, L, H, P], dt [b, L, H], A [H], B/C [b, L, G, N], D [H], z [b, L, H, P], dt_bias [H].
Two forms:
  * `ssd_chunked`: the chunked SSD algorithm from matmuls (einsums) and cumsums, exportable; with a
    scalar decay the within-chunk mixing is a T x T matrix per head instead of per state lane.
  * `ssd_scan`: the same recurrence on the compiled selective-scan kernel (channels = H*P, A
    broadcast over N), for the host.
"""

import torch
import torch.nn.functional as F

from .api import selective_scan
from .decomposed import segment_decay


def _step_sizes(dt, dt_bias, dt_softplus):
    if dt_bias is not None:
        dt = dt + dt_bias
    return F.softplus(dt) if dt_softplus else dt


def ssd_chunked(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                return_final_state=False, chunk=64):
    """y [b, L, H, P] (and the final state [b, H, P, N])."""
    batch, length, heads, _ = x.shape
    dt = _step_sizes(dt, dt_bias, dt_softplus)
    B, C = (t.repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))  # [b, L, H, N]
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk

    def chunks(t):  # [b, L, ...] -> [b, c, T, ...]; zero dt on padding leaves the state alone
        t = F.pad(t, [0, 0] * (t.dim() - 2) + [0, pad])
        return t.reshape(batch, n_chunks, chunk, *t.shape[2:])

    xdt = chunks(x * dt[..., None])
    B, C = chunks(B), chunks(C)
    log_decay = chunks(dt * A).permute(0, 3, 1, 2)  # [b, H, c, T]

    decay = segment_decay(log_decay[..., None])[..., 0]  # [b, H, c, T, T]
    y = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", C, B, decay, xdt)

    chunk_state = torch.einsum("bcshn,bhcs,bcshp->bchpn", B, decay[..., chunk - 1, :], xdt)
    totals = segment_decay(log_decay.sum(-1)[..., None])[..., 0]  # [b, H, c, c]
    end_state = torch.einsum("bhck,bkhpn->bchpn", totals, chunk_state)
    start_state = F.pad(end_state[:, :-1], [0, 0] * 3 + [1, 0])
    into_chunk = log_decay.cumsum(-1).exp()  # [b, H, c, T]
    y = y + torch.einsum("bcthn,bhct,bchpn->bcthp", C, into_chunk, start_state)

    y = y.reshape(batch, -1, *y.shape[3:])[:, :length]
    if D is not None:
        y = y + D[:, None] * x
    if z is not None:
        y = y * F.silu(z)
    return (y, end_state[:, n_chunks - 1]) if return_final_state else y


def ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             return_final_state=False):
    """ssd_chunked's result from the compiled kernel: each (head, p) pair is one scan channel."""
    batch, length, heads, head_dim = x.shape
    n_state = B.shape[-1]

    def channels(t):  # [b, L, H, P] -> [b, H*P, L]
        return t.reshape(batch, length, heads * head_dim).transpose(1, 2)

    def per_channel(t):  # [..., H] -> [..., H*P]
        return t.repeat_interleave(head_dim, dim=-1)

    dt = _step_sizes(dt, dt_bias, dt_softplus)
    y, state = selective_scan(
        channels(x), per_channel(dt).transpose(1, 2), per_channel(A)[:, None].expand(-1, n_state),
        B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1),
        D=None if D is None else per_channel(D), z=None if z is None else channels(z),
        return_last_state=True)
    y = y.transpose(1, 2).reshape(batch, length, heads, head_dim)
    return (y, state.reshape(batch, heads, head_dim, n_state)) if return_final_state else y
