"""Tuned kernels (attention, selective scan). Ground layer: imports nothing else of edgekit."""


def attention(q, k, v, *, causal=False, window=None, scale=None):
    from .attention.api import attention as _attention

    return _attention(q, k, v, causal=causal, window=window, scale=scale)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    from .scan.api import selective_scan as _scan

    return _scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                 delta_softplus=delta_softplus, return_last_state=return_last_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    from .scan.api import selective_state_update as _update

    return _update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
