"""Fused flash-style attention: reference, TIR/AVX-512 kernels, relax rewrite, benchmark.

Importing this package rebinds `edgekit.kernels.attention` from the function defined in
kernels/__init__.py to this module (Python sets a package attribute for each imported
subpackage), so the module itself is made callable with the same signature.
"""

import sys
import types

from .api import attention as _attention


class _CallableModule(types.ModuleType):
    def __call__(self, q, k, v, *, causal=False, window=None, scale=None):
        return _attention(q, k, v, causal=causal, window=window, scale=scale)


sys.modules[__name__].__class__ = _CallableModule
