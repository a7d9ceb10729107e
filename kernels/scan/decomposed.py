"""The selective scan as whole-tensor cumsums, exps and einsums: exportable everywhere.

No Python loop over L and no data-dependent control flow, so torch.export, ExecuTorch and ONNX
see a static graph. Time is cut into chunks of `chunk` steps:
  within a chunk, y_t = sum_{s<=t} C_t exp(sum_{s<k<=t} dt_k A) B_s dt_s u_s  (a masked T x T form);
  across chunks, the state entering chunk c is the same form over chunk totals.
Decay exponents are built as segment sums (cumsum of a masked matrix, as in Mamba-2's SSD) rather
than differences of one long cumsum, which would cancel catastrophically in float32.
Memory is O(D*L*chunk*N) within chunks and O(D*(L/chunk)**2*N) across them: meant for export and
moderate shapes; the compiled kernel (api.py) is the fast path.
"""

import torch
import torch.nn.functional as F


def segment_decay(a):
    """a [..., T, N] -> [..., T, T, N]: exp(sum_{s<k<=t} a_k) at [t, s], zero where s > t.

    Masked after the exp rather than with -inf before it: fast exp implementations (TVM's among
    them) turn -inf into NaN.
    """
    steps = a.shape[-2]
    strict = torch.ones(steps, steps, dtype=torch.bool, device=a.device).tril(-1)[..., None]
    lower = torch.ones(steps, steps, dtype=torch.bool, device=a.device).tril(0)[..., None]
    x = torch.where(strict, a[..., :, None, :].expand(*a.shape[:-1], steps, a.shape[-1]), 0.0)
    return torch.where(lower, x.cumsum(dim=-3).exp(), 0.0)


def _per_channel(x, dim):
    """B/C [b, N, L] or [b, G, N, L] -> [b, D or 1, L, N]."""
    if x.dim() == 3:
        return x[:, None].transpose(-1, -2)
    return x.repeat_interleave(dim // x.shape[1], dim=1).transpose(-1, -2)


def chunked_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 return_last_state=False, chunk=16):
    """Same contract and result as edgekit.kernels.selective_scan, built from exportable ops."""
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    pad = (-length) % chunk
    # Zero dt past the end: decay 1 and no input, so the padded steps leave the state unchanged.
    dt = F.pad(delta, (0, pad))
    x = F.pad(delta * u, (0, pad))
    b_mat = F.pad(_per_channel(B, dim), (0, 0, 0, pad))
    c_mat = F.pad(_per_channel(C, dim), (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk

    def chunks(t):
        return t.reshape(*t.shape[:2], n_chunks, chunk, *t.shape[3:])

    log_decay = chunks(dt[..., None] * A[:, None, :])  # [b, D, c, T, N]
    x, b_mat, c_mat = chunks(x), chunks(b_mat), chunks(c_mat)

    decay = segment_decay(log_decay)  # [b, D, c, T, T, N]
    y = torch.einsum("bdctn,bdctsn,bdcsn,bdcs->bdct", c_mat, decay, b_mat, x)

    # State each chunk adds by its end, then the states entering each chunk.
    # Positive indices: TVM's importer reads index -1 out of bounds.
    chunk_state = torch.einsum("bdcsn,bdcsn,bdcs->bdcn", decay[..., chunk - 1, :, :], b_mat, x)
    totals = log_decay.sum(dim=-2)  # [b, D, c, N]
    end_state = torch.einsum("bdckn,bdkn->bdcn", segment_decay(totals), chunk_state)
    start_state = F.pad(end_state[:, :, :-1], (0, 0, 1, 0))
    into_chunk = log_decay.cumsum(dim=-2).exp()  # decay from chunk start through step t
    y = y + torch.einsum("bdctn,bdctn,bdcn->bdct", c_mat, into_chunk, start_state)

    y = y.reshape(batch, dim, -1)[..., :length]
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, end_state[:, :, n_chunks - 1]) if return_last_state else y
