"""Branch-free float32 math for TIR kernels on CPUs.

LLVM scalarises vector `exp`/`log` into one libm call per lane; these polynomial forms stay in
SIMD registers (AVX-512, NEON). Coefficients are Chebyshev interpolants computed at import time,
accurate to a few float32 ulp on their ranges.
"""

import math

import numpy as np
from tvm import tirx

LOG2E = math.log2(math.e)


def _poly_coefficients(fn, degree, lo, hi):
    cheb = np.polynomial.Chebyshev.interpolate(fn, degree, domain=[lo, hi])
    return [float(c) for c in cheb.convert(kind=np.polynomial.Polynomial).coef]


_EXP2_COEF = _poly_coefficients(np.exp2, 6, -0.5, 0.5)
_LOG1P_COEF = _poly_coefficients(np.log1p, 11, 0.0, 1.0)


def _f32(value):
    return tirx.const(value, "float32")


def _horner(coefficients, x):
    acc = _f32(coefficients[-1])
    for c in coefficients[-2::-1]:
        acc = acc * x + _f32(c)
    return acc


def exp2(x):
    """2**x for x in float32; clamps to [2**-126, 2**126] so the exponent bits never wrap."""
    x = tirx.max(tirx.min(x, _f32(126.0)), _f32(-126.0))
    k = tirx.round(x)
    scale = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", k) + 127, 23))
    return _horner(_EXP2_COEF, x - k) * scale


def exp(x):
    return exp2(x * _f32(LOG2E))


def softplus(x):
    """log(1 + e**x), written as max(x, 0) + log1p(e**-|x|) so it never overflows."""
    return tirx.max(x, _f32(0.0)) + _horner(_LOG1P_COEF, exp(-tirx.abs(x)))


def silu(x):
    return x / (_f32(1.0) + exp(-x))
