"""Public entry points: validate torch inputs, lay them out for the kernel, run the host build.

Contract as mamba_ssm's selective_scan_fn / selective_state_update, on CPU float32 tensors.
Contiguous tensors reach the kernel through DLPack without a copy; only a state size that is not a
power of two costs a zero-padded copy of A/B/C (and of the state for the in-place update).
"""

import torch
import torch.nn.functional as F
import tvm

from . import build
from .tir_scan import Options


def _check(name, t, shape, optional=False):
    """shape: tuple of expected sizes, None where any size is accepted."""
    if t is None:
        if optional:
            return
        raise ValueError(f"{name} is required.")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU float32 tensor, got {t.dtype} on {t.device}. "
                         f"Call .float().cpu() first.")
    if t.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, t.shape)):
        want = ", ".join("*" if e is None else str(e) for e in shape)
        raise ValueError(f"{name} must have shape [{want}], got {list(t.shape)}.")


def _check_groups(name, t, batch, dim, n_state, trailing):
    """B/C: [batch, N, *trailing] or grouped [batch, G, N, *trailing] with G dividing dim."""
    if isinstance(t, torch.Tensor) and t.dim() == 2 + len(trailing):
        _check(name, t, (batch, n_state, *trailing))
        return
    _check(name, t, (batch, None, n_state, *trailing))
    if t.shape[1] == 0 or dim % t.shape[1]:
        raise ValueError(f"{name} has {t.shape[1]} groups, which must divide the {dim} channels.")


def _padded_state_size(n):
    return 1 << max(n - 1, 0).bit_length()


def _pad_state(t, n_pad, axis=-1):
    """Zero-pad the state axis: zero B/C/A lanes carry zero state and add nothing to y."""
    missing = n_pad - t.shape[axis]
    return F.pad(t, [0, 0] * (-axis - 1) + [0, missing]) if missing else t


def _grouped(t, ndim):
    """B/C without a group axis are one group."""
    return t if t.dim() == ndim else t.unsqueeze(1)


def _run(kernel, opts, inputs, outputs):
    """Outputs must be contiguous already: the kernel writes them through DLPack.

    Forward only: tensors are detached because DLPack refuses ones that require grad."""
    fn = build.host_kernel(kernel, opts)
    tensors = [*(t.detach().contiguous() for t in inputs), *(t.detach() for t in outputs)]
    fn(*(tvm.runtime.from_dlpack(t) for t in tensors))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """out [batch, dim, L] (and last_state [batch, dim, N] when return_last_state)."""
    opts, inputs, (out, last_state) = scan_arguments(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    _run("scan", opts, inputs, [out, last_state])
    if not return_last_state:
        return out
    return out, last_state[..., :A.shape[1]].contiguous()


def scan_arguments(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Check the inputs and lay them out as the compiled scan takes them: (opts, inputs, outputs).

    Any build of the kernel (host, or a device library run elsewhere) is called as fn(*inputs, *outputs);
    last_state comes back zero-padded to a power-of-two state size.
    """
    _check("u", u, (None, None, None))
    batch, dim, length = u.shape
    _check("delta", delta, (batch, dim, length))
    _check("A", A, (dim, None))
    n_state = A.shape[1]
    _check_groups("B", B, batch, dim, n_state, (length,))
    _check_groups("C", C, batch, dim, n_state, (length,))
    _check("D", D, (dim,), optional=True)
    _check("z", z, (batch, dim, length), optional=True)
    _check("delta_bias", delta_bias, (dim,), optional=True)

    n_pad = _padded_state_size(n_state)
    opts = Options(n_pad, has_d=D is not None, has_z=z is not None,
                   has_bias=delta_bias is not None, softplus=bool(delta_softplus))
    optional = [t for t in (D, z, delta_bias) if t is not None]
    b_mat, c_mat = (_pad_state(_grouped(t, 4), n_pad, axis=-2) for t in (B, C))
    inputs = [u, delta, _pad_state(A, n_pad), b_mat, c_mat, *optional]
    return opts, inputs, (u.new_empty(batch, dim, length), u.new_empty(batch, dim, n_pad))


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Advance `state` [batch, dim, N] one step in place; returns out [batch, dim]."""
    _check("state", state, (None, None, None))
    batch, dim, n_state = state.shape
    if not state.is_contiguous():
        raise ValueError("state must be contiguous: it is updated in place. Pass state.contiguous() "
                         "and keep that tensor.")
    _check("x", x, (batch, dim))
    _check("dt", dt, (batch, dim))
    _check("A", A, (dim, n_state))
    _check_groups("B", B, batch, dim, n_state, ())
    _check_groups("C", C, batch, dim, n_state, ())
    _check("D", D, (dim,), optional=True)
    _check("z", z, (batch, dim), optional=True)
    _check("dt_bias", dt_bias, (dim,), optional=True)

    n_pad = _padded_state_size(n_state)
    opts = Options(n_pad, has_d=D is not None, has_z=z is not None,
                   has_bias=dt_bias is not None, softplus=bool(dt_softplus))
    work = _pad_state(state, n_pad)  # `state` itself (zero copy) unless N needs padding

    out = x.new_empty(batch, dim)
    optional = [t for t in (D, z, dt_bias) if t is not None]
    b_mat, c_mat = (_pad_state(_grouped(t, 3), n_pad) for t in (B, C))
    _run("state_update", opts, [x, dt, _pad_state(A, n_pad), b_mat, c_mat, *optional], [work, out])
    if work is not state:
        state.copy_(work[..., :n_state])
    return out
