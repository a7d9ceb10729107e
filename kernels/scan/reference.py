"""Plain-PyTorch selective scans: the float64 sequential reference and a parallel (Blelloch) peer.

Same contract as the compiled kernel (u/delta [B, D, L], A [D, N], B/C [B, N, L] or
[B, G, N, L]); used by the tests as ground truth and by the benchmark as baselines.
"""

import torch
import torch.nn.functional as F


def _expand_groups(x, dim):
    """[B, N, L] or [B, G, N, L] -> [B, D or 1, L, N], matching channel d to group d // (D // G)."""
    if x.dim() == 3:
        return x.unsqueeze(1).transpose(-1, -2)
    return x.repeat_interleave(dim // x.shape[1], dim=1).transpose(-1, -2)


def _discretize(u, delta, A, B, delta_bias, delta_softplus):
    """Returns exp(dt*A) and dt*B*u, both [B, D, L, N]."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * A[:, None, :])
    drive = (delta * u)[..., None] * _expand_groups(B, u.shape[1])
    return decay, drive


def _readout(h, u, C, D, z):
    """y = C.h (+ D*u) (* silu(z)); h is [B, D, L, N]."""
    y = (h * _expand_groups(C, u.shape[1])).sum(-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _cast(dtype, *tensors):
    return [None if t is None else t.to(dtype) for t in tensors]


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, dtype=torch.float64):
    """Step-by-step recurrence h_t = exp(dt_t*A) h_{t-1} + dt_t*B_t*u_t, computed in `dtype`."""
    u, delta, A, B, C, D, z, delta_bias = _cast(dtype, u, delta, A, B, C, D, z, delta_bias)
    decay, drive = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    h = u.new_zeros(decay.shape[:2] + decay.shape[3:])
    states = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        states.append(h)
    hs = torch.stack(states, dim=2)
    y = _readout(hs, u, C, D, z)
    return (y, h) if return_last_state else y


def _blelloch(a, b):
    """Inclusive scan of h_t = a_t*h_{t-1} + b_t along dim 2, by pairwise halving (log depth)."""
    length = a.shape[2]
    if length == 1:
        return b
    if length % 2:
        a = torch.cat([a, torch.ones_like(a[:, :, :1])], dim=2)
        b = torch.cat([b, torch.zeros_like(b[:, :, :1])], dim=2)
    a_even, a_odd = a[:, :, 0::2], a[:, :, 1::2]
    b_even, b_odd = b[:, :, 0::2], b[:, :, 1::2]
    h_odd = _blelloch(a_odd * a_even, a_odd * b_even + b_odd)
    h_even = b_even.clone()
    h_even[:, :, 1:] += a_even[:, :, 1:] * h_odd[:, :, :-1]
    h = torch.stack([h_even, h_odd], dim=3).flatten(2, 3)
    return h[:, :, :length]


def parallel_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                  return_last_state=False):
    """The same scan as whole-tensor PyTorch ops (no loop over L); float32."""
    decay, drive = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    hs = _blelloch(decay, drive)
    y = _readout(hs, u, C, D, z)
    return (y, hs[:, :, -1]) if return_last_state else y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, dtype=torch.float64):
    """One step in `dtype`; returns (out [B, D], new_state [B, D, N]) and leaves `state` alone."""
    state, x, dt, A, B, C, D, z, dt_bias = _cast(dtype, state, x, dt, A, B, C, D, z, dt_bias)
    decay, drive = _discretize(x[..., None], dt[..., None], A, B[..., None], dt_bias, dt_softplus)
    new_state = decay[:, :, 0] * state + drive[:, :, 0]
    out = _readout(new_state[:, :, None], x[..., None], C[..., None], D, None if z is None else z[..., None])
    return out[..., 0], new_state
