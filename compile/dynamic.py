"""Dynamic dimensions: which input axes vary, over which range, under which symbol.

One canonical form, `Dims` = {input name: {axis: Dim}}, reached from the CLI's text
(`--dynamic 'input0:2=64..1024,3=64..1024'`), from torch.export's own `Dim` objects or from an ONNX model's symbolic
dimensions, and turned into torch.export's `dynamic_shapes`, the manifest's tensor specs and the input sets
verification runs at (smallest, largest and an odd size in between).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError

SYNTAX = ("INPUT:AXIS=MIN..MAX[,AXIS=MIN..MAX...], e.g. --dynamic 'input0:2=64..1024,3=64..1024'; "
          "AXIS=NAME:MIN..MAX gives the size a name, and axes with one name (in any input) take one size")
_AXIS = re.compile(r"\s*(\d+)\s*=\s*(?:([A-Za-z_]\w*)\s*:)?\s*(\d+)\s*\.\.\s*(\d+)\s*")


@dataclass(frozen=True)
class Dim:
    name: str | None  # None until `rekey` names it (ONNX: the graph's dim_param; else inputN_AXIS)
    min: int
    max: int

    def record(self) -> dict:
        return {"name": self.name, "min": self.min, "max": self.max}


Dims = dict  # {input: {axis: Dim}}: keyed by the names the user wrote until `rekey` makes them input indices


def normalize(given, names: list[str], graph_names: dict | None = None) -> Dims:
    """`dynamic_shapes` as compile takes it: None, --dynamic text (a string or a list of strings), or torch.export's
    own form (a dict by input name, or one entry per input, of {axis: torch.export.Dim}) -> Dims by input index."""
    if not given:
        return {}
    if isinstance(given, str) or (isinstance(given, (list, tuple)) and all(isinstance(t, str) for t in given)):
        dims = parse(given)
    else:
        dims = from_torch(given, names)
    return rekey(dims, names, graph_names)


def parse(texts) -> Dims:
    """--dynamic values (one string or several; inputs may also be separated by ';') -> Dims."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    dims: Dims = {}
    for part in (p for text in texts for p in text.split(";") if p.strip()):
        name, sep, axes = part.partition(":")
        if not sep or not name.strip() or not axes.strip():
            raise EdgekitError(f"--dynamic {part.strip()!r}: expected {SYNTAX}.")
        name = name.strip()
        for item in axes.split(","):
            m = _AXIS.fullmatch(item)
            if m is None:
                raise EdgekitError(f"--dynamic {part.strip()!r}: cannot read {item.strip()!r}; expected {SYNTAX}.")
            axis, label, lo, hi = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            if lo > hi or lo < 1:
                raise EdgekitError(f"--dynamic {part.strip()!r}: axis {axis} range {lo}..{hi} is empty or starts "
                                   "below 1; give MIN..MAX with 1 <= MIN <= MAX.")
            if axis in dims.get(name, {}):
                raise EdgekitError(f"--dynamic: {name} axis {axis} is given twice; give each axis once.")
            dims.setdefault(name, {})[axis] = Dim(label, lo, hi)
    return dims


def rekey(dims: Dims, names: list[str], graph_names: dict | None = None) -> Dims:
    """Dims keyed by input index, every Dim named: `names` are the model's input names (forward()'s parameters or
    the ONNX graph's); inputN also works. `graph_names`: {index: {axis: dim_param}} of an ONNX model."""
    out: Dims = {}
    for key, axes in dims.items():
        if key in names:
            index = names.index(key)
        elif isinstance(key, int) or (isinstance(key, str) and re.fullmatch(r"input\d+", key)):
            index = key if isinstance(key, int) else int(key[5:])
        else:
            index = None
        if index is None or index >= len(names):
            raise EdgekitError(f"--dynamic names {key!r}, not an input of the model; its inputs are "
                               f"{', '.join(names)} (or input0..input{len(names) - 1}).")
        graph = (graph_names or {}).get(index, {})
        out[index] = {axis: Dim(d.name or graph.get(axis) or f"input{index}_{axis}", d.min, d.max)
                      for axis, d in axes.items()}
    seen = {}
    for index, axes in out.items():
        for axis, d in axes.items():
            first = seen.setdefault(d.name, (names[index], axis, d))
            if (first[2].min, first[2].max) != (d.min, d.max):
                raise EdgekitError(f"--dynamic: size {d.name!r} is {first[2].min}..{first[2].max} at {first[0]} axis "
                                   f"{first[1]} but {d.min}..{d.max} at {names[index]} axis {axis}; one name, one "
                                   "range.")
    return out


def from_torch(dynamic_shapes, names: list[str]) -> Dims:
    """torch.export's `dynamic_shapes` ({argument name: {axis: Dim}} or one entry per input) -> Dims. Every Dim needs
    bounds: an artifact is verified at its smallest and largest size."""
    from torch.export import Dim as TorchDim

    if isinstance(dynamic_shapes, dict):
        entries = dict(dynamic_shapes)
        unknown = set(entries) - set(names) - {f"input{i}" for i in range(len(names))}
        if unknown:
            raise EdgekitError(f"dynamic_shapes names {', '.join(sorted(unknown))}, not an input of the model "
                               f"(inputs: {', '.join(names)}).")
        per_input = [entries.get(n, entries.get(f"input{i}")) for i, n in enumerate(names)]
    elif isinstance(dynamic_shapes, (list, tuple)) and len(dynamic_shapes) == len(names):
        per_input = list(dynamic_shapes)
    else:
        raise EdgekitError(f"dynamic_shapes must be a dict by input name or one entry per input ({len(names)}).")
    dims: Dims = {}
    for name, axes in zip(names, per_input):
        if axes is None:
            continue
        if isinstance(axes, (list, tuple)):
            axes = {i: d for i, d in enumerate(axes) if d is not None}
        for axis, d in dict(axes).items():
            if not isinstance(d, TorchDim):
                raise EdgekitError(f"dynamic_shapes: {name} axis {axis} is {d!r}; give torch.export.Dim(NAME, "
                                   "min=..., max=...) with bounds (edgekit verifies the smallest and largest size).")
            lo, hi = int(d.min), _bound(d.max)
            if hi is None:
                raise EdgekitError(f"dynamic_shapes: {name} axis {axis} ({d.__name__}) has no upper bound; give "
                                   f"torch.export.Dim({d.__name__!r}, min=..., max=...).")
            dims.setdefault(name, {})[int(axis)] = Dim(d.__name__, max(lo, 1), hi)
    return dims


def _bound(value) -> int | None:
    """A torch Dim's upper bound as an int; None when it has none (torch's infinity, or above int32)."""
    try:
        bound = int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return bound if bound <= 2 ** 31 else None


def to_torch(dims: Dims, count: int) -> tuple:
    """Dims (by index) -> torch.export's dynamic_shapes, one entry per input (one torch Dim per name)."""
    from torch.export import Dim as TorchDim

    made = {}
    for axes in dims.values():
        for d in axes.values():
            made.setdefault(d.name, TorchDim(d.name, min=d.min, max=d.max))
    return tuple({axis: made[d.name] for axis, d in dims[i].items()} if i in dims else None for i in range(count))


def check(dims: Dims, names: list[str], arrays: list[np.ndarray]) -> None:
    """Every axis is one of its input's axes, and the example input lies within the range."""
    for index, (name, x) in enumerate(zip(names, arrays)):
        for axis, d in dims.get(index, {}).items():
            if axis >= x.ndim:
                raise EdgekitError(f"--dynamic {name}:{axis}: {name} has {x.ndim} axes (0..{x.ndim - 1}).")
            if not d.min <= x.shape[axis] <= d.max:
                raise EdgekitError(f"--dynamic {name}:{axis}={d.min}..{d.max}: the example input's axis {axis} is "
                                   f"{x.shape[axis]}, outside the range; widen the range or give an example inside it.")


def specs(dims: Dims, index: int) -> dict | None:
    """The manifest's `dynamic` field for one input."""
    axes = dims.get(index)
    return {str(axis): d.record() for axis, d in sorted(axes.items())} if axes else None


def symbols(dims: Dims) -> dict[str, Dim]:
    return {d.name: d for axes in dims.values() for d in axes.values()}


def sizes(dims: Dims) -> list[dict[str, int]]:
    """The sizes verification runs at: every symbol at its minimum, at an odd size in between (a prime where the
    range has one: no vector width or tile divides it) and at its maximum."""
    syms = symbols(dims).values()
    low = {d.name: d.min for d in syms}
    mid = {d.name: _odd_between(d.min, d.max, k) for k, d in enumerate(syms)}  # each its own: not a square
    high = {d.name: d.max for d in syms}
    return list({tuple(sorted(s.items())): s for s in (low, mid, high)}.values())  # a one-size range: once


def _odd_between(lo: int, hi: int, k: int = 0) -> int:
    """The k-th largest prime at or below the middle of lo..hi (above lo), else an odd size near the middle."""
    middle = (lo + hi) // 2
    primes = [n for n in range(middle, lo, -1) if n > 2 and all(n % p for p in range(2, int(n ** 0.5) + 1))]
    if primes:
        return primes[min(k, len(primes) - 1)]
    return middle | 1 if (middle | 1) <= hi else middle


def inputs_at(dims: Dims, example: list[np.ndarray], size: dict[str, int], seed: int = 0) -> list[np.ndarray]:
    """Inputs with each dynamic axis at `size[symbol]`; the values are drawn from the example input's own values, so
    token ids stay valid ids and pixels stay pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for index, x in enumerate(example):
        axes = dims.get(index)
        if not axes:
            out.append(x)
            continue
        shape = [size[axes[a].name] if a in axes else n for a, n in enumerate(x.shape)]
        pool = x.reshape(-1)
        out.append(rng.choice(pool, size=shape) if pool.size else np.zeros(shape, x.dtype))
    return out


def shape_text(arrays: list[np.ndarray]) -> str:
    return ", ".join("x".join(str(n) for n in x.shape) for x in arrays)
